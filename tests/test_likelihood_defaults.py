"""The ODE likelihood's defaults on the exact oracle: error estimate, error bars, NFE, VE entry, bits/dim."""

from __future__ import annotations

import math

import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.likelihood import (
    bits_per_dim_from_log_p,
    dequantized_bits_per_dim,
    ode_log_likelihood,
    ode_log_likelihood_ve,
)
from diffusekit.oracle import GaussianMixture
from diffusekit.parameterization import Prediction


def correlated_mixture(schedule: dk.NoiseSchedule, dim: int = 6, seed: int = 8) -> GaussianMixture:
    """Separated modes: off-diagonal Jacobians where they merge, so Hutchinson has real variance."""
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(2 * torch.randn(4, dim, generator=g, dtype=torch.float64), [0.2, 0.5, 0.3, 0.05], schedule)


def exact_prior(mix: GaussianMixture):
    return lambda z: mix.log_prob(z, t=mix.schedule.t_max)


def test_quadrature_error_estimate_bounds_the_error() -> None:
    """Exact trace, accurate path: the only error is the quadrature's, and once the panels resolve
    the narrowest mode (65 nodes here) its estimate bounds it on both schedules. (With 17-45 nodes
    both rules can miss the same unresolved structure: the estimate is then too small.)"""
    for schedule in (dk.EDMSchedule(), dk.VPSchedule()):
        mix = correlated_mixture(schedule, dim=3)
        x = mix.sample(32, seed=2, t=schedule.t_min)
        truth = mix.log_prob(x, t=schedule.t_min)
        res = ode_log_likelihood(mix, x, divergence="exact", prior=exact_prior(mix), max_nodes=65,
                                 tol=1e-6, rtol=1e-8, atol=1e-8)
        err = (res.log_p - truth).abs()
        assert res.nodes == 65
        assert bool((err <= res.quadrature_error + 1e-6).all()), (err, res.quadrature_error)
        assert float(res.quadrature_error.max()) < 50 * float(err.max()) + 1e-3  # not vacuous


def test_refinement_meets_the_tolerance() -> None:
    """Refinement stops once 99% of the samples (here: all 32) have an estimate within QUAD_SHARE * tol."""
    from diffusekit.likelihood.ode import QUAD_SHARE

    schedule = dk.VPSchedule()
    mix = correlated_mixture(schedule, dim=3)
    x = mix.sample(32, seed=3, t=schedule.t_min)
    res = ode_log_likelihood(mix, x, divergence="exact", prior=exact_prior(mix), tol=1e-3, max_nodes=97)
    assert res.nodes < 97 and float(res.quadrature_error.max()) <= QUAD_SHARE * 1e-3 * 3
    assert float(((res.log_p - mix.log_prob(x, t=schedule.t_min)).abs() / 3).max()) < 1e-3


def test_defect_correction_removes_the_solver_error() -> None:
    """A loose path (rtol 1e-2): corrected, the estimate stays on the truth; uncorrected it does not."""
    schedule = dk.EDMSchedule()
    mix = correlated_mixture(schedule, dim=3)
    x = mix.sample(32, seed=4, t=schedule.t_min)
    truth = mix.log_prob(x, t=schedule.t_min)
    kw = dict(divergence="exact", prior=exact_prior(mix), rtol=1e-2, atol=1e-2, tol=1e-4)
    fixed = (ode_log_likelihood(mix, x, **kw).log_p - truth).abs().max() / 3
    raw = (ode_log_likelihood(mix, x, defect_correction=False, **kw).log_p - truth).abs().max() / 3
    assert float(fixed) < 5e-3 and float(raw) > 10 * float(fixed), (fixed, raw)


def test_standard_error_covers_the_truth() -> None:
    """Hutchinson at the defaults on a 16-d mixture: >= 97% of 128 samples within 3 reported SE
    (a 99% claim needs the benchmark's populations), and the error bars are not vacuous."""
    schedule = dk.EDMSchedule()
    mix = correlated_mixture(schedule, dim=16, seed=9)
    x = mix.sample(128, seed=5, t=schedule.t_min)
    res = ode_log_likelihood(mix, x, divergence="hutchinson", prior=exact_prior(mix), seed=1)
    err = res.log_p - mix.log_prob(x, t=schedule.t_min)
    assert float((err.abs() <= 3 * res.std_error).double().mean()) >= 0.97
    assert float((res.std_error / 16).median()) < 5e-3


