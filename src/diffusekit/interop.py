"""Interop with diffusers and k-diffusion: their networks, noise levels and grids in diffusekit terms.

A diffusers (or k-diffusion ``DiscreteEpsDDPMDenoiser``) network is discrete-time: it is
trained on the N noise levels of an alpha_bar table and called as ``net(x_t, timestep)``
with the (possibly fractional) DDPM index as timestep. Between indices both libraries
interpolate log sigma_kd = log sqrt((1 - alpha_bar) / alpha_bar) linearly in the index
(k-diffusion ``DiscreteSchedule.t_to_sigma``; diffusers ``_sigma_to_t``). So that such a
network sees its own noise levels at every time a solver picks, ``discrete_time_denoiser``
builds the ``Denoiser`` on the network's own table (``DiscreteSchedule.from_alphas_cumprod``,
matched exactly) with ``interpolation="log_sigma"``; the network's input ``c_noise`` is then
the DDPM index N t - 1 at exactly the schedule's noise level.

``noise_level_of_c_noise`` maps any network input ``c_noise`` back to (t, alpha, sigma), and
``grid_from_sigmas`` turns k-diffusion's sigmas (sigma / alpha of a variance-preserving process)
into a diffusekit ``Grid``, so a solver steps between exactly the same points as an anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .denoiser import Cond, Denoiser
from .parameterization import EDMParam, Parameterization, make_parameterization
from .schedules.base import NoiseSchedule
from .schedules.discrete import DiscreteSchedule
from .schedules.grids import Grid

#: diffusers' ``prediction_type`` -> diffusekit's parameterization
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class DiscreteTimeNetwork(nn.Module):
    """``net(x, timestep[, cond])`` as a diffusekit network ``(x, c_noise, cond) -> F``.

    The timestep is ``c_noise`` itself (the fractional DDPM index on a ``DiscreteSchedule``);
    a diffusers-style output (an object with ``.sample``, or a tuple) is unwrapped.
    """

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, c_noise: Tensor, cond: Cond = None) -> Tensor:
        out = self.net(x, c_noise) if cond is None else self.net(x, c_noise, cond)
        if hasattr(out, "sample"):
            return out.sample
        return out[0] if isinstance(out, tuple) else out


def discrete_time_denoiser(
    net: Any,
    alphas_cumprod: Tensor | Sequence[float],
    parameterization: str | Parameterization = "eps",
    interpolation: str = "log_sigma",
) -> Denoiser:
    """A ``Denoiser`` for a discrete-time network ``net(x_t, timestep)`` trained on ``alphas_cumprod``.

    The schedule is the table itself, kept exactly (e.g. ``scheduler.alphas_cumprod``), and
    interpolates log sigma between indices as diffusers and k-diffusion do, so the network is
    called with the index of the noise level every solver step assumes. ``parameterization``
    is a diffusekit name or a diffusers ``prediction_type`` ('epsilon', 'sample', 'v_prediction').
    """
    if isinstance(parameterization, str):
        parameterization = DIFFUSERS_PREDICTIONS.get(parameterization, parameterization)
    schedule = DiscreteSchedule.from_alphas_cumprod(alphas_cumprod, interpolation=interpolation)
    return Denoiser(DiscreteTimeNetwork(net), schedule, parameterization)


class NoiseLevel(NamedTuple):
    """A noise level as schedule time and the process coefficients (float64 tensors)."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor


def noise_level_of_c_noise(
    c_noise: Tensor | float, schedule: NoiseSchedule, parameterization: str | Parameterization = "eps"
) -> NoiseLevel:
    """The (t, alpha, sigma) at which a network was given ``c_noise`` (the inverse of the denoiser's map).

    eps / x0 / v / score / velocity and EDM's 'vp' / 've' columns pass the schedule's model time
    (``schedule.t_of_model_time`` inverts it); EDM's own column passes c_noise = log(sigma /
    alpha) / 4 (Karras et al. 2022, Table 1), inverted through ``schedule.t_of_log_snr``.
    """
    p = make_parameterization(parameterization) if isinstance(parameterization, str) else parameterization
    c = torch.as_tensor(c_noise, dtype=torch.float64)
    if isinstance(p, EDMParam) and p.kind == "edm":
        t = schedule.t_of_log_snr(-4.0 * c)
    elif type(p).c_noise is Parameterization.c_noise or isinstance(p, EDMParam):
        t = schedule.t_of_model_time(c)
    else:
        raise ValueError(f"cannot invert the c_noise of {type(p).__name__}")
    alpha, sigma = schedule.alpha_sigma(t)
    return NoiseLevel(t, alpha, sigma)


def k_diffusion_sigmas(schedule: DiscreteSchedule) -> Tensor:
    """k-diffusion's training sigmas s_n = sqrt((1 - alpha_bar_n) / alpha_bar_n), n = 0..N-1 (float64)."""
    abar = schedule.alphas_cumprod
    return ((1 - abar) / abar).sqrt()


def grid_from_sigmas(schedule: NoiseSchedule, s: Tensor) -> Grid:
    """A diffusekit Grid through k-diffusion's sigmas s = sigma / alpha (a final 0 is the clean end).

    alpha and sigma are taken from s itself (variance preserving: alpha = 1 / sqrt(1 + s^2)),
    so a solver steps between exactly the anchor's points; t is the schedule's time at that
    log-SNR (where the model is evaluated).
    """
    s = torch.as_tensor(s, dtype=torch.float64).flatten()
    alpha = (1 + s * s).rsqrt()
    sigma = s * alpha
    inner = s > 0
    t = torch.zeros_like(s)
    t[inner] = schedule.t_of_log_snr(-s[inner].log()).clamp(schedule.t_min, schedule.t_max)
    return Grid(t, alpha, sigma)
