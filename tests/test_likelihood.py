"""Likelihoods against the exact oracle: PF-ODE NLL, Hutchinson error bars, dequantization, VLBs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import diffusekit as dk
from diffusekit.denoiser import Denoiser
from diffusekit.likelihood import (
    continuous_vlb,
    dequantized_bits_per_dim,
    discrete_vlb,
    discretized_gaussian_log_likelihood,
    gaussian_dequantized_bits_per_dim,
    ode_log_likelihood,
)
from diffusekit.likelihood.dequantize import log_normal_mass
from diffusekit.parameterization import Prediction
from diffusekit.oracle import GaussianMixture

from .conftest import smooth_mixture

SCHEDULES = {
    "vp": dk.VPSchedule(),
    "discrete_linear": dk.DiscreteSchedule("linear"),
    "discrete_ztsnr": dk.DiscreteSchedule("cosine", zero_terminal_snr=True),
    "edm": dk.EDMSchedule(),
    "ve": dk.VESchedule(),
    "flow": dk.FlowSchedule(),
    "subvp": dk.SubVPSchedule(),
}


def exact_prior(mix: GaussianMixture, t_max: float | None = None):
    """The true marginal at t_max, so the comparison isolates the ODE and the divergence."""
    t = mix.schedule.t_max if t_max is None else t_max
    return lambda z: mix.log_prob(z, t=t)


def nll_error(mix: GaussianMixture, res, x: Tensor, t: float) -> Tensor:
    """Per-sample error of the estimate in nats per dimension against the exact log p_t(x)."""
    return (res.log_p - mix.log_prob(x, t=t)) / x[0].numel()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_exact_trace_matches_oracle(name: str) -> None:
    """Exact samples of p_{t_eps}: the ODE NLL is within 0.01 nats/dim of -log p_{t_eps}(x)."""
    schedule = SCHEDULES[name]
    mix = smooth_mixture(schedule, dim=3, seed=1)
    t_eps = schedule.t_min
    x = mix.sample(24, seed=2, t=t_eps)
    res = ode_log_likelihood(mix, x, divergence="exact", prior=exact_prior(mix))
    err = nll_error(mix, res, x, t_eps)
    assert float(err.abs().max()) < 0.01, err
    torch.testing.assert_close(res.std_error, res.quadrature_error)  # exact trace: the quadrature is the only error
    torch.testing.assert_close(res.log_p, res.prior_log_p + res.delta_log_p)


def test_default_prior_is_the_schedule_prior() -> None:
    """With the schedule's prior (no mean term) the only extra error is log N(x_T) - log p_T(x_T), small for VP."""
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule, dim=3)
    x = mix.sample(16, seed=3, t=schedule.t_min)
    res = ode_log_likelihood(mix, x, prior_correction=False)
    torch.testing.assert_close(res.prior_log_p, schedule.prior_log_prob(res.latent))
    ref = ode_log_likelihood(mix, x, prior=exact_prior(mix))
    mismatch = schedule.prior_log_prob(ref.latent) - mix.log_prob(ref.latent, t=schedule.t_max)
    torch.testing.assert_close(res.log_p - ref.log_p, mismatch, atol=1e-6, rtol=0)
    assert float(nll_error(mix, res, x, schedule.t_min).abs().max()) < 0.02


def test_prior_mean_term_removes_most_of_the_mismatch() -> None:
    """Data far from centred (means 3 away from 0) on VE: the schedule's prior misses alpha z.mu / s^2;
    the default's mean term recovers the exact prior's value to a small fraction of that."""
    schedule = dk.EDMSchedule()
    g = torch.Generator().manual_seed(2)
    mix = GaussianMixture(3 + torch.randn(3, 8, generator=g, dtype=torch.float64), 0.4, schedule)
    x = mix.sample(32, seed=1, t=schedule.t_min)
    kw = dict(divergence="exact", seed=0)
    ref = ode_log_likelihood(mix, x, prior=exact_prior(mix), **kw).log_p
    plain = (ode_log_likelihood(mix, x, prior_correction=False, **kw).log_p - ref).abs()
    fixed = (ode_log_likelihood(mix, x, **kw).log_p - ref).abs()
    assert float(fixed.max()) < 0.1 * float(plain.max()) and float(plain.max()) / 8 > 1e-3, (fixed, plain)


