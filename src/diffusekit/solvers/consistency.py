"""One-step and multistep consistency sampling (Song et al. 2023, Alg. 1) as a solver of the one loop.

A consistency model's Prediction.x0 is f(x_t, t), the clean end of the PF-ODE trajectory through x_t.
One step maps the prior draw to f(x_T, T); each further grid point tau re-noises that estimate,
x_tau = alpha(tau) f + sigma(tau) z with fresh z, and applies f again. On a grid of one step this is
one-step generation. With an ordinary denoiser it is a (poor) ancestral sampler: use it on
consistency-model runs (``diffusekit distill --method consistency``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..stepping import Solver, Step, StepContext
from .base import register


@register
@dataclass(frozen=True)
class Consistency(Solver):
    """Multistep consistency sampling; default grid ``uniform_angle`` (2 steps: sigma/alpha ~ 1 at the
    middle point for EDM, near the 0.821 Song et al. 2023 found for CIFAR-10)."""

    name = "consistency"
    order = 1
    stochastic = True
    per_sample_times = True
    default_grid = "uniform_angle"
    paper_grid = "uniform_angle"
    default_steps = 1

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        x0 = ctx.model(x, step.t0).x0
        if step.to_zero:
            return x0, state
        step = step.like(x)
        return step.alpha1 * x0 + step.sigma1 * ctx.noise(), state