class _Counting:
    """Counts model forward passes per sample: rows seen / batch size (a JVP batch of P x B rows is P)."""

    def __init__(self, inner: GaussianMixture, batch: int) -> None:
        self.inner, self.batch, self.calls = inner, batch, 0
        self.schedule = inner.schedule

    def __call__(self, x: Tensor, t, cond=None) -> Prediction:
        self.calls += x.shape[0] // self.batch
        return self.inner(x, t, cond)


def test_nfe_counts_every_model_call() -> None:
    schedule = dk.VPSchedule()
    mix = correlated_mixture(schedule, dim=6)
    x = mix.sample(8, seed=6, t=schedule.t_min)
    for kw in ({"mode": "reverse"}, {"mode": "forward"}, {"mode": "forward", "quadrature": 8},
               {"mode": "forward", "quadrature": None, "probes": 3}, {"mode": "forward", "divergence": "exact"}):
        model = _Counting(mix, 8)
        res = ode_log_likelihood(model, x, divergence=kw.pop("divergence", "hutchinson"), **kw)
        assert res.nfe == model.calls, (kw, res.nfe, model.calls)
        if kw["mode"] == "forward":
            assert res.vjps == 0
    model = _Counting(mix, 8)
    res = ode_log_likelihood(model, x, divergence="hutchinson", mode="reverse")
    assert res.vjps > res.nodes  # probes are pullbacks, counted apart from the forward passes


def test_ve_entry_equals_the_vp_core() -> None:
    """D(x, sigma) -> x0 on data-space x: the same numbers as the EDM-schedule denoiser."""
    schedule = dk.EDMSchedule()
    mix = correlated_mixture(schedule, dim=6)
    x = mix.sample(16, seed=7, t=schedule.t_min)
    ref = ode_log_likelihood(mix, x, seed=3)
    got = ode_log_likelihood_ve(lambda xx, s: mix(xx, s).x0, x, schedule.t_min, schedule.t_max, seed=3)
    torch.testing.assert_close(got.log_p, ref.log_p, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.std_error, ref.std_error, rtol=0, atol=1e-6)
    assert got.nfe == ref.nfe


def test_bits_per_dim_has_the_data_scaling_term() -> None:
    """bits/dim of the result = dequantized_bits_per_dim's for the same draw (uniform dequantization)."""
    schedule = dk.VPSchedule()
    mix = correlated_mixture(schedule, dim=3)
    k = torch.randint(0, 256, (8, 3), generator=torch.Generator().manual_seed(0)).double()
    seen = []

    def log_prob(xx: Tensor) -> Tensor:
        seen.append(ode_log_likelihood(mix, xx, divergence="exact"))
        return seen[-1].log_p

    deq = dequantized_bits_per_dim(log_prob, k, n_bits=8)
    torch.testing.assert_close(seen[0].bits_per_dim, deq.bits_per_dim)
    torch.testing.assert_close(seen[0].bits_per_dim, bits_per_dim_from_log_p(seen[0].log_p, 3, 8, -1.0, 1.0))
    plain = ode_log_likelihood(mix, torch.zeros(2, 3, dtype=torch.float64), divergence="exact", n_bits=None)
    torch.testing.assert_close(plain.bits_per_dim, -plain.log_p / (3 * math.log(2)))


