"""Closed-form continuous-time schedules: VP, sub-VP, VE (Song et al. 2021), EDM, flow."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .base import NoiseSchedule


def _log_sigma_vp(log_alpha: Tensor) -> Tensor:
    """log sqrt(1 - alpha^2), stable for alpha near 0 and near 1."""
    return 0.5 * torch.log(-torch.expm1(2 * log_alpha))


@dataclass(frozen=True, repr=False)
class VPSchedule(NoiseSchedule):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min).

    Song et al. 2021, eq. (11) and (29): log alpha(t) = -t^2 (b1 - b0)/4 - t b0/2,
    sigma^2 = 1 - alpha^2. The continuous limit of DDPM's linear betas.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma(self, t: Tensor) -> Tensor:
        return _log_sigma_vp(self.log_alpha(t))

    def _t_of_neg_log_alpha2(self, big_l: Tensor) -> Tensor:
        """Solve (b1 - b0) t^2 / 2 + b0 t = L for t >= 0 (stable root form)."""
        b0, db = self.beta_min, self.beta_max - self.beta_min
        return 2 * big_l / (b0 + torch.sqrt(b0**2 + 2 * db * big_l))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        # alpha^2 = sigmoid(2 lam), so -log alpha^2 = softplus(-2 lam).
        return self._t_of_neg_log_alpha2(softplus(-2 * lam))

    def config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, repr=False)
class SubVPSchedule(VPSchedule):
    """Sub-VP SDE (Song et al. 2021, eq. (12)): alpha as VP, sigma = 1 - alpha^2."""

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  <=>  alpha = 2 / (e^-lam + sqrt(e^-2lam + 4)).
        e = torch.exp(-lam)
        alpha = 2 / (e + torch.sqrt(e**2 + 4))
        return self._t_of_neg_log_alpha2(-2 * torch.log(alpha))


@dataclass(frozen=True, repr=False)
class VESchedule(NoiseSchedule):
    """Variance-exploding SDE (Song et al. 2021, eq. (9)-(10); NCSN).

    alpha = 1 and sigma(t) = sigma_min (sigma_max / sigma_min)^t for t in [t_min, t_max].
    sigma never reaches 0: samplers finish with a final denoising step.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, repr=False)
class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022, Table 1): alpha = 1, sigma(t) = t on [sigma_min, sigma_max]."""

    t_min: float = 0.002
    t_max: float = 80.0

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, repr=False)
class FlowSchedule(NoiseSchedule):
    """Rectified flow / flow-matching path (Liu et al. 2022; Lipman et al. 2022).

    alpha = 1 - t, sigma = t. At t = 1 the signal is gone (lambda = -inf): the
    prior N(0, I) is exact there.
    """

    t_min: float = 1e-3
    t_max: float = 1.0

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t)
        return 1 - t, t.clone()  # direct, so derivatives stay finite at alpha = 0

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)

    def config(self) -> dict:
        return asdict(self)
