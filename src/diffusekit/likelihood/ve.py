"""The ODE likelihood for a k-diffusion-style denoiser D(x, sigma) (Karras et al. 2022, eq. 4; VE, alpha = 1).

k-diffusion's models take and return the data-space x at noise level sigma
(x = x0 + sigma eps) and its ``log_likelihood`` integrates in sigma. ``ode_log_likelihood_ve``
wraps D as a diffusekit denoiser on the EDM schedule with sigma in [sigma_min, sigma_max]
(alpha = 1, so the VP state is x itself) and calls :func:`ode_log_likelihood`: same
integrator, defaults and error bars; the result is log p_{sigma_min}(x) of the data-space x.
For a VP model with alpha != 1 seen through k-diffusion's wrapper (x_hat = x / alpha,
sigma = sigma_vp / alpha), log p of x_t is this value minus D log alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Cond
from ..parameterization import Prediction
from ..schedules.continuous import EDMSchedule
from ..utils import append_dims
from .ode import LikelihoodResult, ode_log_likelihood


class _SigmaDenoiser:
    """D(x, sigma[, cond]) -> x0 as a ``DenoiserLike`` on the EDM schedule (t = sigma)."""

    def __init__(self, denoise: Callable[..., Tensor], schedule: EDMSchedule) -> None:
        self.denoise, self.schedule = denoise, schedule

    def __call__(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        sigma = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        x0 = self.denoise(x, sigma) if cond is None else self.denoise(x, sigma, cond)
        one = torch.ones_like(sigma)
        return Prediction(x, append_dims(one, x.ndim), append_dims(sigma, x.ndim), x0=x0)


def ode_log_likelihood_ve(
    denoise: Callable[..., Tensor], x: Tensor, sigma_min: float, sigma_max: float, **options: Any
) -> LikelihoodResult:
    """log p_{sigma_min}(x) under the PF-ODE of ``denoise(x, sigma[, cond]) -> E[x0 | x]``.

    ``options`` go to :func:`ode_log_likelihood` (``cond``, ``tol``, ``probes``, ``prior``, ...);
    the default prior is the EDM schedule's N(0, (1 + sigma_max^2) I) (k-diffusion uses
    N(0, sigma_max^2 I); pass ``prior`` to match it).
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min:g} and {sigma_max:g}")
    schedule = EDMSchedule(t_min=float(sigma_min), t_max=float(sigma_max))
    return ode_log_likelihood(_SigmaDenoiser(denoise, schedule), x, **options)
