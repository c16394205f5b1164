"""Guidance against the class-conditional oracle: every guided score is exact there."""

from __future__ import annotations

import math

import pytest
import torch

import diffusekit as dk
from diffusekit.guidance import null_condition
from diffusekit.oracle import GaussianMixture

from .conftest import all_schedules

F64 = torch.float64
SCHEDULES = ["vp", "ve", "edm", "flow", "discrete_linear"]


def labelled(schedule: dk.NoiseSchedule) -> GaussianMixture:
    """Three classes in 2-D; classes 0 and 2 have two components each."""
    means = [[2.0, 2.0], [3.0, -1.0], [-2.0, 1.0], [0.0, -3.0], [-3.0, -2.0]]
    return GaussianMixture(
        means, [0.5, 0.7, 0.6, 0.5, 0.8], schedule, weights=[0.1, 0.3, 0.2, 0.25, 0.15], labels=[0, 0, 1, 2, 2]
    )


def mid_times(schedule: dk.NoiseSchedule, n: int) -> torch.Tensor:
    return schedule.t_min + torch.linspace(0.05, 0.9, n, dtype=F64) * (schedule.t_max - schedule.t_min)


def assert_same(a: dk.Prediction, b: dk.Prediction, tol: float = 1e-10) -> None:
    for name in ("eps", "x0", "score"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=tol, atol=tol, msg=name)


class Counting(dk.DenoiserWrapper):
    """Counts calls and the batch sizes the inner denoiser sees."""

    def __init__(self, inner: dk.DenoiserLike) -> None:
        super().__init__(inner)
        self.batches: list[int] = []
        self.null_label = getattr(inner, "null_label", None)

    def forward(self, x, t, cond=None):  # type: ignore[no-untyped-def]
        self.batches.append(x.shape[0])
        return self.inner(x, t, cond)


# ---- the class-conditional oracle ---------------------------------------------------------
def test_labelled_oracle_is_exact_per_class() -> None:
    """p(x|y) is the mixture of the class's components; log p(y|x_t) is Bayes' rule and its
    gradient is the conditional minus the unconditional score; the null label is p(x)."""
    sch = dk.VPSchedule()
    mix = labelled(sch)
    x = mix.sample(64, seed=0, t=0.4)
    w = mix.log_weights.exp()
    for y, comps in [(0, [0, 1]), (1, [2]), (2, [3, 4])]:
        only = GaussianMixture(mix.means[comps], mix.variances[comps].sqrt(), sch, weights=w[comps])
        assert_same(mix(x, 0.4, y), only(x, 0.4))
        torch.testing.assert_close(mix.log_prob(x, 0.4, y), only.log_prob(x, 0.4))
        bayes = mix.log_prob(x, 0.4, y) + math.log(float(w[comps].sum())) - mix.log_prob(x, 0.4)
        torch.testing.assert_close(mix.class_log_prob(x, 0.4)[:, y], bayes)
    assert_same(mix(x, 0.4, torch.full((64,), mix.null_label)), mix(x, 0.4))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mix.class_log_prob(xg, 0.4)[:, 2].sum(), xg)
    torch.testing.assert_close(g, mix.score(x, 0.4, 2) - mix.score(x, 0.4), rtol=1e-9, atol=1e-9)
    # exact conditional draws carry the within-class mode weights 1/4, 3/4
    r = conditional_responsibilities(mix, mix.sample(4000, seed=1, cond=0), 0)
    assert abs(float(r[:, 1].mean()) - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)


def test_labelled_oracle_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture([[0.0], [1.0]], 1.0, dk.VPSchedule(), labels=[0, 2])
    with pytest.raises(ValueError, match="non-negative integers"):
        GaussianMixture([[0.0], [1.0]], 1.0, dk.VPSchedule(), labels=[0.0, 1.0])
    mix = labelled(dk.VPSchedule())
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\]"):
        mix(torch.zeros(2, 2), 0.5, torch.tensor([0, 4]))


