"""Exponential moving average of network weights, the copy used for sampling.

theta_ema <- beta theta_ema + (1 - beta) theta after each optimiser step (Polyak &
Juditsky 1992; used by Ho et al. 2020 with beta = 0.9999). beta comes from either

- a half-life h in steps: beta = 0.5^(1/h), so a weight's influence halves every h
  updates; with ``rampup`` r the half-life is min(h, r * step) (Karras et al. 2022,
  training code ``ema_rampup_ratio``), so early weights are forgotten quickly; or
- a power warm-up: beta = 1 - (1 + step / inv_gamma)^(-power), capped at ``max_decay``
  (the inverse-gamma schedule of Tan & Le 2019 used by diffusers' EMAModel).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA:
    """A frozen, eval-mode copy of ``module`` tracking its weights; buffers are copied as-is."""

    def __init__(
        self,
        module: nn.Module,
        half_life: float | None = None,
        rampup: float | None = None,
        power: float | None = None,
        inv_gamma: float = 1.0,
        max_decay: float = 0.9999,
    ) -> None:
        if (half_life is None) == (power is None):
            raise ValueError("give exactly one of half_life (steps) or power (warm-up schedule)")
        if half_life is not None and not half_life > 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        if rampup is not None and not rampup > 0:
            raise ValueError(f"rampup must be positive, got {rampup}")
        if power is not None and not (power > 0 and inv_gamma > 0):
            raise ValueError(f"power and inv_gamma must be positive, got {power}, {inv_gamma}")
        self.half_life = half_life
        self.rampup = rampup
        self.power = power
        self.inv_gamma = inv_gamma
        self.max_decay = max_decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def decay(self, step: int) -> float:
        """beta for the update that follows optimiser step ``step`` (1-based)."""
        if self.half_life is not None:
            h = self.half_life if self.rampup is None else min(self.half_life, self.rampup * step)
            return 0.0 if h <= 0 else 0.5 ** (1.0 / h)
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power  # type: ignore[operator]
        return min(max(value, 0.0), self.max_decay)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """theta_ema <- lerp(theta_ema, theta, 1 - beta); buffers are copied."""
        beta = self.decay(step)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in module.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA and model have different parameter lists")
        if ema_params:
            torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), module.buffers()):
            b_ema.copy_(b)

    @staticmethod
    def half_life_of(beta: float) -> float:
        """The half-life in steps of a constant decay beta: ln(1/2) / ln(beta)."""
        return math.log(0.5) / math.log(beta)
