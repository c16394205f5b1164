"""Analytic-DPM (Bao et al. 2022a) and its trajectories against the exact Gaussian-mixture oracle,
where E[x0 | x_t] and Cov[x0 | x_t] are exact, so Gamma_t and the optimal variance are known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import diffusekit as dk
from diffusekit.likelihood import discrete_vlb
from diffusekit.likelihood.analytic import NoiseMoments, estimate_moments, run_moments
from diffusekit.likelihood.trajectory import (
    dp_trajectory,
    even_trajectory,
    make_trajectory,
    quadratic_trajectory,
    step_costs,
    trajectory_cost,
    trajectory_grid,
    trajectory_times,
)
from diffusekit.oracle import GaussianMixture
from diffusekit.stepping import Step
from diffusekit.variances import EtaVariance, OptimalVariance, eps_gain, eta_var, make_variance


def mixture(schedule: dk.NoiseSchedule, scale: float = 1.0, dim: int = 8, seed: int = 0) -> GaussianMixture:
    """Three anisotropic modes; ``scale`` stretches the data far outside [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(3, dim, generator=g, dtype=torch.float64)
    stds = scale * (0.05 + 0.6 * torch.rand(3, dim, generator=g, dtype=torch.float64))
    return GaussianMixture(means, stds, schedule)


def true_residual(mix: GaussianMixture, t: torch.Tensor, n: int = 20000, seed: int = 7) -> torch.Tensor:
    """E tr Cov[eps | x_t] / d = (alpha / sigma)^2 E tr Cov[x0 | x_t] / d, Rao-Blackwellised over x_t."""
    x0 = mix.sample(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for tt in t.tolist():
        a, s = (float(v) for v in mix.schedule.alpha_sigma(torch.tensor(tt, dtype=torch.float64)))
        x_t = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        cov = mix.posterior_covariance(x_t, tt)
        out.append((a / s) ** 2 * cov.diagonal(dim1=1, dim2=2).mean(1).mean())
    return torch.stack(out)


SCHED = dk.DiscreteSchedule("linear", num_steps=1000)
T_CHECK = torch.tensor([0.002, 0.02, 0.1, 0.3, 0.6, 0.999], dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_gamma_and_optimal_variance_match_the_truth(scale: float) -> None:
    """Gamma_t and the optimal variance (DDPM and DDIM-eta types) within 1% of the oracle's, also for
    data far outside [-1, 1] (a clamp assuming data in [-1, 1] breaks the scale-20 case)."""
    mix = mixture(SCHED, scale)
    x = mix.sample(4000, seed=1)
    mom = estimate_moments(mix, x, times=T_CHECK, samples=40000, seed=3, batch=40000)
    truth = true_residual(mix, T_CHECK)
    torch.testing.assert_close(torch.tensor(mom.residual, dtype=torch.float64), truth, rtol=0.01, atol=0)
    big = truth < 0.5  # Gamma itself (E||eps_hat||^2 / d) within 1% where it is not a small number
    torch.testing.assert_close(torch.tensor(mom.gamma, dtype=torch.float64)[big], 1 - truth[big], rtol=0.01, atol=0)
    prev = T_CHECK - 1 / 1000  # the DDPM step t -> t - 1/N, and a skip of 50 steps
    for s_t in (prev, (T_CHECK - 0.05).clamp(min=0.001)):
        keep = s_t > 0.0009
        t0, t1 = T_CHECK[keep], s_t[keep]
        a0, s0 = SCHED.alpha_sigma(t0)
        a1, s1 = SCHED.alpha_sigma(t1)
        pred = mix(torch.zeros(t0.numel(), 8, dtype=torch.float64), t0)
        step = Step(0, t0, t1, a0, s0, a1, s1, None).like(pred.x_t)
        for eta in (1.0, 0.3):
            got = OptimalVariance(mom, eta=eta)(pred, step).flatten()
            want = (eta_var(step, eta) + eps_gain(step, eta) ** 2 * truth[keep][:, None]).flatten()
            torch.testing.assert_close(got, want, rtol=0.01, atol=0)


def test_residual_estimate_stays_positive_where_monte_carlo_gamma_exceeds_one() -> None:
    """M = 10 and 100: 1 - Gamma_t from Monte Carlo goes <= 0 at high noise, the residual form never does,
    and the variance stays within Thm 2's bounds."""
    mix = mixture(SCHED)
    x = mix.sample(2000, seed=1)
    times = torch.arange(1, 1001, dtype=torch.float64)[::10] / 1000
    for m in (10, 100):
        mom = estimate_moments(mix, x, times=times, samples=m, seed=5, batch=10000)
        naive = 1 - torch.tensor(mom.gamma, dtype=torch.float64)
        assert bool((naive <= 0).any()), "the hazard this guards against did not occur; pick another seed"
        assert min(mom.residual) > 0
        a, s = SCHED.alpha_sigma(times[1:])
        a1, s1 = SCHED.alpha_sigma(times[:-1])
        pred = mix(torch.zeros(times.numel() - 1, 8, dtype=torch.float64), times[1:])
        step = Step(0, times[1:], times[:-1], a, s, a1, s1, None).like(pred.x_t)
        var = OptimalVariance(mom)(pred, step).flatten()
        lam2 = eta_var(step, 1.0).flatten()
        assert bool((var > lam2).all())
        assert bool((var <= lam2 + eps_gain(step, 1.0).flatten() ** 2 + 1e-15).all())


def test_moments_are_stored_with_the_run_and_reused(tmp_path) -> None:
    mix = mixture(SCHED)
    x = mix.sample(100, seed=1)
    times = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    mom = estimate_moments(mix, x, times=times, samples=8)
    path = mom.save(tmp_path / "m.json")
    assert NoiseMoments.load(path) == mom
    stored = run_moments(tmp_path, mix, x, samples=4)  # estimated on first use, all 1000 knots
    assert len(stored.times) == 1000 and (tmp_path / "analytic_moments.json").is_file()
    again = run_moments(tmp_path, lambda *a: pytest.fail("re-estimated"), x, samples=4)  # type: ignore[arg-type]
    assert again == stored


def _small_problem(m: int, seed: int = 5):
    sched = dk.DiscreteSchedule("cosine", num_steps=40)
    mix = mixture(sched)
    x = mix.sample(1000, seed=1)
    return sched, mix, estimate_moments(mix, x, samples=m, seed=seed, batch=40000)


def test_dp_trajectory_equals_brute_force_on_small_n() -> None:
    sched, _, mom = _small_problem(200)
    small = NoiseMoments(mom.times[:12], mom.residual[:12], mom.residual_se[:12], mom.gamma[:12], mom.data_var, mom.samples)
    costs = step_costs(small, sched)
    for k in (2, 3, 4, 5):
        best = min(
            trajectory_cost(costs, torch.tensor([1, *mid, 12]))
            for mid in itertools.combinations(range(2, 12), k - 2)
        )
        got = dp_trajectory(small, sched, k)
        assert got[0] == 1 and got[-1] == 12 and bool((got[1:] > got[:-1]).all())
        assert trajectory_cost(costs, got) == pytest.approx(best, rel=1e-12)


def test_dp_bound_no_worse_than_even_or_quadratic_at_every_k() -> None:
    """On the expected costs exactly, and on the bound itself (discrete_vlb with Analytic-DPM's variance
    on the exact oracle, 2,000 samples) within 3 standard errors of the paired difference."""
    sched, mix, mom = _small_problem(2000)
    x = mix.sample(2000, seed=11)
    var = OptimalVariance(mom)
    costs = step_costs(mom, sched)
    for k in (2, 4, 8, 16, 40):
        dp = dp_trajectory(mom, sched, k)
        assert trajectory_cost(costs, dp) <= trajectory_cost(costs, even_trajectory(40, k)) + 1e-12
        assert trajectory_cost(costs, dp) <= trajectory_cost(costs, quadratic_trajectory(40, k)) + 1e-12
        dp_b, even_b = (
            discrete_vlb(mix, x, times=trajectory_times(sched, idx), variance=var, decoder="gaussian").total
            for idx in (dp, even_trajectory(40, k))
        )
        diff = dp_b - even_b
        assert float(diff.mean()) <= 3 * float(diff.std()) / math.sqrt(x.shape[0]), (k, float(diff.mean()))


def test_dp_with_ten_samples_is_near_the_true_optimum() -> None:
    """The DP on an M = 10 (100) estimate, priced with the true moments, is within 5% (2%) of the true
    optimum: no step is placed for free on a Monte-Carlo near-zero cost (1 - Gamma clipped at 0 piles
    the steps at the noisy end here and costs 20-30%)."""
    sched, mix, _ = _small_problem(10)
    truth_m = true_residual(mix, torch.arange(1, 41, dtype=torch.float64) / 40, n=2000)
    x = mix.sample(1000, seed=1)
    for m, tol in ((10, 1.05), (100, 1.02)):
        est = estimate_moments(mix, x, samples=m, seed=5, batch=40000)
        exact = NoiseMoments(est.times, tuple(truth_m.tolist()), est.residual_se, est.gamma, est.data_var, 10**9)
        costs = step_costs(exact, sched)
        for k in (3, 6, 10):
            opt = trajectory_cost(costs, dp_trajectory(exact, sched, k))
            got = trajectory_cost(costs, dp_trajectory(est, sched, k))
            assert got <= tol * opt, (m, k, got, opt)


def test_trajectories_are_valid_and_named() -> None:
    for k in (1, 2, 7, 50, 100):
        for idx in (even_trajectory(100, k), quadratic_trajectory(100, k)):
            assert idx.numel() == k and int(idx[-1]) == 100 and bool((idx[1:] > idx[:-1]).all())
            assert k == 1 or int(idx[0]) == 1
    grid = trajectory_grid(SCHED, even_trajectory(1000, 10))
    assert grid.n_steps == 10 and float(grid.t[0]) == 1.0 and float(grid.t[-2]) == 0.001
    with pytest.raises(ValueError, match="trajectory must be one of"):
        make_trajectory("uniform", SCHED, 10)
    with pytest.raises(ValueError, match="needs the noise moments"):
        make_trajectory("dp", SCHED, 10)
    with pytest.raises(ValueError, match="exceed"):
        even_trajectory(10, 11)


def test_each_rule_has_its_own_decoder_variance() -> None:
    """Analytic-DPM's p(x0 | x_1) has variance E tr Cov[x0 | x_1] / d (not the fixed rules' clipped beta tilde):
    on sharp modes (std 0.02) it is far smaller and its decoder term far better."""
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.randn(3, 8, generator=g, dtype=torch.float64), 0.02, SCHED)
    x = mix.sample(200, seed=2)
    t = torch.tensor([0.05, 0.1, 0.5, 1.0], dtype=torch.float64)
    mom = estimate_moments(mix, x, times=t, samples=4000, seed=1, batch=16000)
    res = discrete_vlb(mix, x, times=t, variance=OptimalVariance(mom), decoder="gaussian")
    a, s = (float(v) for v in SCHED.alpha_sigma(t[:1]))
    dvar = (s / a) ** 2 * mom.residual[0]
    hat = mix(a * x + s * torch.randn(x.shape, dtype=torch.float64), t[:1].expand(200)).x0  # any draw: mean of L_0
    expect = 0.5 * (math.log(2 * math.pi * dvar) * 8 + ((x - hat) ** 2).sum(1).mean() / dvar)
    assert float(res.terms[:, 0].mean()) == pytest.approx(float(expect), rel=0.05)
    small = discrete_vlb(mix, x, times=t, variance="small", decoder="gaussian")
    assert float(small.terms[:, 0].mean()) > float(res.terms[:, 0].mean()) + 1.0


def test_sampler_and_bound_take_the_variance_by_name() -> None:
    mix = mixture(SCHED)
    x = mix.sample(8, seed=2)
    mom = estimate_moments(mix, x, times=torch.tensor([0.001, 1.0], dtype=torch.float64), samples=4)
    rule = make_variance("analytic", moments=mom, eta=0.0)
    sol = dk.sample(mix, dk.make_solver("ddim", eta=0.0, variance=rule), grid=trajectory_grid(SCHED, even_trajectory(1000, 5)),
                    shape=(8,), batch=4, dtype=torch.float64, progress=False)
    assert bool(torch.isfinite(sol.x).all())
    with pytest.raises(ValueError, match="made for eta=0"):
        dk.make_solver("ddpm", variance=rule)
    with pytest.raises(ValueError, match="variance must be one of"):
        make_variance("learnt")
    with pytest.raises(ValueError, match="deterministic step"):
        discrete_vlb(mix, x, times=torch.tensor([0.001, 1.0]), variance=rule)


# ---------------------------------------------------------------- SN-DPM / NPR-DPM (Bao et al. 2022b)

from diffusekit.parameterization import Prediction  # noqa: E402
from diffusekit.variance_heads import HeadVariance, MomentHead, train_head  # noqa: E402

TRAJ = even_trajectory(1000, 10)
T_TRAJ = trajectory_times(SCHED, TRAJ)


def aniso(schedule: dk.NoiseSchedule = SCHED) -> GaussianMixture:
    """Two modes whose per-dimension stds span 0.03..1: a scalar variance cannot fit every dimension."""
    stds = torch.tensor([[0.03, 0.1, 0.5, 1.0], [1.0, 0.05, 0.3, 0.03]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([[1.0, -1.0, 0.0, 0.5], [-1.0, 1.0, 0.5, 0.0]]), stds, schedule)


class Biased:
    """The exact eps plus a known bias 0.2 (1 + t) on dimension 0 and -0.1 on dimension 1."""

    def __init__(self, mix: GaussianMixture) -> None:
        self.mix, self.schedule = mix, mix.schedule

    def __call__(self, x, t, cond=None) -> Prediction:
        pred = self.mix(x, t)
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        bias = torch.zeros_like(x)
        bias[:, 0:1] = 0.2 * (1 + tt.reshape(-1, 1)) if tt.numel() > 1 else 0.2 * (1 + float(tt))
        bias[:, 1] = -0.1
        return Prediction(x, pred.alpha, pred.sigma, eps=pred.eps + bias)


def true_eps_cov(mix: GaussianMixture, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, s = mix.schedule.alpha_sigma(t)
    cov = mix.posterior_covariance(x_t, t).diagonal(dim1=1, dim2=2)
    return (a / s)[:, None] ** 2 * cov


@pytest.fixture(scope="module")
def heads() -> dict[str, MomentHead]:
    torch.manual_seed(0)
    mix = aniso()
    x = mix.sample(20000, seed=1).float()
    out = {}
    for name, model in (("", mix), ("biased ", Biased(mix))):
        for kind in ("sn", "npr"):
            head = MomentHead((4,), kind, width=64)
            out[name + kind] = train_head(model, x, kind, steps=600, batch=512, lr=3e-3, times=T_TRAJ, head=head)
    return out


@pytest.mark.slow  # trains four heads (~30 s on a shared CPU)
def test_heads_converge_to_the_true_diagonal_covariance(heads) -> None:
    """On the trajectory's times, both heads' diag Cov[eps | x_t] within 20% (mean relative L1) of the exact one
    after 600 Adam steps (measured 0.14 SN, 0.12 NPR; longer training goes lower)."""
    mix = aniso()
    x0 = mix.sample(4000, seed=9)
    t = T_TRAJ.repeat_interleave(400)
    a, s = mix.schedule.alpha_sigma(t)
    x_t = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    truth = true_eps_cov(mix, x_t, t)
    pred = mix(x_t, t)
    for kind in ("sn", "npr"):
        est = heads[kind].eps_cov(pred)
        err = float((est - truth).abs().mean() / truth.mean())
        assert err < 0.2, (kind, err)


def _bounds(model, heads_: dict, prefix: str, moments) -> dict[str, float]:
    mix = aniso()
    x = mix.sample(2000, seed=21)
    rules = {"analytic": OptimalVariance(moments), "sn": HeadVariance(heads_[prefix + "sn"]),
             "npr": HeadVariance(heads_[prefix + "npr"]), "small": "small"}
    return {name: float(discrete_vlb(model, x, times=T_TRAJ, variance=rule, decoder="gaussian").total.mean())
            for name, rule in rules.items()}


@pytest.mark.slow  # trains four heads (~30 s on a shared CPU)
def test_diagonal_covariance_beats_the_scalar_one_on_anisotropic_modes(heads) -> None:
    mix = aniso()
    mom = estimate_moments(mix, mix.sample(4000, seed=2), times=T_TRAJ, samples=4000)
    b = _bounds(mix, heads, "", mom)
    assert b["sn"] < b["analytic"] - 1.0 and b["npr"] < b["analytic"] - 1.0, b
    assert b["analytic"] < b["small"], b


@pytest.mark.slow  # trains four heads (~30 s on a shared CPU)
def test_npr_beats_sn_and_analytic_with_a_biased_eps(heads) -> None:
    """eps = exact + known bias: NPR's residual absorbs the bias, SN's second moment cannot (Bao et al. 2022b)."""
    model = Biased(aniso())
    mom = estimate_moments(model, aniso().sample(4000, seed=2), times=T_TRAJ, samples=4000)
    b = _bounds(model, heads, "biased ", mom)
    assert b["npr"] < b["sn"] - 1.0 and b["npr"] < b["analytic"] - 1.0, b


class LabelledPoints:
    """A class-conditional model of images that are -1 (label 0) or +1 (label 1) everywhere: given the
    label its eps is exact; it records every eps it returns."""

    def __init__(self) -> None:
        self.schedule, self.seen = SCHED, []

    def __call__(self, x, t, cond=None) -> Prediction:
        if cond is None:
            raise ValueError("a conditional model called without labels")
        a, s = (v.to(x).reshape(-1, 1, 1, 1) for v in SCHED.alpha_sigma(torch.as_tensor(t, dtype=torch.float64)))
        eps = (x - a * (2.0 * cond.to(x) - 1).reshape(-1, 1, 1, 1)) / s
        self.seen.append(eps)
        return Prediction(x, a, s, eps=eps)


def test_a_head_on_a_conditional_model_sees_each_item_with_its_own_label() -> None:
    """Labels drawn with the data: the model's eps is then the true noise (N(0, 1)); a label from
    another item would add (x0 - x0') alpha / sigma, far from N(0, 1) at small t."""
    labels = torch.randint(0, 2, (500,), generator=torch.Generator().manual_seed(0))
    data = (2.0 * labels - 1).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    model = LabelledPoints()
    train_head(model, data, "npr", steps=3, batch=128, cond=labels, head=MomentHead((1, 2, 2), "npr", width=8))
    eps = torch.cat(model.seen)
    assert eps.numel() == 3 * 128 * 4 and 0.8 < float(eps.std()) < 1.2, float(eps.std())
    with pytest.raises(ValueError, match="one label per data item"):
        train_head(model, data, "sn", steps=1, cond=labels[:10])


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_bound_is_the_same_for_eps_x0_and_v_models(param: str) -> None:
    """The bound on a sub-trajectory, for Analytic-DPM (eta = 1 and 0.5) and 'large', through eps / x0 / v networks."""
    from diffusekit.denoiser import Denoiser

    from .test_likelihood import _OracleNet

    mix = mixture(SCHED)
    model = Denoiser(_OracleNet(mix, Denoiser(None, SCHED, param)), SCHED, param).double()
    x = mix.sample(64, seed=4)
    mom = estimate_moments(mix, x, times=T_TRAJ, samples=50)
    for rule in (OptimalVariance(mom), OptimalVariance(mom, eta=0.5), "large"):
        want = discrete_vlb(mix, x, times=T_TRAJ, variance=rule, decoder="gaussian").total
        got = discrete_vlb(model, x, times=T_TRAJ, variance=rule, decoder="gaussian").total
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_eta_family_bound_at_eta_one_is_the_ddpm_bound() -> None:
    """q_lambda (Bao et al. 2022a, eq. 3) with lambda^2 = beta tilde is the DDPM posterior (Ho et al. 2020, eq. 7),
    so the bound's eta-family branch at eta = 1 - 1e-9 gives the posterior branch's terms (eta = 1), an imperfect
    mean (the exact E[x0 | x_t] is not x0) included."""
    mix = mixture(SCHED)
    x = mix.sample(32, seed=5)
    want = discrete_vlb(mix, x, times=T_TRAJ, variance="small", decoder="gaussian").terms
    got = discrete_vlb(mix, x, times=T_TRAJ, variance=EtaVariance(1 - 1e-9), decoder="gaussian").terms
    assert bool((want[:, 1:].sum(1) > 1.0).all())  # the KLs have a mean part to get right
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_ddim_at_eta_one_is_ddpm_for_every_variance() -> None:
    """DDIM(eta = 1, variance) draws the same samples as DDPM(variance): one eta-family mean and noise."""
    mix = mixture(SCHED)
    mom = estimate_moments(mix, mix.sample(200, seed=1), times=T_TRAJ, samples=20)
    grid = trajectory_grid(SCHED, TRAJ)
    for rule in (OptimalVariance(mom), "large", "small"):
        a, b = (dk.sample(mix, dk.make_solver(name, variance=rule, **kw), grid=grid, shape=(8,), batch=16, seed=3,
                          dtype=torch.float64, progress=False).x
                for name, kw in (("ddpm", {}), ("ddim", {"eta": 1.0})))
        torch.testing.assert_close(a, b)


def test_first_step_clip_limits_only_the_step_into_the_first_point() -> None:
    mix = mixture(SCHED)
    mom = estimate_moments(mix, mix.sample(200, seed=1), times=T_TRAJ, samples=20)
    seen: list[tuple[int | None, float, float]] = []

    class Spy(OptimalVariance):
        def __call__(self, pred, step):  # type: ignore[no-untyped-def]
            var = super().__call__(pred, step)
            seen.append((step.remaining, float(var), float(OptimalVariance.__call__(plain, pred, step))))
            return var

    plain = OptimalVariance(mom)
    dk.sample(mix, dk.make_solver("ddpm", variance=Spy(mom, first_step_clip=0.01)), grid=trajectory_grid(SCHED, TRAJ),
              shape=(8,), batch=4, dtype=torch.float64, progress=False)
    alpha_1 = float(SCHED.alpha_sigma(T_TRAJ[:1])[0])
    for remaining, var, unclipped in seen:
        assert var == (min(unclipped, (0.01 * alpha_1 / 2) ** 2) if remaining == 2 else unclipped)
    assert any(r == 2 and v < u for r, v, u in seen)
    with pytest.raises(ValueError, match="first_step_clip must be a positive number"):
        OptimalVariance(mom, first_step_clip=0.0)
