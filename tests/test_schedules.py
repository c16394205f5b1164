"""Identities every noise schedule and step grid must satisfy."""

from __future__ import annotations

import math

import pytest
import torch

import diffusekit as dk
from diffusekit.schedules import GRIDS, make_betas

from .conftest import all_schedules


def interior_times(s: dk.NoiseSchedule, n: int = 101) -> torch.Tensor:
    lo, hi = s.t_min, s.t_max
    return torch.linspace(lo, hi, n, dtype=torch.float64)[1:-1]


def test_variance_preserving_where_it_should(schedule: dk.NoiseSchedule) -> None:
    alpha, sigma = schedule.alpha_sigma(interior_times(schedule))
    if isinstance(schedule, (dk.VPSchedule, dk.DiscreteSchedule)) and not isinstance(schedule, dk.SubVPSchedule):
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-12)
    elif isinstance(schedule, dk.SubVPSchedule):
        torch.testing.assert_close(sigma, 1 - alpha**2, rtol=0, atol=1e-12)
        assert bool((alpha**2 + sigma**2 < 1).all())
    elif isinstance(schedule, dk.FlowSchedule):
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha), rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(alpha, torch.ones_like(alpha))


def test_log_snr_is_decreasing_and_inverts(schedule: dk.NoiseSchedule) -> None:
    t = interior_times(schedule)
    lam = schedule.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(schedule.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-9)


def test_sde_coefficients_reproduce_marginal_variance(schedule: dk.NoiseSchedule) -> None:
    """Integrate the moment ODEs of dx = f x dt + g dW for x0 = 1 (a point mass):
    m' = f m and var' = 2 f var + g^2, i.e. m = m0 exp(int f) and
    var = m^2 (var0 / m0^2 + int g^2 / m^2). They must give alpha(t) and sigma(t)^2."""
    lo = schedule.t_min + 0.05 * (schedule.t_max - schedule.t_min)
    hi = schedule.t_max - 0.05 * (schedule.t_max - schedule.t_min)
    t = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
    f, g2 = schedule.drift_diffusion(t)
    alpha, sigma = schedule.alpha_sigma(t)
    cum = lambda y: torch.cat([y.new_zeros(1), torch.cumulative_trapezoid(y, t)])  # noqa: E731
    m = alpha[0] * torch.exp(cum(f))
    var = m**2 * (sigma[0] ** 2 / alpha[0] ** 2 + cum(g2 / m**2))
    # discrete schedules have a kink per training step (f is piecewise constant)
    rtol = 1e-5 if isinstance(schedule, dk.DiscreteSchedule) else 1e-7
    torch.testing.assert_close(m, alpha, rtol=rtol, atol=1e-9)
    torch.testing.assert_close(var, sigma**2, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_discrete_matches_alphas_cumprod(kind: str) -> None:
    s = dk.DiscreteSchedule(kind)
    abar = torch.cumprod(1 - make_betas(kind), 0)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha**2, abar, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.model_time(t), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-9)