def test_hutchpp_deflation_is_exact_on_identity_plus_low_rank() -> None:
    """J = c I + U U^T (rank 3 < sketch 4): the deflated estimator is unbiased for tr J and its
    variance is below plain Rademacher Hutchinson's for every sample (2-3x here: the centring c is
    itself estimated from the sketch, and its error leaks c - c_hat times span(Q) into the probes)."""
    from diffusekit.likelihood.ode import _deflate

    b, d = 5, 20
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, 3, generator=g, dtype=torch.float64)
    c = torch.rand(b, generator=g, dtype=torch.float64) + 0.5
    mat = c[:, None, None] * torch.eye(d, dtype=torch.float64) + u @ u.transpose(1, 2)

    def apply(v: Tensor, vectors: bool = False) -> Tensor:
        jv = torch.einsum("bij,pbj->pbi", mat, v)
        return jv if vectors else (jv * v).sum(2).transpose(0, 1)

    def rademacher(n: int) -> Tensor:
        return torch.randint(0, 2, (n, b, d), generator=g).double() * 2 - 1

    exact, probe = _deflate(apply, rademacher(4), d)
    trace = mat.diagonal(dim1=1, dim2=2).sum(1)
    deflated, plain = probe(rademacher(4000)), apply(rademacher(4000))
    z = (exact + deflated.mean(1) - trace) / (deflated.std(1) / math.sqrt(4000))
    assert float(z.abs().max()) < 4, z
    assert bool((deflated.var(1) < 0.6 * plain.var(1)).all()), (deflated.var(1), plain.var(1))


def test_panel_rule_degrees_and_refinement() -> None:
    """Boole is exact to degree 5 on any panel set; the error estimate (null rules of degree 3 and 2)
    vanishes to degree 2 and not at degree 3; halving a panel keeps every node and adds four."""
    import numpy as np

    from diffusekit.likelihood.quadrature import PanelRule

    rule = PanelRule(-1.0, 2.0, panels=2, depth=2)
    for _ in range(2):
        x = rule.grid
        for deg in range(6):
            vals = {i: x[i] ** deg for i in rule.nodes()}
            integral = sum(w * vals[i] for i, w in rule.weights().items())
            assert abs(integral - (2.0 ** (deg + 1) - (-1.0) ** (deg + 1)) / (deg + 1)) < 1e-12
            errors = rule.panel_errors(vals)
            assert (max(errors) < 1e-12) == (deg <= 2), (deg, errors)
        before = set(rule.nodes())
        added = rule.split(0)
        assert len(added) == 4 and before | set(added) == set(rule.nodes())
    assert not PanelRule(0.0, 1.0, panels=1, depth=0).can_split(0)


def test_error_estimate_survives_a_vanishing_fourth_difference() -> None:
    """A bump one node spacing wide near a node: its fourth difference nearly cancels, so |Boole -
    Simpson| is 2-4x below Boole's error; the degree-2 null rules (third differences) bound it."""
    import numpy as np

    from diffusekit.likelihood.quadrature import BOOLE, SIMPSON, PanelRule

    rule = PanelRule(0.0, 4.0, panels=1, depth=0)
    for c in (0.75, 1.0, 3.0, 3.25):
        vals = {i: math.exp(-0.5 * (x - c) ** 2) for i, x in enumerate(rule.grid)}
        boole = sum(w * vals[i] for i, w in rule.weights().items())
        exact = math.sqrt(math.pi / 2) * (math.erf((4 - c) / math.sqrt(2)) + math.erf(c / math.sqrt(2)))
        simpson_gap = abs(float(np.dot((BOOLE - SIMPSON) * 4, [vals[i] for i in range(5)])))
        err = abs(boole - exact)
        assert err > 2 * simpson_gap and float(rule.panel_errors(vals)[0]) >= err, (c, err, simpson_gap)
    assert np.isclose(sum(PanelRule(0.0, 3.0).weights().values()), 3.0)


def test_t_inflation_restores_three_se_coverage_with_few_probes() -> None:
    """A stratified mean of normal draws, 3 per stratum: +-3 plain SE covers ~97-98%; +-3 inflated SE
    (Welch-Satterthwaite degrees of freedom, Student-t) covers 99.73% within Monte-Carlo error."""
    from diffusekit.likelihood.ode import _t_inflation

    g = torch.Generator().manual_seed(0)
    b, n = 20000, 3
    scales = [1.0, 0.5, 2.0]
    draws = [s * torch.randn(b, n, generator=g, dtype=torch.float64) for s in scales]
    terms = [d.var(1) / n for d in draws]
    se = sum(terms).sqrt()
    err = sum(d.mean(1) for d in draws).abs()
    plain = float((err <= 3 * se).double().mean())
    k = _t_inflation(terms, [n] * len(scales))
    inflated = float((err <= 3 * k * se).double().mean())
    assert plain < 0.985 and bool((k >= 1).all()), plain
    assert abs(inflated - 0.9973) < 0.002, inflated
