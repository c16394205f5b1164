"""The default sampler (``DEFAULT_SOLVER`` at ``DEFAULT_NFE``) against the exact oracle on every schedule."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.solvers import DEFAULT_NFE, DEFAULT_SOLVER, make_solver
from diffusekit.tuned import DEFAULT_GRID

from .conftest import all_schedules


def _rotated_anisotropic(schedule: dk.NoiseSchedule, scale: float = 1.0) -> GaussianMixture:
    """Two 4-d modes with stds spanning 20x (0.01-0.2) along a random rotation, times ``scale``."""
    g = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    means = 2 * torch.rand(2, 4, generator=g, dtype=torch.float64) - 1
    stds = torch.tensor([0.01, 0.03, 0.08, 0.2], dtype=torch.float64).expand(2, 4)
    return GaussianMixture(scale * means, scale * stds, schedule, weights=[0.4, 0.6], rotation=q)


def _spread(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Per eigen-direction within-mode std / true std (nearest mode)."""
    y = mix.to_frame(x.double())
    means = mix.to_frame(mix.means)
    comp = (((y[:, None] - means) ** 2 / mix.variances).sum(-1)).argmin(1)
    z = (y - means[comp]) / mix.variances[comp].sqrt()
    return z.pow(2).mean(0).sqrt()


def test_default_is_a_deterministic_ode_sampler_on_its_grid() -> None:
    solver = make_solver(DEFAULT_SOLVER)
    assert not solver.stochastic and solver.default_grid == DEFAULT_GRID
    mix = _rotated_anisotropic(dk.EDMSchedule())
    x_T = mix.sample(64, seed=1, t=mix.schedule.t_max)
    a = dk.sample(mix, solver, x_T, steps=DEFAULT_NFE, progress=False, dtype=torch.float64)
    b = dk.sample(mix, solver, x_T, steps=DEFAULT_NFE, seed=7, progress=False, dtype=torch.float64)
    assert a.nfe == DEFAULT_NFE
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["discrete_linear", "discrete_cosine", "discrete_ztsnr", "vp", "ve", "edm", "flow"])
def test_default_follows_the_exact_ode_on_full_covariance_modes(name: str) -> None:
    """At DEFAULT_NFE the end points are near the exact PF-ODE's and no eigen-direction of the modes
    is far off its spread; at twice that the sampler has converged (error / 5, spread within 5%).
    The narrowest std, 0.01, is at or below most schedules' smallest sigma / alpha, where the x0
    jump would collapse it."""
    mix = _rotated_anisotropic(all_schedules()[name])
    x_T = mix.sample(2000, seed=2, t=mix.schedule.t_max)
    ref = mix.ode_solution(x_T, mix.schedule.t_max, rtol=1e-8, atol=1e-8)
    errors = []
    for nfe, spread_tol in ((DEFAULT_NFE, 0.25), (2 * DEFAULT_NFE, 0.05)):
        x = dk.sample(mix, make_solver(DEFAULT_SOLVER), x_T, steps=nfe, progress=False, dtype=torch.float64).x
        errors.append(float((x - ref).pow(2).mean().sqrt()))
        spread = _spread(mix, x)
        assert bool(((spread - 1).abs() < spread_tol).all()), (nfe, spread)
    assert errors[0] < 0.04 and errors[1] < errors[0] / 5, errors


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_default_holds_for_scaled_data_without_being_told_the_scale(scale: float) -> None:
    """Data scaled by 0.1 and 10 on the EDM schedule: the error relative to the scale stays small."""
    mix = _rotated_anisotropic(dk.EDMSchedule(), scale)
    x_T = mix.sample(2000, seed=4, t=mix.schedule.t_max)
    x = dk.sample(mix, make_solver(DEFAULT_SOLVER), x_T, steps=DEFAULT_NFE, progress=False, dtype=torch.float64).x
    ref = mix.ode_solution(x_T, mix.schedule.t_max, rtol=1e-8, atol=1e-8)
    assert float((x - ref).pow(2).mean().sqrt()) < 0.04 * scale
    assert bool(((_spread(mix, x) - 1).abs() < 0.1).all())


def test_gaussian_end_keeps_modes_narrower_than_the_schedule_resolves() -> None:
    """Modes of std 0.003 on the DDPM schedule (smallest sigma / alpha 0.01): the default keeps their
    spread, the same UniPC with its x0 jump collapses it."""
    schedule = dk.DiscreteSchedule("linear", 1000)
    g = torch.Generator().manual_seed(5)
    mix = GaussianMixture(2 * torch.rand(3, 8, generator=g, dtype=torch.float64) - 1, 0.003, schedule)
    x_T = mix.sample(1000, seed=6, t=schedule.t_max)
    grid = dk.make_grid(DEFAULT_GRID, schedule, DEFAULT_NFE)
    default = dk.sample(mix, make_solver(DEFAULT_SOLVER), x_T, grid=grid, progress=False, dtype=torch.float64).x
    jump = dk.sample(mix, make_solver("unipc", order=4), x_T, grid=grid, progress=False, dtype=torch.float64).x
    assert abs(float(_spread(mix, default).mean()) - 1) < 0.05
    assert float(_spread(mix, jump).mean()) < 0.6