def conditional_responsibilities(mix: GaussianMixture, x: torch.Tensor, y: int) -> torch.Tensor:
    """Each sample's posterior over the components of class y under p(x|y) (B, K)."""
    logits = mix._joint(x.double(), torch.ones(len(x), dtype=F64), torch.zeros(len(x), dtype=F64))[0]
    return torch.softmax(logits.masked_fill(~mix.members[y], -math.inf), 1)


# ---- classifier-free guidance ----------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_cfg_endpoints_are_the_two_models_in_one_pass(name: str) -> None:
    sch = all_schedules()[name]
    mix = Counting(labelled(sch))
    x = labelled(sch).sample(6, seed=2, t=0.5 * sch.t_max)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for t in (0.3 * sch.t_max, mid_times(sch, 6)):
        for w, want in ((1.0, mix(x, t, y)), (0.0, mix(x, t))):
            mix.batches.clear()
            assert_same(dk.ClassifierFreeGuidance(mix, w)(x, t, y), want, tol=1e-12)
            assert mix.batches == [12]  # one forward pass on the doubled batch
        got = dk.ClassifierFreeGuidance(mix, 2.5)(x, t, y)
        cond, uncond = mix(x, t, y), mix(x, t)
        assert_same(got, uncond.with_eps(uncond.eps + 2.5 * (cond.eps - uncond.eps)))


def test_cfg_finds_the_null_label_of_networks_and_oracles() -> None:
    from diffusekit.models.mlp import MLP

    sch = dk.VPSchedule()
    torch.manual_seed(0)
    net = dk.Denoiser(MLP(2, width=32, depth=2, num_classes=5, zero_init=False), sch)
    assert null_condition(net) == 5
    assert null_condition(Counting(labelled(sch))) == 3
    with pytest.raises(ValueError, match="no null label"):
        dk.ClassifierFreeGuidance(dk.Denoiser(MLP(2), sch), 2.0)
    cfg = dk.ClassifierFreeGuidance(net, 2.0)
    x = torch.randn(4, 2)
    with torch.no_grad():
        got = cfg(x, 0.5, torch.tensor([0, 1, 2, 3]))
        cond, uncond = net(x, 0.5, torch.tensor([0, 1, 2, 3])), net(x, 0.5)
    assert (cond.eps - uncond.eps).abs().min() > 1e-4  # the label matters
    torch.testing.assert_close(got.eps, uncond.eps + 2.0 * (cond.eps - uncond.eps), rtol=1e-5, atol=1e-5)