class _OracleNet(nn.Module):
    """A network that returns Parameterization.target of the oracle's exact prediction."""

    def __init__(self, oracle: GaussianMixture, shell: Denoiser) -> None:
        super().__init__()
        self.oracle = oracle
        self.shell = shell  # same schedule and parameterization, for the coefficients

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        schedule = self.oracle.schedule
        t = (c_noise.double() + 1) / schedule.num_steps if isinstance(schedule, dk.DiscreteSchedule) else c_noise.double()
        c, _, _, _ = self.shell.precondition(x_in, t)
        x = x_in / c.c_in
        pred = self.oracle(x, t)
        return self.shell.parameterization.target(pred.x0, pred.eps, c, x)


@pytest.mark.parametrize(
    "name,param", [("vp", "eps"), ("discrete_linear", "v"), ("edm", "x0"), ("flow", "velocity"), ("subvp", "score")]
)
def test_parameterizations(name: str, param: str) -> None:
    """The same density through eps / x0 / v / velocity / score networks."""
    schedule = SCHEDULES[name]
    mix = smooth_mixture(schedule, dim=3, seed=4)
    model = Denoiser(_OracleNet(mix, Denoiser(None, schedule, param)), schedule, param).double()
    x = mix.sample(12, seed=5, t=schedule.t_min)
    res = ode_log_likelihood(model, x, divergence="exact", prior=exact_prior(mix))
    assert float(nll_error(mix, res, x, schedule.t_min).abs().max()) < 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variable": "lambda"},
        {"variable": "edm"},
        {"method": "rk4", "steps": 48, "quadrature": None},
        {"method": "dopri8", "rtol": 1e-6, "atol": 1e-6},
        {"quadrature": 20},
        {"mode": "forward"},
    ],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_solver_variants_exact(kwargs: dict) -> None:
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule, dim=4, seed=6)
    x = mix.sample(16, seed=7, t=schedule.t_min)
    res = ode_log_likelihood(mix, x, divergence="exact", prior=exact_prior(mix), **kwargs)
    assert float(nll_error(mix, res, x, schedule.t_min).abs().max()) < 0.01
    if "steps" in kwargs:
        assert res.nfe == 4 * kwargs["steps"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise": "rademacher", "probes": 8},
        {"noise": "gaussian", "probes": 8},
        {"noise": "rademacher", "probes": 4, "quadrature": 16},
        {"noise": "gaussian", "probes": 6, "quadrature": 16, "allocation": "uniform"},
    ],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_hutchinson_error_within_standard_error(kwargs: dict) -> None:
    """The error is consistent with the reported standard error (a t-statistic), which is not inflated."""
    schedule = dk.EDMSchedule()
    g = torch.Generator().manual_seed(8)
    # correlated components: off-diagonal Jacobians, so Hutchinson has real variance
    mix = GaussianMixture(torch.randn(4, 6, generator=g, dtype=torch.float64), [0.4, 0.6, 0.5, 0.8], schedule)
    x = mix.sample(64, seed=9, t=schedule.t_min)
    res = ode_log_likelihood(mix, x, divergence="hutchinson", prior=exact_prior(mix), seed=3, **kwargs)
    err = res.log_p - mix.log_prob(x, t=schedule.t_min)
    z = err / res.std_error
    assert bool((res.std_error > 0).all())
    assert float((z.abs() <= 3).double().mean()) >= 0.85, z
    assert 0.35 < float(z.abs().median()) < 1.4, z  # |t_7| has median 0.71
    assert float(res.std_error.mean()) / 6 < 0.25  # a useful error bar, not a vacuous one
    exact = ode_log_likelihood(mix, x, divergence="exact", prior=exact_prior(mix))
    assert float((exact.log_p - mix.log_prob(x, t=schedule.t_min)).abs().max()) / 6 < 0.01


