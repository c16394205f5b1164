"""The sampling loop and the first samplers (DDPM, DDIM) against the exact oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture

from .conftest import all_schedules, smooth_mixture


def fitted_order(steps: list[int], errors: list[float]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("name", ["discrete_linear", "discrete_ztsnr", "vp", "subvp", "ve", "edm", "flow"])
def test_ddim_converges_to_the_ode_solution_with_order_one(name: str) -> None:
    schedule = all_schedules()[name]
    mix = smooth_mixture(schedule)
    x_T = mix.sample(64, seed=1, t=schedule.t_max)
    ref = mix.ode_solution(x_T, schedule.t_max)
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        grid = dk.make_grid("uniform_lambda", schedule, n)
        x = dk.sample(mix, dk.DDIM(), x_T, grid=grid, progress=False).x
        errors.append((x - ref).pow(2).mean().sqrt().item())
    assert errors[-1] < 0.05
    assert abs(fitted_order(steps, errors) - 1.0) < 0.3, errors


def _mixture_2d(schedule: dk.NoiseSchedule) -> GaussianMixture:
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    return GaussianMixture(means, [0.3, 0.4, 0.35], schedule)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_samples_have_the_true_log_likelihood(variance: str) -> None:
    schedule = dk.DiscreteSchedule()
    mix = _mixture_2d(schedule)
    n = 4000
    x = dk.sample(mix, dk.DDPM(variance), shape=(2,), batch=n, steps=1000, seed=0, progress=False).x
    exact = mix.log_prob(mix.sample(n, seed=1))
    got = mix.log_prob(x)
    se = math.sqrt(exact.var().item() / n + got.var().item() / n)
    assert abs(got.mean().item() - exact.mean().item()) < 3 * se
    torch.testing.assert_close(x.double().mean(0), mix.sample(n, seed=2).mean(0), atol=0.06, rtol=0)


def test_ddim_eta_one_is_ddpm_small_variance() -> None:
    schedule = dk.DiscreteSchedule()
    mix = _mixture_2d(schedule)
    grid = dk.make_grid("uniform_t", schedule, 20)
    a = dk.sample(mix, dk.DDIM(eta=1.0), shape=(2,), batch=8, grid=grid, seed=3, progress=False).x
    b = dk.sample(mix, dk.DDPM("small"), shape=(2,), batch=8, grid=grid, seed=3, progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_sample_does_not_depend_on_its_batch() -> None:
    mix = _mixture_2d(dk.VPSchedule())
    small = dk.sample(mix, dk.DDPM(), shape=(2,), batch=3, steps=20, seed=7, progress=False).x
    big = dk.sample(mix, dk.DDPM(), shape=(2,), batch=50, steps=20, seed=7, progress=False).x
    torch.testing.assert_close(small, big[:3])
    other = dk.sample(mix, dk.DDPM(), shape=(2,), batch=3, steps=20, seed=8, progress=False).x
    assert not torch.allclose(small, other)


def test_nfe_trajectory_and_no_noise_when_deterministic() -> None:
    mix = _mixture_2d(dk.EDMSchedule())
    drawn = []

    class Spy(dk.DDIM):
        def step(self, ctx, x, step, state):  # type: ignore[override]
            def noise() -> torch.Tensor:
                drawn.append(1)
                return torch.zeros_like(x)

            return super().step(dk.StepContext(ctx.model, ctx.schedule, noise), x, step, state)

    sol = dk.sample(mix, Spy(), shape=(2,), batch=5, steps=12, save_trajectory=True, progress=False)
    assert sol.nfe == 12 and sol.grid.n_steps == 12 and not drawn
    assert sol.trajectory is not None and sol.trajectory.shape == (13, 5, 2)
    assert sol.x0_trajectory is not None and sol.x0_trajectory.shape == (12, 5, 2)
    torch.testing.assert_close(sol.trajectory[-1], sol.x)


def test_images_and_any_shape() -> None:
    schedule = dk.DiscreteSchedule()
    mix = GaussianMixture(torch.zeros(2, 16, dtype=torch.float64), [0.5, 0.2], schedule, shape=(1, 4, 4))
    sol = dk.sample(mix, dk.DDIM(), shape=(1, 4, 4), batch=6, steps=5, progress=False)
    assert sol.x.shape == (6, 1, 4, 4) and torch.isfinite(sol.x).all()


def test_bad_input() -> None:
    mix = _mixture_2d(dk.VPSchedule())
    with pytest.raises(ValueError, match="steps must be a positive integer, got -2"):
        dk.sample(mix, dk.DDIM(), shape=(2,), batch=2, steps=-2, progress=False)
    with pytest.raises(ValueError, match="give x_T, or shape and batch"):
        dk.sample(mix, dk.DDIM(), steps=2, progress=False)
    with pytest.raises(ValueError, match="unknown solver 'ddim2'; allowed:.*ddim"):
        dk.make_solver("ddim2")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got -1"):
        dk.DDIM(eta=-1)
    with pytest.raises(ValueError, match=r"variance must be one of \['small', 'large', 'learned', 'analytic', 'sn', 'npr'\] or a ReverseVariance, got 'medium'"):
        dk.DDPM("medium")
    with pytest.raises(ValueError, match=r"t=0.0005 is outside \[t_min, t_max\] = \[0.001, 1\]"):
        mix(torch.zeros(1, 2), 0.0005)
