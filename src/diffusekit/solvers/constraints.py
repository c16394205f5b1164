"""Sampling-loop constraints on the x0 estimate: clipping and dynamic thresholding.

Both act on every model evaluation through ``Constraint.on_prediction``, so any solver that
forms an x0 estimate (all of them: ``ctx.model`` applies constraints) gets them by passing
``sample(..., constraints=[ClipX0()])``. The clipped estimate replaces x0 with
``Prediction.with_x0``, which recomputes eps = (x_t - alpha x0) / sigma so the two stay
consistent with x_t. ``after_step`` leaves x unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..registry import Registry
from ..stepping import Step, StepContext
from ..utils import append_dims


@dataclass(frozen=True)
class ClipX0:
    """Static thresholding: clamp x0_hat to [lo, hi] (Ho et al. 2020's sampler clips to [-1, 1];
    Saharia et al. 2022, Imagen, sec. 2.3 "static thresholding")."""

    lo: float = -1.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"need lo < hi, got lo={self.lo!r}, hi={self.hi!r}")

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        return pred.with_x0(pred.x0.clamp(self.lo, self.hi))

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        return x


@dataclass(frozen=True)
class DynamicThreshold:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, sec. 2.3): per sample, s = the
    ``percentile`` quantile of |x0_hat|, clamped to [1, ``max_value``]; then x0_hat <- clip(x0_hat, -s, s) / s.
    Samples whose quantile is at most 1 are only clipped to [-1, 1]."""

    percentile: float = 0.995
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 1:
            raise ValueError(f"percentile must be in (0, 1], got {self.percentile!r}")
        if not self.max_value >= 1:
            raise ValueError(f"max_value must be >= 1, got {self.max_value!r}")

    def threshold(self, x0: Tensor) -> Tensor:
        """The per-sample threshold s (shape (B,)), by linear interpolation between order statistics."""
        flat = x0.flatten(1).abs()
        pos = self.percentile * (flat.shape[1] - 1)
        lo, w = math.floor(pos), pos - math.floor(pos)
        s = flat.kthvalue(lo + 1, dim=1).values
        if w > 0:
            s = s + w * (flat.kthvalue(lo + 2, dim=1).values - s)
        return s.clamp(1.0, self.max_value)

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        s = append_dims(self.threshold(pred.x0), pred.x0.ndim)
        return pred.with_x0(torch.minimum(torch.maximum(pred.x0, -s), s) / s)

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        return x


THRESHOLDING: Registry[Any] = Registry("thresholding")
THRESHOLDING.register("clip")(ClipX0)
THRESHOLDING.register("dynamic")(DynamicThreshold)


def make_thresholding(name: str, **options: Any) -> ClipX0 | DynamicThreshold:
    """Build an x0 thresholding constraint by name: ``clip`` (lo, hi) or ``dynamic`` (percentile, max_value)."""
    return THRESHOLDING.get(name)(**options)