def test_single_probe_has_no_standard_error_and_probes_are_seeded() -> None:
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule, dim=3)
    x = mix.sample(8, seed=1, t=schedule.t_min)
    a = ode_log_likelihood(mix, x, divergence="hutchinson", probes=1, seed=5, quadrature=None)
    b = ode_log_likelihood(mix, x, divergence="hutchinson", probes=1, seed=5, quadrature=None)
    c = ode_log_likelihood(mix, x, divergence="hutchinson", probes=1, seed=6, quadrature=None)
    assert bool(a.std_error.isnan().all())
    torch.testing.assert_close(a.log_p, b.log_p)
    assert not torch.allclose(a.log_p, c.log_p)


def test_t_eps_effect() -> None:
    """The estimate is log p_{t_eps}(x) for data x; with alpha = 1 the mean NLL rises with t_eps."""
    schedule = dk.EDMSchedule()
    mix = smooth_mixture(schedule, dim=3, seed=2)
    x = mix.sample(48, seed=10)  # clean data
    means = []
    for t_eps in (0.002, 0.3, 0.8):
        res = ode_log_likelihood(mix, x, t_eps=t_eps, prior=exact_prior(mix))
        assert res.t_eps == t_eps
        assert float(nll_error(mix, res, x, t_eps).abs().max()) < 0.01
        means.append(float(-res.log_p.mean()))
    assert means[0] < means[1] < means[2], means
    # at the smallest t_eps the data density itself is recovered closely
    data_err = (ode_log_likelihood(mix, x, t_eps=0.002, prior=exact_prior(mix)).log_p - mix.log_prob(x)) / 3
    assert float(data_err.abs().max()) < 0.01


def test_float32_and_no_grad_outside() -> None:
    schedule = dk.FlowSchedule()
    mix = smooth_mixture(schedule, dim=4, seed=3)
    x = mix.sample(8, seed=4, t=schedule.t_min)
    with torch.no_grad():
        res = ode_log_likelihood(mix, x.float(), rtol=1e-4, atol=1e-4)
    assert res.latent.dtype == torch.float32
    assert float(nll_error(mix, res, x, schedule.t_min).abs().max()) < 0.01


def test_image_shaped_data() -> None:
    """(B, C, H, W) data: the exact trace and the probes work on any shape."""
    schedule = dk.VPSchedule()
    g = torch.Generator().manual_seed(1)
    mix = GaussianMixture(0.7 * torch.randn(3, 4, generator=g, dtype=torch.float64), 0.5, schedule, shape=(1, 2, 2))
    x = mix.sample(8, seed=2, t=schedule.t_min)
    for kwargs in ({"divergence": "exact"}, {"divergence": "hutchinson", "probes": 4, "quadrature": 24}):
        res = ode_log_likelihood(mix, x, prior=exact_prior(mix), **kwargs)
        assert res.latent.shape == x.shape
        tol = 0.01 + (4 * res.std_error / 4 if kwargs["divergence"] == "hutchinson" else 0)
        assert bool((nll_error(mix, res, x, schedule.t_min).abs() < tol).all())


def test_rejects_bad_arguments() -> None:
    mix = smooth_mixture(dk.FlowSchedule(), dim=2)
    x = mix.sample(2, seed=0)
    with pytest.raises(ValueError, match="infinite"):
        ode_log_likelihood(mix, x, variable="lambda")  # lambda(1) = -inf on the flow path
    with pytest.raises(ValueError, match="divergence"):
        ode_log_likelihood(mix, x, divergence="trace")
    with pytest.raises(ValueError, match="probes"):
        ode_log_likelihood(mix, x, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="outside"):
        ode_log_likelihood(mix, x, t_eps=-1.0)


# ---- dequantization -----------------------------------------------------------------------------


def _gaussian_oracle(mean: list[float], std: float) -> GaussianMixture:
    return GaussianMixture([mean], [std], dk.EDMSchedule(t_min=1e-3))


