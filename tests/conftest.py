"""Shared fixtures: small exact oracles on every schedule."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture

torch.set_num_threads(1)  # tests run in parallel under pytest-xdist


def all_schedules() -> dict[str, dk.NoiseSchedule]:
    return {
        "discrete_linear": dk.DiscreteSchedule("linear"),
        "discrete_cosine": dk.DiscreteSchedule("cosine"),
        "discrete_scaled_linear": dk.DiscreteSchedule("scaled_linear"),
        "discrete_sigmoid": dk.DiscreteSchedule("sigmoid"),
        "discrete_ztsnr": dk.DiscreteSchedule("linear", zero_terminal_snr=True),
        "discrete_log_sigma": dk.DiscreteSchedule("linear", interpolation="log_sigma"),
        "vp": dk.VPSchedule(),
        "subvp": dk.SubVPSchedule(),
        "ve": dk.VESchedule(),
        "edm": dk.EDMSchedule(),
        "flow": dk.FlowSchedule(),
    }


def smooth_mixture(schedule: dk.NoiseSchedule, dim: int = 4, seed: int = 0) -> GaussianMixture:
    """A wide, smooth mixture: solvers reach their asymptotic order quickly on it."""
    g = torch.Generator().manual_seed(seed)
    means = 0.7 * torch.randn(3, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, [0.5, 0.7, 0.6], schedule)


@pytest.fixture(params=list(all_schedules()))
def schedule(request: pytest.FixtureRequest) -> dk.NoiseSchedule:
    return all_schedules()[request.param]


def count_noise(solver: dk.Solver, den: dk.Denoiser, steps: int) -> tuple[int, int]:
    """(noise draws, NFE) of one run."""
    drawn = [0]

    class Spy(dk.Solver):
        name = solver.name
        default_grid = solver.default_grid

        def init_state(self, grid, schedule):  # type: ignore[no-untyped-def]
            return solver.init_state(grid, schedule)

        def step(self, ctx, x, step, state):  # type: ignore[no-untyped-def]
            def noise() -> torch.Tensor:
                drawn[0] += 1
                return ctx.noise()

            return solver.step(dk.StepContext(ctx.model, ctx.schedule, noise), x, step, state)

    sol = dk.sample(den, Spy(), shape=(2,), batch=3, steps=steps, progress=False)
    return drawn[0], sol.nfe
