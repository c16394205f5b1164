"""Noise schedules (one type for all Gaussian diffusions) and step grids."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import NoiseSchedule
from .continuous import EDMSchedule, FlowSchedule, SubVPSchedule, VESchedule, VPSchedule
from .discrete import BETA_SCHEDULES, DiscreteSchedule, make_betas, rescale_zero_terminal_snr
from .grids import GRIDS, Grid, make_grid

SCHEDULES: Registry[type[NoiseSchedule]] = Registry("schedule")
SCHEDULES.register("discrete")(DiscreteSchedule)
SCHEDULES.register("vp")(VPSchedule)
SCHEDULES.register("subvp")(SubVPSchedule)
SCHEDULES.register("ve")(VESchedule)
SCHEDULES.register("edm")(EDMSchedule)
SCHEDULES.register("flow")(FlowSchedule)


def make_schedule(name: str, **kwargs: Any) -> NoiseSchedule:
    """Build a schedule by name (``discrete``, ``vp``, ``subvp``, ``ve``, ``edm``, ``flow``)."""
    return SCHEDULES.get(name)(**kwargs)


__all__ = [
    "BETA_SCHEDULES", "DiscreteSchedule", "EDMSchedule", "FlowSchedule", "GRIDS", "Grid",
    "NoiseSchedule", "SCHEDULES", "SubVPSchedule", "VESchedule", "VPSchedule", "make_betas",
    "make_grid", "make_schedule", "rescale_zero_terminal_snr",
]
