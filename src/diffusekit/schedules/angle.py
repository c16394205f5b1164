"""The probability-flow ODE in the angle variable, the same for every schedule.

With r = sqrt(alpha^2 + sigma^2), the angle phi = atan2(sigma, alpha) (so alpha = r cos phi,
sigma = r sin phi) and the state y = x / r, the probability-flow ODE (Song et al. 2021,
eq. 13) of any schedule becomes

    dy/dphi = cos(phi) E[eps | x] - sin(phi) E[x0 | x].

This is the ODE in EDM's coordinates (Karras et al. 2022, eq. 4 in x / alpha and
s = sigma / alpha = tan phi, where dx_hat/ds = eps) with y = cos(phi) x_hat, mapped to
the bounded interval phi in [0, pi/2]: its right-hand side is bounded for every schedule,
zero terminal SNR (alpha = 0, phi = pi/2) and clean data (phi = 0) included. The adaptive
ODE solver, the oracle's reference solution and the likelihood integrate it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import NoiseSchedule


def angle_of(alpha: float, sigma: float) -> tuple[float, float]:
    """(phi, r) = (atan2(sigma, alpha), sqrt(alpha^2 + sigma^2)) of one noise level."""
    return math.atan2(sigma, alpha), math.hypot(alpha, sigma)


def angle_at(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    """(phi, r) of ``schedule`` at time ``t``."""
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64)))
    return angle_of(alpha, sigma)


def frame_at(schedule: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(r, cos phi, sin phi) of ``schedule`` at times ``t``: x = r y, alpha = r cos phi, sigma = r sin phi."""
    alpha, sigma = schedule.alpha_sigma(t)
    r = torch.sqrt(alpha**2 + sigma**2)
    return r, alpha / r, sigma / r


def time_of_angle(schedule: NoiseSchedule, phi: Tensor) -> Tensor:
    """The time at angle ``phi``: lambda(t) = log cot phi, clamped to [t_min, t_max]."""
    phi = torch.as_tensor(phi, dtype=torch.float64)
    lam = torch.log(torch.cos(phi).clamp_min(1e-300)) - torch.log(torch.sin(phi).clamp_min(1e-300))
    return schedule.t_of_log_snr(lam).clamp(schedule.t_min, schedule.t_max)


def angle_velocity(x0: Tensor, eps: Tensor, cos: float | Tensor, sin: float | Tensor) -> Tensor:
    """dy/dphi = cos(phi) eps - sin(phi) x0 from the predictions at angle phi."""
    return cos * eps - sin * x0
