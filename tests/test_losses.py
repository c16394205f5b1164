"""DSM losses: parameterization-independent weightings, time distributions, the likelihood bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import diffusekit as dk
from diffusekit.losses import (
    DSMLoss,
    TimeSampler,
    dsm_loss,
    make_time_sampler,
    make_weighting,
)
from diffusekit.parameterization import Parameterization, make_parameterization
from diffusekit.oracle import GaussianMixture

from .conftest import all_schedules

SCHEDULES = ["discrete_linear", "vp", "ve", "edm", "flow"]
PARAMS = ["eps", "x0", "v", "score", "velocity", "edm"]
WEIGHTINGS = ["eps", "snr", "min_snr", "v", "velocity", "edm", "likelihood"]


class OracleNet(nn.Module):
    """The network output F that makes ``Denoiser(net, schedule, param)`` equal the exact oracle.

    It recovers t from c_noise (model time, or log(sigma/alpha)/4 for EDM) and x_t = x_in / c_in.
    """

    def __init__(self, oracle: GaussianMixture, param: Parameterization) -> None:
        super().__init__()
        self.oracle = oracle
        self.param = param

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: object = None) -> Tensor:
        sched = self.oracle.schedule
        if self.param.name == "edm":
            t = sched.t_of_log_snr(-4 * c_noise.double())
        elif isinstance(sched, dk.DiscreteSchedule):
            t = (c_noise.double() + 1) / sched.num_steps
        else:
            t = c_noise.double()
        den = dk.Denoiser(None, sched, self.param)
        coeffs, _, _, _ = den.precondition(x_in, t)
        x_t = x_in / coeffs.c_in
        pred = self.oracle(x_t, t)
        return self.param.target(pred.x0, pred.eps, coeffs, x_t)


def _oracle(schedule: dk.NoiseSchedule, dim: int = 3, k: int = 2, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.linspace(0.3, 0.8, k, dtype=torch.float64), schedule)


def _draws(schedule: dk.NoiseSchedule, oracle: GaussianMixture, n: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x0 = oracle.sample(n, seed=2)
    t = make_time_sampler("uniform")(n, schedule, g)
    # keep away from t_max where alpha may vanish (flow), so every parameterization is finite
    t = schedule.t_min + 0.95 * (t - schedule.t_min)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, t, noise


@pytest.mark.parametrize("sched_name", SCHEDULES)
def test_oracle_loss_is_the_same_in_every_parameterization(sched_name: str) -> None:
    """For the same (x0, t, eps) and the same predicted x0, every parameterization gives the same
    weighted loss: the weighting is a property of the error, not of what the network predicts."""
    schedule = all_schedules()[sched_name]
    oracle = _oracle(schedule)
    x0, t, noise = _draws(schedule, oracle)
    x_t = schedule.add_noise(x0, t, noise)
    pred = oracle(x_t, t)
    x0_err = (pred.x0 - x0).pow(2).mean(1)
    eps_err = (pred.eps - noise).pow(2).mean(1)
    alpha, sigma = schedule.alpha_sigma(t)
    snr = (alpha / sigma) ** 2
    for w in WEIGHTINGS:
        losses = {
            p: dsm_loss(dk.Denoiser(OracleNet(oracle, make_parameterization(p)), schedule, p), x0, t, noise, w)
            for p in PARAMS
        }
        ref = losses["x0"]
        for p, v in losses.items():
            torch.testing.assert_close(v, ref, rtol=1e-6, atol=0, msg=f"{w} weighting, {p} vs x0 on {sched_name}")
        # the canonical errors: snr = x0 error, eps = eps error = SNR * x0 error
        if w == "snr":
            torch.testing.assert_close(ref, x0_err, rtol=1e-6, atol=0)
        if w == "eps":
            torch.testing.assert_close(ref, eps_err, rtol=1e-6, atol=0)
            torch.testing.assert_close(ref, snr * x0_err, rtol=1e-6, atol=0)
        if w == "min_snr":
            torch.testing.assert_close(ref, snr.clamp(max=5.0) * x0_err, rtol=1e-6, atol=0)
        if w == "v":
            torch.testing.assert_close(ref, (pred.v - (alpha[:, None] * noise - sigma[:, None] * x0)).pow(2).mean(1), rtol=1e-6, atol=0)


NATIVE = {"eps": "eps", "x0": "snr", "v": "v", "velocity": "velocity", "edm": "edm"}


@pytest.mark.parametrize("sched_name", SCHEDULES)
@pytest.mark.parametrize("param", list(NATIVE))
def test_native_weighting_is_the_plain_mse_of_any_network(sched_name: str, param: str) -> None:
    """eps-loss with eps weighting, x0-loss with SNR weighting, v with v, ... are the raw MSE
    ||F - F*||^2 / D for an arbitrary (here random) network: the Jacobian factor is exact."""
    schedule = all_schedules()[sched_name]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    den = dk.Denoiser(lambda x, c, cond=None: net(x) + c[:, None], schedule, param)  # type: ignore[arg-type]
    oracle = _oracle(schedule)
    x0, t, noise = _draws(schedule, oracle)
    x_t = schedule.add_noise(x0, t, noise)
    coeffs, c_noise, _, _ = den.precondition(x_t, t)
    f = net(coeffs.c_in * x_t) + c_noise[:, None]
    raw = (f - den.parameterization.target(x0, noise, coeffs, x_t)).pow(2).mean(1)
    torch.testing.assert_close(dsm_loss(den, x0, t, noise, NATIVE[param]), raw, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sched_name", SCHEDULES)
def test_likelihood_weight_is_minus_two_dlambda_dt(sched_name: str) -> None:
    """g^2 / sigma^2 = -2 dlambda/dt (Song et al. 2021; VDM), the weight whose integral is the NLL bound."""
    schedule = all_schedules()[sched_name]
    t = torch.linspace(schedule.t_min, schedule.t_max, 41, dtype=torch.float64)[1:-1]
    w = make_weighting("likelihood").weight(t, schedule)
    h = 1e-6 * (schedule.t_max - schedule.t_min)
    dlam = (schedule.log_snr(t + h) - schedule.log_snr(t - h)) / (2 * h)
    if isinstance(schedule, dk.DiscreteSchedule):  # piecewise linear: use a one-sided difference
        dlam = (schedule.log_snr(t + h) - schedule.log_snr(t)) / h
    torch.testing.assert_close(w, -2 * dlam, rtol=1e-4, atol=0)


@pytest.mark.parametrize("time", ["uniform", "stratified", "lognormal"])
def test_likelihood_weighted_loss_of_the_exact_model_is_the_closed_form_integral(time: str) -> None:
    """For Gaussian data N(mu, s^2) the exact denoiser's eps error has variance alpha^2 s^2 / (alpha^2 s^2 + sigma^2),
    so int g^2/sigma^2 E|eps err|^2 dt = log((1 + s^2 SNR(t_min)) / (1 + s^2 SNR(t_max))) per dimension.
    The importance-weighted loss must estimate it for any time distribution."""
    schedule = dk.VPSchedule()
    s = torch.tensor([[0.3, 0.7, 1.5]], dtype=torch.float64)
    oracle = GaussianMixture(torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64), s, schedule)
    den = dk.Denoiser(OracleNet(oracle, make_parameterization("eps")), schedule, "eps")
    loss_fn = DSMLoss("likelihood", time, importance=True)
    n = 40000
    x0 = oracle.sample(n, seed=0)
    out = loss_fn(den, x0, generator=torch.Generator().manual_seed(12345))  # not the data seed
    def snr(t):
        return math.exp(2 * float(schedule.log_snr(torch.tensor(t, dtype=torch.float64))))
    s2 = s.flatten() ** 2
    expected = ((1 + s2 * snr(schedule.t_min)) / (1 + s2 * snr(schedule.t_max))).log().mean().item()
    se = out.per_sample.std().item() / math.sqrt(n)
    assert abs(out.loss.item() - expected) < 4 * se, (out.loss.item(), expected, se)
    assert se < 0.05 * expected


# ---- time distributions ---------------------------------------------------------------


def _ks(samples: Tensor, cdf: Tensor, grid: Tensor) -> float:
    emp = torch.searchsorted(samples.sort().values, grid, right=True).double() / samples.numel()
    return (emp - cdf).abs().max().item()


@pytest.mark.parametrize("name", ["uniform", "stratified", "antithetic", "lognormal"])
@pytest.mark.parametrize("sched_name", ["vp", "edm", "flow"])
def test_time_distribution_support_and_density(name: str, sched_name: str) -> None:
    """Samples lie in [t_min, t_max], and their empirical CDF matches the integral of ``density``
    (Kolmogorov-Smirnov distance below 5 / sqrt(n)); the density integrates to one."""
    schedule = all_schedules()[sched_name]
    sampler = make_time_sampler(name)
    g = torch.Generator().manual_seed(0)
    n = 20000
    t = torch.cat([sampler(100, schedule, g) for _ in range(n // 100)])
    assert t.dtype == torch.float64
    assert bool((t >= schedule.t_min).all() and (t <= schedule.t_max).all())
    # density on a grid fine in log-sigma (the log-normal's natural scale)
    lo, hi = schedule.log_snr(torch.tensor([schedule.t_max * (1 - 1e-9), schedule.t_min], dtype=torch.float64)).tolist()
    lam = torch.linspace(hi, max(lo, -12.0), 20001, dtype=torch.float64)
    grid = schedule.t_of_log_snr(lam).clamp(schedule.t_min, schedule.t_max)
    grid = torch.cat([grid, torch.tensor([schedule.t_max], dtype=torch.float64)]).unique()
    p = sampler.density(grid, schedule)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(p, grid)])
    assert abs(cdf[-1].item() - 1) < 2e-3
    assert _ks(t, cdf, grid) < 5 / math.sqrt(n)


def test_uniform_moments_and_low_discrepancy_batches() -> None:
    schedule = dk.VPSchedule()
    a, b = schedule.t_min, schedule.t_max
    g = torch.Generator().manual_seed(0)
    n = 40000
    t = make_time_sampler("uniform")(n, schedule, g)
    assert abs(t.mean().item() - (a + b) / 2) < 4 * (b - a) / math.sqrt(12 * n)
    assert abs(t.var().item() - (b - a) ** 2 / 12) < 0.01 * (b - a) ** 2
    batch = 64
    for _ in range(5):
        u = (make_time_sampler("stratified")(batch, schedule, g) - a) / (b - a)
        # exactly one variate in each of the B strata [i/B, (i+1)/B)
        assert torch.equal((u * batch).floor().long().sort().values, torch.arange(batch))
        u = (make_time_sampler("antithetic")(batch, schedule, g) - a) / (b - a)
        torch.testing.assert_close(u[: batch // 2] + u[batch // 2 :], torch.ones(batch // 2, dtype=torch.float64))


def test_lognormal_matches_edm_moments() -> None:
    """On EDM's sigma = t, ln(sigma) ~ N(-1.2, 1.2^2) truncated to [ln 0.002, ln 80] (Karras et al. 2022)."""
    from scipy.stats import truncnorm

    schedule = dk.EDMSchedule()
    n = 40000
    t = make_time_sampler("lognormal")(n, schedule, torch.Generator().manual_seed(3))
    ln_sigma = t.log()
    a, b = (math.log(0.002) + 1.2) / 1.2, (math.log(80.0) + 1.2) / 1.2
    mean, var = truncnorm.stats(a, b, loc=-1.2, scale=1.2, moments="mv")
    assert abs(ln_sigma.mean().item() - float(mean)) < 4 * math.sqrt(float(var) / n)
    assert abs(ln_sigma.std().item() - math.sqrt(float(var))) < 0.02
    custom = TimeSampler("lognormal", p_mean=0.5, p_std=0.3)
    assert abs(custom(n, schedule, torch.Generator().manual_seed(4)).log().mean().item() - 0.5) < 0.01


