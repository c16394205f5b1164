"""Loss weightings w(t), each defined in one canonical error space, never per parameterization.

For x_t = alpha x0 + sigma eps held fixed, a change of the network output by dF
changes the estimates by  dx0 = c_out dF  and  deps = e_out dF  (the linear maps of
``parameterization.py``), and  deps = -(alpha / sigma) dx0.  A weighting therefore
names a space and a weight; the loss multiplies ||F - F*||^2 by w |c_out|^2 (x0 space)
or w |e_out|^2 (eps space), the exact Jacobian factor. Choosing eps, x0, v, ... changes
only F, never the weighting (Kingma & Gao 2023, "Understanding diffusion objectives", sec. 2).

Weights as a multiple of the x0-space error ||x0_hat - x0||^2 (SNR = alpha^2 / sigma^2):

============  ==========================================  =====================================
name          weight on the x0 error                      source
============  ==========================================  =====================================
eps, simple   SNR             (eps space: 1)              Ho et al. 2020, L_simple
snr, x0       1                                           the x0-prediction loss
min_snr       min(SNR, gamma)                             Hang et al. 2023 (gamma = 5)
truncated_snr max(SNR, 1)                                  Salimans & Ho 2022 (distillation)
v             (alpha^2 + sigma^2)^2 / sigma^2  (VP: SNR+1)  Salimans & Ho 2022, the v-error
velocity      (alpha sigma' - sigma alpha')^2 / sigma^2   flow matching (Lipman et al. 2022)
edm           1 / sigma_data^2 + SNR                      Karras et al. 2022, lambda(sigma), eq. 8
likelihood    g(t)^2 / sigma^2 SNR  (eps space: g^2/sigma^2)  Song et al. 2021 (ML training)
============  ==========================================  =====================================

EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 is written for the scaled
coordinates x / alpha with sigma -> sigma / alpha, where it is 1 / sd^2 + alpha^2 / sigma^2.
With the likelihood weighting and t ~ U[t_min, t_max], (t_max - t_min) D / 2 times the
loss (``importance=True`` does the division by p(t) for any p) estimates the diffusion
term of the continuous-time negative ELBO, -dlambda/dt-weighted eps error (VDM, eq. 17;
Song et al. 2021, Thm. 1): g^2 / sigma^2 = -2 dlambda/dt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry
from ..schedules.base import NoiseSchedule


@dataclass(frozen=True)
class Weighting:
    """Base class: ``space`` is 'x0' or 'eps'; ``weight(t, schedule)`` is w(t) on that space's squared error."""

    name = "weighting"
    space = "x0"

    def weight(self, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        raise NotImplementedError

    def x0_weight(self, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """The same weight expressed on the x0 error (finite where sigma > 0)."""
        w = self.weight(t, schedule)
        if self.space == "x0":
            return w
        alpha, sigma = schedule.alpha_sigma(t)
        return w * (alpha / sigma) ** 2


def _snr(t: Tensor, schedule: NoiseSchedule) -> Tensor:
    alpha, sigma = schedule.alpha_sigma(t)
    return (alpha / sigma) ** 2


@dataclass(frozen=True)
class EpsWeighting(Weighting):
    """L_simple (Ho et al. 2020, eq. 14): the unweighted eps error."""

    name = "eps"
    space = "eps"

    def weight(self, t, schedule):
        return torch.ones_like(t)


@dataclass(frozen=True)
class SNRWeighting(Weighting):
    """SNR on the eps error = the unweighted x0 error."""

    name = "snr"

    def weight(self, t, schedule):
        return torch.ones_like(t)


@dataclass(frozen=True)
class MinSNRWeighting(Weighting):
    """Min-SNR-gamma (Hang et al. 2023, eq. 6): min(SNR, gamma) on the x0 error."""

    gamma: float = 5.0
    name = "min_snr"

    def weight(self, t, schedule):
        return _snr(t, schedule).clamp(max=self.gamma)


@dataclass(frozen=True)
class TruncatedSNRWeighting(Weighting):
    """Truncated SNR (Salimans & Ho 2022, sec. 4): max(SNR, 1) on the x0 error, the progressive-distillation
    loss; unlike the eps loss it keeps a weight of 1 where alpha -> 0."""

    name = "truncated_snr"

    def weight(self, t, schedule):
        return _snr(t, schedule).clamp(min=1.0)


@dataclass(frozen=True)
class VWeighting(Weighting):
    """The v error (Salimans & Ho 2022): v - v* = -((alpha^2 + sigma^2) / sigma) (x0 - x0*)."""

    name = "v"

    def weight(self, t, schedule):
        alpha, sigma = schedule.alpha_sigma(t)
        return (alpha**2 + sigma**2) ** 2 / sigma**2


@dataclass(frozen=True)
class VelocityWeighting(Weighting):
    """The flow-matching velocity error (Lipman et al. 2022): u - u* = -(det / sigma) (x0 - x0*),
    det = alpha sigma' - sigma alpha' (1 on the rectified-flow path)."""

    name = "velocity"

    def weight(self, t, schedule):
        alpha, sigma = schedule.alpha_sigma(t)
        d_alpha, d_sigma = schedule.dalpha_dsigma(t)
        return ((alpha * d_sigma - sigma * d_alpha) / sigma) ** 2


@dataclass(frozen=True)
class EDMWeighting(Weighting):
    """EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, eq. 8, Table 1)
    with sigma -> sigma / alpha: 1 / sd^2 + SNR on the x0 error."""

    sigma_data: float = 0.5
    name = "edm"

    def weight(self, t, schedule):
        return 1.0 / self.sigma_data**2 + _snr(t, schedule)


@dataclass(frozen=True)
class LikelihoodWeighting(Weighting):
    """Likelihood weighting (Song et al. 2021, "Maximum likelihood training of score-based
    diffusion models", Thm. 1): g(t)^2 on the score error = g^2 / sigma^2 on the eps error,
    with (f, g^2) from ``schedule.drift_diffusion``; g^2 / sigma^2 = -2 dlambda/dt."""

    name = "likelihood"
    space = "eps"

    def weight(self, t, schedule):
        _, g2 = schedule.drift_diffusion(t)
        _, sigma = schedule.alpha_sigma(t)
        return g2 / sigma**2


WEIGHTINGS: Registry[type[Weighting]] = Registry("loss weighting")
for _cls in (EpsWeighting, SNRWeighting, MinSNRWeighting, TruncatedSNRWeighting, VWeighting, VelocityWeighting, EDMWeighting, LikelihoodWeighting):
    WEIGHTINGS.register(_cls.name)(_cls)
WEIGHTINGS.register("simple")(EpsWeighting)
WEIGHTINGS.register("x0")(SNRWeighting)


def make_weighting(name: str | Weighting, **kwargs: float) -> Weighting:
    """A weighting by name: eps (simple), snr (x0), min_snr (gamma), truncated_snr, v, velocity, edm (sigma_data), likelihood."""
    if isinstance(name, Weighting):
        return name
    return WEIGHTINGS.get(name)(**kwargs)
