"""Why no first-order ODE solver keeps a sharp mode's width at 10-20 calls, whatever its grid.

For one Gaussian mode N(mu, s^2 I), write each noise level as the vector (alpha s, sigma) =
sqrt(v) (cos theta, sin theta), v = alpha^2 s^2 + sigma^2. The exact probability-flow ODE scales
the offset x - alpha mu by sqrt(v1 / v0); one DDIM step (the first-order exponential integrator,
Song et al. 2021 eq. 12 with eta = 0; Euler in EDM's x / alpha coordinates is the same map)
scales it by (alpha1 alpha0 s^2 + sigma1 sigma0) / v0 = sqrt(v1 / v0) cos(theta0 - theta1).
So after a whole grid the within-mode spread relative to the truth is exactly the product of
cos(delta theta) over the steps, and, log cos being concave, at most cos(Theta / N)^N for N
steps through an angle Theta. A mode much narrower than sigma_max and wider than
sigma_min / alpha has Theta close to pi / 2, and cos(pi / 2N)^N = 0.88 at N = 10 and 0.94 at
N = 20: no grid makes DDIM (or Euler) sound within 5% below 25 steps. This is the measured
0.6-0.9 of ``benchmarks/RESULTS.md`` ("Every solver on its own default grid").
"""

from __future__ import annotations

import math

import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.schedules.grids import Grid

from .conftest import all_schedules


def _angles(schedule: dk.NoiseSchedule, t: torch.Tensor, s: float) -> torch.Tensor:
    alpha, sigma = schedule.alpha_sigma(t)
    return torch.atan2(sigma, alpha * s)


@pytest.mark.parametrize("name", list(all_schedules()))
def test_ddim_shrinks_a_gaussian_mode_by_the_cosines_of_its_angle_steps(name: str) -> None:
    schedule = all_schedules()[name]
    s, steps = 0.05, 10
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(1, 4, generator=g, dtype=torch.float64) * 2 - 1
    mode = GaussianMixture(mu, s, schedule)
    x_T = mode.sample(64, seed=1, t=schedule.t_max)
    inner = torch.sort(torch.rand(steps - 1, generator=g, dtype=torch.float64), descending=True).values
    t = torch.cat([torch.tensor([schedule.t_max], dtype=torch.float64),
                   schedule.t_min + inner * (schedule.t_max - schedule.t_min)])
    grid = Grid.from_times(schedule, t)  # a random grid of 10 steps, the last to clean data
    x = dk.sample(mode, dk.DDIM(), x_T, grid=grid, progress=False, dtype=torch.float64).x
    exact = mode.ode_solution(x_T, schedule.t_max)
    theta = torch.cat([_angles(schedule, t, s), torch.zeros(1, dtype=torch.float64)])
    shrink = torch.cos(theta[:-1] - theta[1:]).prod()
    torch.testing.assert_close((x - mu) / (exact - mu), shrink.expand_as(x), rtol=1e-6, atol=1e-9)
    # the best any grid can do, and why the 5% spread target is out of reach below 25 steps
    theta_T = float(theta[0])
    assert float(shrink) <= math.cos(theta_T / steps) ** steps + 1e-12
    for n in (10, 15, 20):
        assert math.cos(theta_T / n) ** n < 0.95
