"""Step-size control for adaptive solvers (diffrax-style: the controller is apart from the solver).

The controller sees an embedded pair's two solutions and proposes the next step. The
error norm is DPM-Solver's (Lu et al. 2022a, sec. 4.2 / appendix C): per sample,

    E = || (x_high - x_low) / delta ||_2 / sqrt(d),  delta = max(atol, rtol max(|x_low|, |x_prev|)),

a step is accepted when E <= 1, and the next step is the elementary (integral)
controller h_new = h * clip(safety * E^(-1/order), min_factor, max_factor)
(Hairer, Norsett & Wanner 1993, sec. II.4, eq. 4.13). Everything is per sample, so
a sample's steps never depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepSizeController:
    """Elementary error-per-step controller with DPM-Solver's mixed absolute/relative norm.

    ``rtol``/``atol`` default to DPM-Solver's values for data in [-1, 1] (0.05, 0.0078).
    """

    rtol: float = 0.05
    atol: float = 0.0078
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 5.0

    def __post_init__(self) -> None:
        if not (self.rtol >= 0 and self.atol >= 0 and self.rtol + self.atol > 0):
            raise ValueError(
                f"rtol and atol must be >= 0 and not both 0, got rtol={self.rtol!r}, atol={self.atol!r}"
            )
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety!r}")
        if not 0 < self.min_factor < 1 < self.max_factor:
            raise ValueError(
                f"need 0 < min_factor < 1 < max_factor, got min_factor={self.min_factor!r}, max_factor={self.max_factor!r}"
            )

    def error_ratio(self, x_high: Tensor, x_low: Tensor, x_prev: Tensor) -> Tensor:
        """E per sample (shape (B,), float64 on the CPU; one host sync per call)."""
        scale = (
            torch.maximum(x_low.abs(), x_prev.abs())
            .mul_(self.rtol)
            .clamp_(min=self.atol)
        )
        err = ((x_high - x_low) / scale).flatten(1).double().pow(2).mean(1).sqrt()
        return err.cpu()

    @staticmethod
    def accept(ratio: Tensor) -> Tensor:
        """Accepted samples: E <= 1 (NaN is rejected)."""
        return ratio <= 1.0

    def propose(self, h: Tensor, ratio: Tensor, order: int) -> Tensor:
        """h_new = h * clip(safety * E^(-1/order), min_factor, max_factor); NaN E shrinks."""
        factor = self.safety * ratio.clamp(min=1e-10).pow(-1.0 / order)
        factor = torch.where(
            torch.isnan(ratio), torch.full_like(ratio, self.min_factor), factor
        )
        return h * factor.clamp(self.min_factor, self.max_factor)


__all__ = ["StepSizeController"]
