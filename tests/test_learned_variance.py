"""Improved-DDPM learned variance (Nichol & Dhariwal 2021): the head, the rule, the bound, the losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.denoiser import Denoiser, DenoiserWrapper
from diffusekit.learned_variance import LearnedVariance, interpolated_variance
from diffusekit.likelihood import discrete_vlb
from diffusekit.losses.hybrid import HybridLoss, step_transitions, vlb_term
from diffusekit.losses.importance import ImportanceTimeSampler
from diffusekit.models import MLP, UNet
from diffusekit.oracle import GaussianMixture
from diffusekit.parameterization import Prediction
from diffusekit.variances import make_variance

from .conftest import smooth_mixture


class ConstantInterp(DenoiserWrapper):
    """The exact oracle with a given variance interpolation v (a number or a function of t)."""

    def __init__(self, inner: GaussianMixture, v: float) -> None:
        super().__init__(inner)
        self.v = v

    def forward(self, x: Tensor, t, cond=None) -> Prediction:
        pred = self.inner(x, t, cond)
        pred.var_interp = torch.full_like(x, self.v)
        return pred


# ---- the head ---------------------------------------------------------------------------------------


def test_variance_head_doubles_the_outputs_and_the_denoiser_splits_them() -> None:
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    mlp = MLP(3, width=16, depth=1, learn_variance=True, zero_init=False)
    unet = UNet(1, base_channels=16, channel_mult=(1,), num_res_blocks=1, learn_variance=True)
    for net, x in ((mlp, torch.randn(4, 3)), (unet, torch.randn(2, 1, 4, 4))):
        assert net(x, torch.zeros(x.shape[0])).shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        den = Denoiser(net, sch, "eps")
        assert den.learns_variance
        pred = den(x, 0.5)
        raw = net(x, den.precondition(x, 0.5)[1])
        torch.testing.assert_close(pred.eps, raw[:, : x.shape[1]])
        torch.testing.assert_close(pred.var_interp, (raw[:, x.shape[1]:] + 1) / 2)
        assert pred.with_x0(pred.x0).var_interp is pred.var_interp  # constraints keep it
    plain = Denoiser(MLP(3, width=16, depth=1), sch, "eps")
    assert not plain.learns_variance and plain(torch.randn(4, 3), 0.5).var_interp is None


# ---- the rule ---------------------------------------------------------------------------------------


def test_learned_variance_interpolates_in_the_log_domain() -> None:
    """Nichol & Dhariwal eq. 15: v = 0 gives beta tilde, v = 1 beta, v = 1/2 their geometric mean."""
    v = torch.tensor([0.0, 1.0, 0.5, 2.0])
    out = interpolated_variance(v, 0.01, 0.04)
    torch.testing.assert_close(out, torch.tensor([0.01, 0.04, 0.02, 0.16]))
    assert isinstance(make_variance("learned"), LearnedVariance)


def test_learned_variance_refuses_a_model_without_a_head() -> None:
    sch = dk.DiscreteSchedule("linear", num_steps=50)
    mix = smooth_mixture(sch, dim=2)
    with pytest.raises(ValueError, match="variance 'learned' needs a model with a variance head"):
        dk.sample(mix, dk.make_solver("ddpm", variance="learned"), steps=10, shape=(2,), batch=4, progress=False)
    with pytest.raises(ValueError, match="variance must be one of"):
        make_variance("analytik")


def test_ddpm_with_learned_variance_at_the_ends_is_small_or_large() -> None:
    """The ancestral sampler reads the rule: v = 0 draws exactly as 'small', v = 1 as 'large'."""
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    mix = smooth_mixture(sch, dim=3)
    for v, fixed in ((0.0, "small"), (1.0, "large")):
        runs = [dk.sample(den, dk.make_solver("ddpm", variance=var), steps=20, shape=(3,), batch=64, seed=3,
                          progress=False).x
                for den, var in ((ConstantInterp(mix, v), "learned"), (mix, fixed))]
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)
    mid = dk.sample(ConstantInterp(mix, 0.5), dk.make_solver("ddpm", variance="learned"), steps=20, shape=(3,),
                    batch=64, seed=3, progress=False).x
    assert not torch.allclose(mid, runs[1])


def test_bound_with_learned_variance_at_the_ends_is_the_fixed_bound() -> None:
    """vlb.py's bound on a respaced trajectory: the learned rule at v = 0 / 1 gives the small / large
    KL terms, and its decoder interpolates between the clipped variance and beta_1."""
    sch = dk.DiscreteSchedule("linear", num_steps=200)
    mix = smooth_mixture(sch, dim=3)
    x0 = mix.sample(32, seed=2)
    kw = dict(steps=20, decoder="gaussian", seed=5)
    for v, fixed in ((0.0, "small"), (1.0, "large")):
        learned = discrete_vlb(ConstantInterp(mix, v), x0, variance="learned", **kw)
        ref = discrete_vlb(mix, x0, variance=fixed, **kw)
        torch.testing.assert_close(learned.terms[:, 1:], ref.terms[:, 1:])
    torch.testing.assert_close(discrete_vlb(ConstantInterp(mix, 0.0), x0, variance="learned", **kw).terms[:, 0],
                               discrete_vlb(mix, x0, variance="small", **kw).terms[:, 0])
    beta1 = float(1 - sch.alphas_cumprod[9])  # sigma^2 at the first knot of the 20-step trajectory
    torch.testing.assert_close(discrete_vlb(ConstantInterp(mix, 1.0), x0, variance="learned", **kw).terms[:, 0],
                               discrete_vlb(mix, x0, variance="small", decoder_variance=beta1, **kw).terms[:, 0])


# ---- the hybrid loss --------------------------------------------------------------------------------


def _oracle_at(mix: GaussianMixture, x0: Tensor, n: int, seed: int = 0) -> tuple[Prediction, Tensor]:
    """The exact prediction at step n of x_n ~ q(x_n | x0), and x_n."""
    t = torch.full((x0.shape[0],), n / mix.schedule.num_steps, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_t = mix.schedule.add_noise(x0, t, eps)
    return mix(x_t, t), x_t


def test_vlb_term_is_the_closed_form_kl_and_decoder() -> None:
    """Against Ho et al. 2020 eq. 6-7 written with the alpha_bar table, and eq. 15 for Sigma."""
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    mix = smooth_mixture(sch, dim=3)
    abar = sch.alphas_cumprod
    table = step_transitions(sch)
    x0 = mix.sample(16, seed=1)
    for n in (1, 2, 37, 100):
        pred, x_t = _oracle_at(mix, x0, n)
        pred.var_interp = torch.rand(x0.shape, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        got = vlb_term(pred, x0, torch.full((16,), n - 1), table, decoder="gaussian")
        a_prev = abar[n - 2] if n > 1 else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - abar[n - 1] / a_prev
        tilde = beta * (1 - a_prev) / (1 - abar[n - 1])
        if n == 1:  # clipped: beta tilde of step 2
            beta2 = 1 - abar[1] / abar[0]
            tilde = beta2 * (1 - abar[0]) / (1 - abar[1])
        var = torch.exp(pred.var_interp * beta.log() + (1 - pred.var_interp) * tilde.log())
        if n == 1:
            want = (0.5 * (torch.log(2 * math.pi * var) + (x0 - pred.x0) ** 2 / var)).sum(1)
        else:
            coef_x0 = a_prev.sqrt() * beta / (1 - abar[n - 1])
            coef_xt = (1 - beta).sqrt() * (1 - a_prev) / (1 - abar[n - 1])
            mq, mp = coef_x0 * x0 + coef_xt * x_t, coef_x0 * pred.x0 + coef_xt * x_t
            want = (0.5 * (torch.log(var / tilde) + tilde / var + (mq - mp) ** 2 / var - 1)).sum(1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    idx = torch.tensor([0, 36, 0, 99, 1, 0, 36, 5] * 2)  # a batch mixing decoder and KL rows: each row its own term
    mixed = vlb_term(pred, x0, idx, table, decoder="gaussian")
    for k in idx.unique().tolist():
        rows = idx == k
        torch.testing.assert_close(mixed[rows], vlb_term(pred, x0, torch.full((16,), k), table, decoder="gaussian")[rows])


@pytest.mark.parametrize("std,n", [(0.05, 10), (0.2, 30), (0.5, 30)])
def test_vlb_term_is_least_at_the_exact_posterior_variance(std: float, n: int) -> None:
    """With the exact x0 = E[x0 | x_t] of N(0, std^2 I) data, E[L_t] over v is least where Sigma =
    beta tilde + c_x0^2 Var[x0 | x_t] (the moment-matched variance), v* = log(Sigma / beta tilde) / log(beta / beta tilde)."""
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    d = 8
    mix = GaussianMixture(torch.zeros(1, d), std, sch)
    table = step_transitions(sch)
    x0 = mix.sample(2000, seed=4)
    pred, _ = _oracle_at(mix, x0, n, seed=5)
    a, s = (float(v) for v in sch.alpha_sigma(torch.tensor(n / 100, dtype=torch.float64)))
    post = std**2 * s**2 / (a**2 * std**2 + s**2)
    i = n - 1
    sigma_star = float(table.small[i]) + float(table.c_x0[i]) ** 2 * post
    v_star = math.log(sigma_star / float(table.small[i])) / math.log(float(table.large[i] / table.small[i]))
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    losses = []
    for v in grid:
        pred.var_interp = torch.full_like(x0, float(v))
        losses.append(float(vlb_term(pred, x0, torch.full((2000,), i), table, decoder="gaussian").mean()))
    best = float(grid[int(torch.tensor(losses).argmin())])
    assert abs(best - v_star) <= 0.03, (best, v_star)


def _net_denoiser(steps: int = 50, dim: int = 2) -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(MLP(dim, width=32, depth=2, learn_variance=True, zero_init=False), dk.DiscreteSchedule("linear", num_steps=steps), "eps")


def test_hybrid_loss_stops_the_gradient_to_the_mean() -> None:
    """Eq. 16: lambda L_vlb moves only the variance outputs; L_vlb alone moves both."""
    den = _net_denoiser()
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))

    def out_grad(loss: HybridLoss) -> Tensor:
        den.zero_grad()
        loss(den, x0, generator=torch.Generator().manual_seed(1)).loss.backward()
        return den.net.out.weight.grad.clone()  # rows 0..1: the mean, rows 2..3: the variance head

    simple = out_grad(HybridLoss("simple", decoder="gaussian"))
    hybrid = out_grad(HybridLoss("hybrid", vlb_weight=1.0, decoder="gaussian"))
    vlb = out_grad(HybridLoss("vlb", decoder="gaussian"))
    assert torch.equal(hybrid[:2], simple[:2])
    assert bool((simple[2:] == 0).all()) and float(hybrid[2:].abs().max()) > 1e-4
    assert float(vlb[:2].abs().max()) > 1e-4
    torch.testing.assert_close(hybrid[2:], vlb[2:])  # the same variance gradient


def test_hybrid_loss_refuses_bad_settings() -> None:
    den = Denoiser(MLP(2, width=16, depth=1), dk.DiscreteSchedule("linear", num_steps=20), "eps")
    with pytest.raises(ValueError, match="needs a network with a variance head"):
        HybridLoss("hybrid")(den, torch.randn(4, 2))
    with pytest.raises(TypeError, match="need a DiscreteSchedule"):
        HybridLoss("hybrid")(Denoiser(MLP(2, learn_variance=True), dk.VPSchedule(), "eps"), torch.randn(4, 2))
    for kwargs, words in [({"kind": "kl"}, "loss must be one of simple, hybrid, vlb, got 'kl'"),
                          ({"vlb_weight": -1.0}, "vlb_weight must be"),
                          ({"time": "lognormal"}, "time sampling must be one of uniform, importance"),
                          ({"decoder": "logistic"}, "decoder must be")]:
        with pytest.raises(ValueError, match=words):
            HybridLoss(**kwargs)


# ---- importance sampling of t -----------------------------------------------------------------------


def test_importance_sampler_is_uniform_until_full_then_follows_the_second_moment() -> None:
    """Eq. 17: p_t proportional to sqrt(mean of the last 10 L_t^2), uniform until every step has 10."""
    sch = dk.DiscreteSchedule("linear", num_steps=4)
    imp = ImportanceTimeSampler(history=10, uniform_mix=0.0)
    t = imp(100, sch, torch.Generator().manual_seed(0))
    assert set(t.tolist()) <= {0.25, 0.5, 0.75, 1.0}
    steps = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    # 9 losses per step: still uniform; 15 more for step 1 in one batch: its oldest fall out
    imp.record(steps.repeat(9), torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(9))
    torch.testing.assert_close(imp.probabilities(sch), torch.full((4,), 0.25, dtype=torch.float64))
    imp.record(steps.repeat(1), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    imp.record(torch.full((15,), 0.25, dtype=torch.float64), torch.cat([torch.full((5,), 100.0), torch.full((10,), 4.0)]))
    w = torch.tensor([4.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(imp.probabilities(sch), w / w.sum())
    assert imp.count.tolist() == [25, 10, 10, 10]
    # draws follow p, and density reports it
    t = imp(40_000, sch, torch.Generator().manual_seed(1))
    freq = torch.bincount((t * 4).round().long() - 1, minlength=4).double() / 40_000
    assert float((freq - w / w.sum()).abs().max()) < 0.01
    torch.testing.assert_close(imp.density(steps, sch), w / w.sum())
    mixed = ImportanceTimeSampler(history=10, uniform_mix=0.1)
    mixed.load_state_dict(imp.state_dict())
    torch.testing.assert_close(mixed.probabilities(sch), 0.9 * w / w.sum() + 0.025)


def test_importance_weighting_keeps_the_objective() -> None:
    """Per-sample losses divided by N p_t: their mean over t ~ p equals the uniform-t mean (unbiased)."""
    sch = dk.DiscreteSchedule("linear", num_steps=20)
    den = _net_denoiser(steps=20)
    x0 = torch.randn(1, 2, generator=torch.Generator().manual_seed(0)).repeat(20, 1)
    loss = HybridLoss("vlb", time="importance", decoder="gaussian")
    imp = loss.importance
    imp(1, sch)  # sizes the tables
    steps = torch.arange(1, 21, dtype=torch.float64) / 20
    imp.record(steps.repeat(10), torch.rand(200, generator=torch.Generator().manual_seed(2)) * steps.repeat(10))
    p = imp.probabilities(sch)
    noise = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    per_t = loss.per_time(den, x0, steps, noise).detach().double()
    weighted = per_t / (20 * imp.density(steps, sch))
    torch.testing.assert_close((p * weighted).sum(), per_t.mean())


def test_importance_history_is_checkpointed_and_resumed(tmp_path) -> None:
    """The trainer keeps the loss-owned history: 6 steps == 3 + resume + 3, history and weights alike."""
    from diffusekit.data import ArrayLoader
    from diffusekit.train import TrainConfig, Trainer

    def trainer(run_dir) -> Trainer:
        den = _net_denoiser(steps=4)
        data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
        cfg = TrainConfig(lr=1e-3, ema_half_life=2.0, log_every=1, checkpoint_every=3, progress=False)
        return Trainer(den, ArrayLoader(data, batch_size=16, seed=1), HybridLoss("hybrid", time="importance",
                       decoder="gaussian", vlb_weight=1.0), cfg, run_dir=run_dir)

    a = trainer(tmp_path / "a")
    a.fit(6)
    b = trainer(tmp_path / "b")
    b.fit(3)
    c = trainer(tmp_path / "b")
    assert c.resume() and c.step == 3
    assert torch.equal(c.loss_fn.importance.losses, b.loss_fn.importance.losses)
    c.fit(6)
    ha, hc = a.loss_fn.importance, c.loss_fn.importance
    assert int(ha.count.sum()) == 6 * 16 and torch.equal(ha.count, hc.count) and torch.equal(ha.losses, hc.losses)
    assert bool((ha.count >= 10).all())  # full after 96 draws over 4 steps: p no longer uniform by step 6
    for pa, pc in zip(a.net.parameters(), c.net.parameters()):
        assert torch.equal(pa, pc)


# ---- configs and runs ---------------------------------------------------------------------------------

LEARNED = ["steps=4", "checkpoint_every=2", "log_every=2", "data.num_samples=256", "data.batch_size=64",
           "model.learn_variance=true", "diffusion.loss='hybrid'", "diffusion.schedule='discrete'",
           "diffusion.parameterization='eps'", "diffusion.weighting='eps'", "diffusion.time_sampling='importance'"]


def test_config_refuses_inconsistent_variance_settings() -> None:
    from diffusekit.config import PRESETS
    from diffusekit.pipeline import check_names

    base = PRESETS["toy2d"].with_overrides(LEARNED)
    check_names(base)
    for change, words in [("diffusion.loss='kl'", "diffusion.loss must be one of simple, hybrid, vlb, got 'kl'"),
                          ("diffusion.vlb_weight=-1", "diffusion.vlb_weight must be a number >= 0"),
                          ("model.learn_variance=1", "model.learn_variance must be true or false")]:
        with pytest.raises(ValueError, match=words):
            base.with_overrides([change])
    for change, words in [("diffusion.loss='simple'", "model.learn_variance = true needs diffusion.loss"),
                          ("model.learn_variance=false", "needs model.learn_variance = true"),
                          ("diffusion.schedule='vp'", "needs diffusion.schedule = 'discrete'"),
                          ("diffusion.time_sampling='lognormal'", "time_sampling must be uniform or importance")]:
        with pytest.raises(ValueError, match=words):
            check_names(base.with_overrides([change]))


@pytest.mark.slow
def test_a_learned_variance_run_trains_resumes_and_samples_with_its_head(tmp_path) -> None:
    from diffusekit.config import PRESETS
    from diffusekit.pipeline import load_run, sample_denoiser, train_run

    cfg = PRESETS["toy2d"].with_overrides(LEARNED)
    trainer = train_run(cfg, tmp_path / "run", progress=False, report=lambda m: None)
    assert isinstance(trainer.loss_fn, HybridLoss) and trainer.loss_fn.decoder == "gaussian"
    assert int(trainer.loss_fn.importance.count.sum()) == 4 * 64
    run = load_run(tmp_path / "run", report=lambda m: None)
    assert run.denoiser.learns_variance and run.meta["model.learn_variance"] is True
    runs = {v: sample_denoiser(run.denoiser, run.info, "ddpm", 5, 8, **({} if v is None else {"variance": v})).x
            for v in (None, "learned", "small")}
    assert bool(torch.isfinite(runs[None]).all())
    assert torch.equal(runs[None], runs["learned"]) and not torch.equal(runs[None], runs["small"])
    resumed = train_run(cfg.with_overrides(["steps=6"]), tmp_path / "run", progress=False, report=lambda m: None)
    assert int(resumed.loss_fn.importance.count.sum()) == 6 * 64


@pytest.mark.slow
def test_training_the_head_lowers_the_bound_below_both_fixed_variances() -> None:
    """A short hybrid run on a two-mode toy (modes of std 0.1, N = 50): with the same mean network the
    learned variance gives a lower bound than beta tilde and than beta (paired over the same draws)."""
    torch.set_num_threads(1)
    sch = dk.DiscreteSchedule("linear", num_steps=50)
    mix = GaussianMixture(torch.tensor([[-0.5, 0.0], [0.5, 0.3]]), 0.1, sch)
    data = mix.sample(4096, seed=0).float()
    torch.manual_seed(0)
    den = Denoiser(MLP(2, width=64, depth=2, learn_variance=True), sch, "eps")
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    loss = HybridLoss("hybrid", vlb_weight=1.0, decoder="gaussian")
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        out = loss(den, data[torch.randint(0, 4096, (256,), generator=g)], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    x = mix.sample(500, seed=3).float()
    with torch.no_grad():
        bound = {v: discrete_vlb(den, x, variance=v, decoder="gaussian", chunk=50).total for v in ("small", "large", "learned")}
    for fixed in ("small", "large"):
        gap = bound["learned"] - bound[fixed]
        assert float(gap.mean()) < -3 * float(gap.std()) / math.sqrt(500), (fixed, float(gap.mean()))


def test_hybrid_loss_rows_of_a_global_batch_are_the_whole_batch_split() -> None:
    """Data-parallel ranks / micro-batches: the rows' draws are those of the whole batch; every part is recorded."""
    den = _net_denoiser(steps=10)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    whole = HybridLoss("hybrid", time="importance", decoder="gaussian")
    parts = HybridLoss("hybrid", time="importance", decoder="gaussian")
    full = whole(den, x0, generator=torch.Generator().manual_seed(1))
    halves = [parts(den, x0[i:i + 4], generator=torch.Generator().manual_seed(1), offset=i, global_batch=8) for i in (0, 4)]
    torch.testing.assert_close(torch.cat([h.per_sample for h in halves]), full.per_sample)
    whole.after_step(den.net, 1)
    parts.after_step(den.net, 1)
    assert torch.equal(whole.importance.losses, parts.importance.losses) and int(parts.importance.count.sum()) == 8
    with pytest.raises(ValueError, match="do not lie in a global batch of 8 rows"):
        parts(den, x0[:4], offset=6, global_batch=8)
