"""The one noise-process abstraction: q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I).

Every Gaussian diffusion in the source material is this with a different pair
(alpha, sigma): DDPM's discrete betas, the VP / sub-VP / VE SDEs of Song et al.
(2021), EDM's sigma (Karras et al. 2022) and the rectified-flow path
(Liu et al. 2022). Samplers, losses and likelihoods speak only alpha, sigma and
the log-SNR lambda = log(alpha / sigma) (Kingma et al. 2021, VDM).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..utils import append_dims


class NoiseSchedule(ABC):
    """A forward process ``x_t = alpha(t) x_0 + sigma(t) eps`` on ``[t_min, t_max]``.

    Subclasses give ``log_alpha``, ``log_sigma`` and the inverse ``t_of_log_snr``;
    everything else (SNR, the SDE drift and diffusion, the prior) follows here.
    A schedule never holds a step count: step grids live in ``schedules.grids``.
    """

    t_min: float
    t_max: float

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t)."""

    @abstractmethod
    def log_sigma(self, t: Tensor) -> Tensor:
        """log sigma(t)."""

    @abstractmethod
    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of ``log_snr``: the time at which lambda(t) = ``lam``."""

    def model_time(self, t: Tensor) -> Tensor:
        """The noise-level input a network sees by default (``c_noise``): t itself."""
        return t

    def t_of_model_time(self, model_time: Tensor) -> Tensor:
        """The inverse of ``model_time``."""
        return model_time

    # ---- derived quantities -------------------------------------------------
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t))."""
        return self.log_alpha(t).exp(), self.log_sigma(t).exp()

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha / sigma), half the log signal-to-noise ratio (VDM, eq. 2)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def drift_diffusion(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """SDE coefficients (f(t), g(t)^2) of dx = f x dt + g dW with these marginals.

        Kingma et al. 2021 (VDM), appendix; Song et al. 2021 eq. (5):
        f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d lambda/dt.
        Derived here by forward-mode differentiation, so every schedule gets them
        from alpha and sigma alone.
        """
        t = torch.as_tensor(t).contiguous()
        d_log_alpha, d_lam = torch.func.jvp(
            lambda s: (self.log_alpha(s), self.log_snr(s)), (t,), (torch.ones_like(t),)
        )[1]
        sigma2 = (2 * self.log_sigma(t)).exp()
        return d_log_alpha, -2 * sigma2 * d_lam

    def dalpha_dsigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Time derivatives (d alpha/dt, d sigma/dt), for velocity (flow-matching) targets."""
        t = torch.as_tensor(t).contiguous()
        return torch.func.jvp(
            lambda s: self.alpha_sigma(s), (t,), (torch.ones_like(t),)
        )[1]

    # ---- forward process and prior ------------------------------------------
    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = alpha(t) x_0 + sigma(t) eps for a (B,) or scalar t."""
        alpha, sigma = self.alpha_sigma(torch.as_tensor(t, device=x0.device))
        alpha = append_dims(alpha.to(x0.dtype), x0.ndim)
        sigma = append_dims(sigma.to(x0.dtype), x0.ndim)
        return alpha * x0 + sigma * noise

    def prior_std(self) -> float:
        """Std of the prior N(0, s^2 I) at t_max: sqrt(alpha_T^2 + sigma_T^2).

        This is the marginal std at t_max for data of unit variance per
        dimension: 1 for VP, sub-VP, discrete and flow; ~sigma_max for VE and EDM.
        """
        alpha, sigma = self.alpha_sigma(torch.tensor(self.t_max, dtype=torch.float64))
        return math.sqrt(float(alpha**2 + sigma**2))

    def prior_sample(self, noise: Tensor) -> Tensor:
        """Turn standard normal ``noise`` into a draw from the prior."""
        return noise * self.prior_std()

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I), summed over all but the batch dimension."""
        s = self.prior_std()
        d = x[0].numel()
        sq = x.flatten(1).double().pow(2).sum(1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def validate_t(self, t: float | Tensor) -> None:
        """Raise a clear error if any time lies outside [t_min, t_max].

        Only CPU tensors and Python numbers are checked, so no device sync happens.
        """
        if isinstance(t, Tensor) and t.device.type != "cpu":
            return
        tt = torch.as_tensor(t, dtype=torch.float64)
        tol = 1e-9 * max(1.0, abs(self.t_max))
        bad = tt[(tt < self.t_min - tol) | (tt > self.t_max + tol) | tt.isnan()]
        if bad.numel():
            raise ValueError(
                f"t={float(bad[0]):.6g} is outside [t_min, t_max] = "
                f"[{self.t_min:g}, {self.t_max:g}] of {self!r}"
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({fields})"

    def config(self) -> dict:
        """Constructor arguments, for serialisation."""
        return {}
