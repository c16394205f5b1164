"""Shared fixtures: small exact oracles on every schedule."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.testing import GaussianMixture

torch.set_num_threads(1)  # tests run in parallel under pytest-xdist


def all_schedules() -> dict[str, dk.NoiseSchedule]:
    return {
        "discrete_linear": dk.DiscreteSchedule("linear"),
        "discrete_cosine": dk.DiscreteSchedule("cosine"),
        "discrete_scaled_linear": dk.DiscreteSchedule("scaled_linear"),
        "discrete_sigmoid": dk.DiscreteSchedule("sigmoid"),
        "discrete_ztsnr": dk.DiscreteSchedule("linear", zero_terminal_snr=True),
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