def test_cfg_interval_is_the_conditional_model_outside() -> None:
    sch = dk.VPSchedule()
    mix = Counting(labelled(sch))
    lo, hi = 0.5, 2.0  # sigma/alpha
    cfg = dk.ClassifierFreeGuidance(mix, 3.0, interval=(lo, hi))
    full = dk.ClassifierFreeGuidance(mix, 3.0)
    x = labelled(sch).sample(8, seed=3, t=0.5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    t = torch.linspace(0.05, 0.95, 8, dtype=F64)
    alpha, sigma = sch.alpha_sigma(t)
    inside = (sigma / alpha > lo) & (sigma / alpha <= hi)
    assert 0 < int(inside.sum()) < 8
    got, plain, guided = cfg(x, t, y), mix(x, t, y), full(x, t, y)
    for name in ("eps", "x0"):
        torch.testing.assert_close(getattr(got, name)[~inside], getattr(plain, name)[~inside], rtol=0, atol=0)
        torch.testing.assert_close(getattr(got, name)[inside], getattr(guided, name)[inside], rtol=0, atol=0)
    mix.batches.clear()
    t_out = float(t[~inside][0])
    assert_same(cfg(x, t_out, y), mix(x, t_out, y), tol=0)
    assert mix.batches == [8, 8]  # outside the interval: no unconditional half


def test_rescaled_cfg() -> None:
    """phi = 0 is plain CFG; phi = 1 gives the guided x0 the conditional x0's per-sample spread
    (Lin et al. 2024, eq. 15-16); the result stays a consistent Prediction."""
    sch = dk.VPSchedule()
    mix = labelled(sch)
    x = mix.sample(8, seed=4, t=0.5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plain = dk.ClassifierFreeGuidance(mix, 4.0)(x, 0.5, y)
    assert_same(dk.ClassifierFreeGuidance(mix, 4.0, rescale=0.0)(x, 0.5, y), plain, tol=0)
    for phi in (0.5, 1.0):
        got = dk.ClassifierFreeGuidance(mix, 4.0, rescale=phi)(x, 0.5, y)
        ratio = mix(x, 0.5, y).x0.std(1, correction=0) / plain.x0.std(1, correction=0)
        torch.testing.assert_close(got.x0, plain.x0 * (phi * ratio + 1 - phi)[:, None])
        torch.testing.assert_close(got.alpha * got.x0 + got.sigma * got.eps, x)


@pytest.mark.parametrize(
    ("name", "w"), [("vp", 3.0), ("edm", 2.0), ("discrete_linear", 0.5)]
)
def test_cfg_ode_of_gaussians_is_the_closed_form_map(name: str, w: float) -> None:
    """Two Gaussian models: the guided score is linear, the PF-ODE an affine map x_T -> x_0;
    the sampler reproduces it pointwise and its law within Monte-Carlo error (4,000 draws)."""
    sch = all_schedules()[name]
    cond = dk.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.25, 0.64], dtype=F64))
    uncond = dk.DiagonalGaussian(torch.tensor([0.0, 0.3], dtype=F64), torch.tensor([1.0, 1.44], dtype=F64))
    mix = GaussianMixture(torch.stack([cond.mean, uncond.mean]), torch.stack([cond.var, uncond.var]).sqrt(), sch)
    cfg = dk.ClassifierFreeGuidance(mix, w, null=1)  # "unconditional" = component 1
    exact = dk.cfg_gaussian_ode_map(sch, w, cond, uncond)
    n = 4000
    sol = dk.sample(
        cfg, dk.make_solver("dpmpp_3m"), shape=(2,), batch=n, steps=80, cond=0, seed=0, dtype=F64,
        progress=False, save_trajectory=True,
    )
    assert (sol.x - (exact.gain * sol.trajectory[0] + exact.offset)).abs().max() < 3e-3
    mean, var = exact.law
    assert ((sol.x.mean(0) - mean).abs() < 4 * (var / n).sqrt()).all(), (sol.x.mean(0), mean)
    assert ((sol.x.var(0) - var).abs() < 4 * var * math.sqrt(2 / n)).all(), (sol.x.var(0), var)


def test_cfg_gaussian_law_versus_tilted_density() -> None:
    """w = 0 and 1 give the two models (both closed forms agree, the ODE's up to the prior's
    mean, 0 instead of alpha_T m: a shift of m sqrt(v) / sigma_T); for w > 1 the ODE's law has
    variance v_u^(1-w) v_c^w in the limit, not the tilted density's 1/(w/v_c + (1-w)/v_u)."""
    sch = dk.EDMSchedule()  # sigma_T = 80
    cond = dk.DiagonalGaussian(torch.tensor([1.0], dtype=F64), torch.tensor([0.25], dtype=F64))
    uncond = dk.DiagonalGaussian(torch.tensor([0.0], dtype=F64), torch.tensor([1.0], dtype=F64))
    for w, model in ((0.0, uncond), (1.0, cond)):
        torch.testing.assert_close(dk.tilted_gaussian(w, cond, uncond), model, rtol=1e-12, atol=0)
        law = dk.cfg_gaussian_ode_map(sch, w, cond, uncond).law
        torch.testing.assert_close(law.mean, model.mean, rtol=0, atol=1.01 * 0.5 / 80)
        torch.testing.assert_close(law.var, model.var, rtol=1.01 / 80**2, atol=0)
    # the tilted Gaussian is p(x|y)^w p(x)^(1-w) up to a constant
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    normal = lambda g: torch.distributions.Normal(g.mean, g.var.sqrt()).log_prob(x).sum(1)  # noqa: E731
    gap = normal(dk.tilted_gaussian(3.0, cond, uncond)) - 3.0 * normal(cond) + 2.0 * normal(uncond)
    torch.testing.assert_close(gap, gap[:1].expand(7))
    law = dk.cfg_gaussian_ode_map(sch, 3.0, cond, uncond).law
    torch.testing.assert_close(law.var, torch.tensor([0.25**3], dtype=F64), rtol=1e-3, atol=0)
    assert law.kl(dk.tilted_gaussian(3.0, cond, uncond)) > 0.5
    with pytest.raises(ValueError, match="not normalisable"):
        dk.tilted_gaussian(3.0, uncond, cond)