def test_discrete_linear_is_ddpm() -> None:
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 over 1000 steps."""
    betas = make_betas("linear")
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and len(betas) == 1000


def test_zero_terminal_snr() -> None:
    s = dk.DiscreteSchedule("scaled_linear", zero_terminal_snr=True)
    one = torch.tensor([1.0], dtype=torch.float64)
    assert s.log_snr(one).item() == -math.inf
    alpha, sigma = s.alpha_sigma(one)
    assert alpha.item() == 0.0 and sigma.item() == 1.0
    t = torch.linspace(s.t_min, 1, 2001, dtype=torch.float64)
    for v in (*s.alpha_sigma(t), s.log_snr(t)[:-1], s.t_of_log_snr(s.log_snr(t))):
        assert not bool(v.isnan().any())
    assert s.t_of_log_snr(torch.tensor([-math.inf], dtype=torch.float64)).item() == 1.0
    # the first alpha is unchanged by the rescale
    torch.testing.assert_close(s.alphas_cumprod[0], dk.DiscreteSchedule("scaled_linear").alphas_cumprod[0])
    for name in GRIDS.names():
        g = dk.make_grid(name, s, 10)
        assert not bool(g.t.isnan().any() | g.alpha.isnan().any())
        assert g.alpha[0].item() == 0.0 or name == "leading"  # leading spacing starts below t_max


def test_flow_prior_is_exact() -> None:
    s = dk.FlowSchedule()
    assert s.prior_std() == 1.0
    assert s.log_snr(torch.tensor(1.0, dtype=torch.float64)).item() == -math.inf


def test_prior_log_prob_is_gaussian(schedule: dk.NoiseSchedule) -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    s = schedule.prior_std()
    expected = torch.distributions.Normal(0.0, s).log_prob(x).sum(1)
    torch.testing.assert_close(schedule.prior_log_prob(x), expected)


def test_add_noise_broadcasts_any_shape(schedule: dk.NoiseSchedule) -> None:
    x0 = torch.randn(3, 2, 5, 7)
    t = torch.full((3,), 0.5 * (schedule.t_min + schedule.t_max), dtype=torch.float64)
    out = schedule.add_noise(x0, t, torch.zeros_like(x0))
    alpha, _ = schedule.alpha_sigma(t)
    torch.testing.assert_close(out, alpha[:, None, None, None].float() * x0)


@pytest.mark.parametrize("name", ["uniform_t", "quadratic_t", "uniform_lambda", "karras", "tuned_lambda", "tuned_warp"])
def test_grids_are_decreasing_with_clean_end(schedule: dk.NoiseSchedule, name: str) -> None:
    for n in (1, 2, 3, 10, 57):
        g = dk.make_grid(name, schedule, n)
        assert g.n_steps == n and g.t.dtype == torch.float64
        assert g.t[0].item() == schedule.t_max
        assert g.ends_at_zero and g.sigma[-1].item() == 0 and g.alpha[-1].item() == 1
        lam = g.lam
        assert bool((lam[1:] > lam[:-1]).all()), (name, n, lam)
        g2 = dk.make_grid(name, schedule, n, to_zero=False)
        assert g2.n_steps == n and g2.t[-1].item() == pytest.approx(schedule.t_min)


def test_uniform_lambda_is_uniform() -> None:
    s = dk.VPSchedule()
    g = dk.make_grid("uniform_lambda", s, 8, to_zero=False)
    d = g.lam.diff()
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-9, atol=1e-9)


def test_karras_matches_formula() -> None:
    s = dk.EDMSchedule()
    g = dk.make_grid("karras", s, 6, rho=7.0)
    i = torch.arange(6, dtype=torch.float64) / 5
    expected = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(g.sigma[:-1], expected, rtol=1e-12, atol=0)


def test_discrete_spacings_match_diffusers_conventions() -> None:
    s = dk.DiscreteSchedule()
    idx = lambda g: (g.t[:-1] * 1000 - 1).round().long().tolist()  # noqa: E731
    assert idx(dk.make_grid("leading", s, 10)) == list(range(900, -1, -100))
    assert idx(dk.make_grid("trailing", s, 10)) == list(range(999, 0, -100))
    assert idx(dk.make_grid("linspace", s, 4)) == [999, 666, 333, 0]
    # every grid's next point is the grid's own next point, also when N does not divide 1000
    g = dk.make_grid("trailing", s, 7)
    assert g.n_steps == 7 and len(set(g.t.tolist())) == 8


def test_bad_input_messages() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*allowed: discrete, edm, flow"):
        dk.make_schedule("cosin")
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'; allowed: linear"):
        dk.DiscreteSchedule("quadratic")
    with pytest.raises(ValueError, match="n_steps must be a positive integer, got -3"):
        dk.make_grid("uniform_t", dk.VPSchedule(), -3)
    with pytest.raises(ValueError, match=r"t=1.5 is outside \[t_min, t_max\] = \[0.001, 1\]"):
        dk.VPSchedule().validate_t(1.5)
    with pytest.raises(ValueError, match="unknown step grid 'cosine'; allowed:"):
        dk.make_grid("cosine", dk.VPSchedule(), 5)
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        dk.make_grid("trailing", dk.EDMSchedule(), 5)
    with pytest.raises(ValueError, match="exceed the schedule's 1000 training steps"):
        dk.make_grid("leading", dk.DiscreteSchedule(), 1500)


def test_registry_builds_each_schedule() -> None:
    for name in ("discrete", "vp", "subvp", "ve", "edm", "flow"):
        assert isinstance(dk.make_schedule(name), dk.NoiseSchedule)
    assert set(all_schedules())  # the fixture covers them