def _lattice_data(mean: list[float], std: float, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(mean, dtype=torch.float64) + std * torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    return ((x + 1) / 2 * 256).floor().clamp(0, 255)


def test_uniform_dequantization_matches_closed_form() -> None:
    """ODE log p of dequantized 8-bit data -> bits/dim equals the Gaussian closed form."""
    mean, std = [0.1, -0.2], 0.3
    mix = _gaussian_oracle(mean, std)
    k = _lattice_data(mean, std, 32, seed=1)
    t_eps = mix.schedule.t_min
    res = dequantized_bits_per_dim(
        lambda x: ode_log_likelihood(mix, x, prior=exact_prior(mix)).log_p, k, samples=4, seed=2
    )
    eff = math.sqrt(std**2 + t_eps**2)  # the model's marginal at t_eps (alpha = 1)
    closed, discrete = gaussian_dequantized_bits_per_dim(k, torch.tensor(mean), eff)
    # per image: within the Monte-Carlo error of 4 dequantization draws (plus the ODE's 0.01 nats/dim)
    diff = res.bits_per_dim - closed
    assert bool((diff.abs() <= 4 * res.std_error + 0.015).all()), (diff, res.std_error)
    se_mean = float(res.std_error.pow(2).sum().sqrt()) / len(k)
    assert abs(float(diff.mean())) < 4 * se_mean + 2e-3
    assert bool((closed >= discrete - 1e-12).all())  # Jensen: the dequantized bound is above the truth
    assert float((closed - discrete).max()) < 0.01  # bins are narrow against the std


def test_variational_dequantization_hook_is_tight_at_the_optimum() -> None:
    """With q(u | k) proportional to p(x(k, u)) on each bin, every draw gives the exact discrete bpd."""
    mean, std = [0.05], 0.2
    mix = _gaussian_oracle(mean, std)
    eff = math.sqrt(std**2 + mix.schedule.t_min**2)
    k = _lattice_data(mean, std, 16, seed=3)
    w = 2 / 256
    lo = (-1 + w * k - mean[0]) / eff
    hi = lo + w / eff
    mass = log_normal_mass(lo, hi)

    def optimal(kk: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        r = torch.rand(kk.shape, generator=g, dtype=torch.float64)
        cdf_lo = torch.special.ndtr(lo)
        z = torch.special.ndtri(cdf_lo + r * (torch.special.ndtr(hi) - cdf_lo))
        u = ((z - lo) * eff / w).clamp(0, 1 - 1e-12)
        log_q = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - mass + math.log(w / eff)).sum(1)
        return u, log_q

    res = dequantized_bits_per_dim(
        lambda x: ode_log_likelihood(mix, x, prior=exact_prior(mix), rtol=1e-4, atol=1e-4).log_p, k, samples=3,
        dequantizer=optimal,
    )
    uniform, discrete = gaussian_dequantized_bits_per_dim(k, torch.tensor(mean), eff)
    assert float((res.bits_per_dim - discrete).abs().max()) < 0.01
    assert float(res.std_error.max()) < 1e-3  # zero-variance estimator up to ODE error
    assert float((uniform - res.bits_per_dim).mean()) > 0


# ---- variational bounds ----------------------------------------------------------------------------


def test_discretized_decoder_is_a_distribution() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in [(0.3, 0.05), (-0.99, 0.2), (1.2, 0.01)]:
        lp = discretized_gaussian_log_likelihood(levels[:, None], torch.full((256, 1), mean), std)
        torch.testing.assert_close(torch.logsumexp(lp, 0), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)


def test_discrete_vlb_bounds_the_exact_nll() -> None:
    """Ho et al. eq. 5 at 1000 steps on the oracle: E[VLB] >= E[-log p] and close with the large variance."""
    schedule = dk.DiscreteSchedule("linear")
    mix = smooth_mixture(schedule, dim=4)
    x = mix.sample(512, seed=1)
    nll = -mix.log_prob(x)
    for variance in ("small", "large"):
        res = discrete_vlb(mix, x, variance=variance, decoder="gaussian", decoder_variance="likelihood", chunk=50)
        assert res.terms.shape == (512, 1000)
        assert bool((res.terms[:, 1:] >= 0).all())
        gap = (res.total - nll) / 4
        se = float(gap.std()) / math.sqrt(512)
        assert float(gap.mean()) > -3 * se, (variance, float(gap.mean()), se)
        if variance == "large":
            assert float(gap.mean()) < 0.05 + 3 * se
    torch.testing.assert_close(res.bits_per_dim, res.total / (4 * math.log(2)))


class _Cheat(Denoiser):
    """Predicts the true x0 (known per sample): the small-variance KLs vanish."""

    def __init__(self, x0: Tensor, schedule: dk.NoiseSchedule) -> None:
        super().__init__(None, schedule, "x0")
        self.x0 = x0

    def forward(self, x: Tensor, t, cond=None) -> Prediction:
        c, _, alpha, sigma = self.precondition(x, t)
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1)
        return Prediction(x, alpha, sigma, x0, (x - alpha * x0) / sigma)