# ---- classifier and energy guidance ---------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_classifier_guidance_with_exact_classifier_is_the_conditional_model(name: str) -> None:
    sch = all_schedules()[name]
    mix = labelled(sch)
    x = mix.sample(6, seed=5, t=0.5 * sch.t_max)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    guided = dk.ClassifierGuidance(mix, mix.class_log_prob, 1.0)
    for t in (0.3 * sch.t_max, mid_times(sch, 6)):
        assert_same(guided(x, t, y), mix(x, t, y), tol=1e-9)
        assert_same(dk.ClassifierGuidance(mix, mix.class_log_prob, 0.0)(x, t, y), mix(x, t), tol=0)
        lam = 2.0  # s: the score of p(x) p(y|x)^s
        want = mix.score(x, t) + lam * (mix.score(x, t, y) - mix.score(x, t))
        torch.testing.assert_close(dk.ClassifierGuidance(mix, mix.class_log_prob, lam)(x, t, y).score, want)


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpmpp_2m", "euler_maruyama"])
def test_classifier_guided_sampling_follows_the_conditional_model(solver: str) -> None:
    """With the same noise, a guided run of any solver (ancestral, DDIM, ODE, SDE) is the run of
    the exact conditional denoiser."""
    sch = dk.VPSchedule()
    mix = labelled(sch)
    guided = dk.ClassifierGuidance(mix, mix.class_log_prob, 1.0)
    run = lambda den: dk.sample(  # noqa: E731
        den, dk.make_solver(solver), shape=(2,), batch=32, steps=25, cond=1, seed=6, dtype=F64, progress=False
    ).x
    torch.testing.assert_close(run(guided), run(mix), rtol=1e-8, atol=1e-8)