def test_discrete_indices_are_uniform_integers() -> None:
    schedule = dk.DiscreteSchedule("linear", num_steps=10)
    n = 20000
    t = make_time_sampler("discrete")(n, schedule, torch.Generator().manual_seed(0))
    idx = schedule.model_time(t)
    torch.testing.assert_close(idx, idx.round())
    counts = torch.bincount(idx.round().long(), minlength=10).double()
    assert counts.numel() == 10
    expected = n / 10
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 0.9)).all(), counts
    strat = make_time_sampler("discrete", u="stratified")(10, schedule, torch.Generator().manual_seed(1))
    assert torch.equal(schedule.model_time(strat).round().long().sort().values, torch.arange(10))
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        make_time_sampler("discrete")(4, dk.VPSchedule())


def test_dsm_loss_draws_are_reproducible_and_label_dropout_uses_the_null_label() -> None:
    schedule = dk.VPSchedule()
    seen: list[Tensor] = []

    def net(x: Tensor, c: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            seen.append(cond.clone())
        return torch.zeros_like(x)

    den = dk.Denoiser(net, schedule, "eps")
    x0 = torch.randn(4000, 2)
    labels = torch.randint(0, 3, (4000,))
    loss = DSMLoss("eps", "uniform", label_dropout=0.25, null_label=3)
    a = loss(den, x0, labels, torch.Generator().manual_seed(5))
    b = loss(den, x0, labels, torch.Generator().manual_seed(5))
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.t, b.t)
    dropped = seen[0] == 3
    assert torch.equal(seen[0][~dropped], labels[~dropped])
    assert abs(dropped.double().mean().item() - 0.25) < 0.03
    # eps prediction F = 0 has eps-error |eps|^2: loss ~ 1 per dimension
    assert abs(a.loss.item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="on class labels needs null_label"):
        DSMLoss(label_dropout=0.1)(den, x0, labels)
    # condition vectors: dropped rows become all-NaN (the networks' null token), the rest are kept
    vectors = torch.randn(4000, 2)
    DSMLoss("eps", "uniform", label_dropout=0.25)(den, x0, vectors, torch.Generator().manual_seed(5))
    gone = seen[-1].isnan()
    assert torch.equal(gone[:, 0], gone[:, 1]) and abs(gone[:, 0].double().mean().item() - 0.25) < 0.03
    assert torch.equal(seen[-1][~gone[:, 0]], vectors[~gone[:, 0]])
    with pytest.raises(ValueError, match="allowed"):
        DSMLoss(weighting="nope")
    with pytest.raises(ValueError, match="allowed"):
        DSMLoss(time="nope")


def test_bf16_network_output_is_cast_back() -> None:
    """Under bf16 autocast the network runs in bf16 but the loss is computed in the data's dtype."""
    schedule = dk.VPSchedule()
    net = nn.Linear(2, 2)
    den = dk.Denoiser(lambda x, c, cond=None: net(x), schedule, "eps")  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DSMLoss()(den, torch.randn(16, 2), generator=torch.Generator().manual_seed(0))
    assert out.per_sample.dtype == torch.float32
    assert np.isfinite(out.loss.item())