def test_vlb_kl_terms_closed_form() -> None:
    schedule = dk.DiscreteSchedule("linear", num_steps=100)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    cheat = _Cheat(x0, schedule)
    small = discrete_vlb(cheat, x0, variance="small", decoder="gaussian", chunk=7)
    torch.testing.assert_close(small.terms[:, 1:], torch.zeros(5, 99, dtype=torch.float64), atol=1e-12, rtol=0)
    large = discrete_vlb(cheat, x0, variance="large", decoder="gaussian")
    abar = schedule.alphas_cumprod
    beta = 1 - abar[1:] / abar[:-1]
    tilde = beta * (1 - abar[:-1]) / (1 - abar[1:])
    expect = 1.5 * (torch.log(beta / tilde) + tilde / beta - 1)  # D = 3 dimensions
    torch.testing.assert_close(large.terms[:, 1:], expect.expand(5, 99))
    # the prior term is KL(N(sqrt(abar_N) x0, 1 - abar_N) || N(0, 1))
    a2 = abar[-1]
    kl = 0.5 * (a2 * x0**2 + (1 - a2) - 1 - torch.log(1 - a2)).sum(1)
    torch.testing.assert_close(small.prior, kl)


def test_discrete_vlb_on_8bit_data_with_the_discretized_decoder() -> None:
    """L_0 is a log-probability: the total is >= the exact discrete NLL of a Gaussian's 8-bit lattice."""
    schedule = dk.DiscreteSchedule("linear")
    mean, std = torch.tensor([0.1, -0.3]), 0.4
    mix = GaussianMixture(mean[None], [std], schedule)
    g = torch.Generator().manual_seed(0)
    x = (mean + std * torch.randn(256, 2, generator=g, dtype=torch.float64)).clamp(-1, 1)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1
    res = discrete_vlb(mix, x, variance="large", chunk=100)
    half = 1 / 255
    lo = torch.where(x < -1 + 1e-9, torch.full_like(x, -math.inf), (x - half - mean) / std)
    hi = torch.where(x > 1 - 1e-9, torch.full_like(x, math.inf), (x + half - mean) / std)
    exact = -log_normal_mass(lo, hi).sum(1)  # the oracle's data are continuous: its lattice mass
    gap = (res.total - exact) / 2
    assert float(gap.mean()) > -3 * float(gap.std()) / 16
    assert bool(torch.isfinite(res.total).all())


@pytest.mark.parametrize("name", ["discrete_linear", "edm"])
def test_continuous_vlb_is_tight_for_the_exact_denoiser(name: str) -> None:
    """VDM with the exact denoiser: E[L] = H(z_eps) - D log alpha_eps + KL(q_T || prior) ~ E[-log p(x)]."""
    schedule = SCHEDULES[name]
    mix = smooth_mixture(schedule, dim=4)
    x = mix.sample(2048, seed=2)
    res = continuous_vlb(mix, x, nodes=96, chunk=24)
    gap = (res.total - (-mix.log_prob(x))) / 4
    se = float(gap.std()) / math.sqrt(2048)
    assert abs(float(gap.mean())) < 4 * se + 0.01, (float(gap.mean()), se)
    discrete = discrete_vlb(mix, x[:512], steps=50, decoder="gaussian", decoder_variance="likelihood")
    assert float(discrete.total.mean()) > float(res.total[:512].mean())  # fewer steps, looser bound