def test_classifier_guidance_draws_the_exact_conditional_law() -> None:
    """s = 1 with the exact p(y|x_t): log p(x|y) and within-class mode weights of 4,000 guided
    samples match exact draws from p(x|y) within Monte-Carlo error."""
    sch = dk.VPSchedule()
    mix = labelled(sch)
    n, y = 4000, 0
    sol = dk.sample(
        dk.ClassifierGuidance(mix, mix.class_log_prob, 1.0), dk.make_solver("dpmpp_3m"), shape=(2,), batch=n,
        steps=30, cond=y, seed=7, dtype=F64, progress=False,
    )
    exact = mix.sample(n, seed=8, cond=y)
    lp, lp_exact = mix.log_prob(sol.x, None, y), mix.log_prob(exact, None, y)
    se = math.sqrt((lp.var() + lp_exact.var()) / n)
    assert abs(float(lp.mean() - lp_exact.mean())) < 4 * se
    r = conditional_responsibilities(mix, sol.x, y)[:, 1]  # weight of the 3/4 mode
    assert abs(float(r.mean()) - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    assert float(mix.class_log_prob(sol.x)[:, y].exp().mean()) > 0.99
    unguided = mix.log_prob(dk.sample(mix, dk.make_solver("dpmpp_3m"), shape=(2,), batch=n, steps=30, seed=7,
                                      dtype=F64, progress=False).x, None, y)
    assert float(lp.mean() - unguided.mean()) > 10 * se  # the test can tell guidance from none


def test_energy_guidance_with_the_classifier_energy_is_classifier_guidance() -> None:
    sch = dk.VPSchedule()
    mix = labelled(sch)
    x = mix.sample(6, seed=9, t=0.5)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    t = mid_times(sch, 6)
    own = lambda x, t, c: -mix.class_log_prob(x, t).gather(1, c[:, None])[:, 0]  # noqa: E731
    want = dk.ClassifierGuidance(mix, mix.class_log_prob, 1.7)(x, t, y)
    assert_same(dk.EnergyGuidance(mix, own, 1.7, inner_cond=False)(x, t, y), want)
    assert_same(dk.EnergyGuidance(mix, dk.ClassifierEnergy(mix.class_log_prob), 1.7, inner_cond=False)(x, t, y), want)


def test_energy_of_the_denoised_estimate_is_differentiated_through_the_denoiser() -> None:
    """E = c . x0_hat(x_t) for one Gaussian N(m, v): grad = c alpha v / (alpha^2 v + sigma^2)."""
    sch = dk.VPSchedule()
    mix = GaussianMixture([[0.5, -1.0]], [[0.8, 0.6]], sch)
    c = torch.tensor([1.0, -2.0], dtype=F64)
    x = mix.sample(5, seed=10, t=0.5)
    got = dk.EnergyGuidance(mix, lambda x0, t, cond: x0 @ c, 0.7, denoised=True)(x, 0.5)
    alpha, sigma = (float(v) for v in sch.alpha_sigma(torch.tensor(0.5, dtype=F64)))
    grad = c * alpha * mix.variances[0] / (alpha**2 * mix.variances[0] + sigma**2)
    assert_same(got, mix(x, 0.5).with_eps(mix(x, 0.5).eps + 0.7 * sigma * grad))
    assert not got.eps.requires_grad
    # differentiable when x is (sample(grad=True)): the guided eps's Jacobian is checked numerically
    guided = dk.EnergyGuidance(mix, lambda x0, t, cond: (x0**2).sum(1), 0.7, denoised=True)
    assert torch.autograd.gradcheck(lambda v: guided(v, 0.5).eps, x[:2].clone().requires_grad_(True))


def test_low_density_guidance_moves_samples_to_rare_parts_of_their_class() -> None:
    """Sehwag et al. 2022 on the oracle: pushing the denoised estimate's embedding away from the
    class-mean embedding lowers log p(x|y) while p(y|x) stays high."""
    sch = dk.VPSchedule()
    mix = GaussianMixture([[3.0, 0.0], [-3.0, 0.0]], 0.7, sch)
    energy = dk.LowDensityEnergy(lambda x: x, mix.means)  # identity features; class means
    n, y = 2000, 0
    run = lambda den: dk.sample(  # noqa: E731
        den, dk.make_solver("dpmpp_2m"), shape=(2,), batch=n, steps=25, cond=y, seed=11, dtype=F64, progress=False
    ).x
    plain, rare = run(mix), run(dk.EnergyGuidance(mix, energy, 20.0, denoised=True))
    lp, lp_rare = mix.log_prob(plain, None, y), mix.log_prob(rare, None, y)
    se = math.sqrt((lp.var() + lp_rare.var()) / n)
    assert float(lp.mean() - lp_rare.mean()) > 10 * se
    assert float((mix.class_log_prob(rare)[:, y].exp() > 0.9).double().mean()) > 0.99


def test_guidance_rejects_bad_arguments() -> None:
    sch = dk.VPSchedule()
    mix = labelled(sch)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0, got -1"):
        dk.ClassifierFreeGuidance(mix, -1.0)
    with pytest.raises(ValueError, match=r"interval must be \(lo, hi\)"):
        dk.ClassifierFreeGuidance(mix, 2.0, interval=(3.0, 1.0))
    with pytest.raises(ValueError, match=r"rescale must be a number in \[0, 1\]"):
        dk.ClassifierFreeGuidance(mix, 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="needs a condition"):
        dk.ClassifierFreeGuidance(mix, 2.0)(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="scale must be"):
        dk.ClassifierGuidance(mix, mix.class_log_prob, math.inf)
    with pytest.raises(ValueError, match="needs class labels"):
        dk.ClassifierGuidance(mix, mix.class_log_prob)(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"one value per sample \(2,\)"):
        dk.EnergyGuidance(mix, lambda x, t, c: x.sum(), 1.0)(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="class_means must be"):
        dk.LowDensityEnergy(lambda x: x, torch.zeros(3))
