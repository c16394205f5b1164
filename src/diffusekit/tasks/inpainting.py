"""Inpainting on the sampling loop: score-SDE replacement and RePaint's resampling schedule.

- ``Replacement``: after every step the measured part of x_t is replaced by a forward-noised
  copy of the measurement, alpha_t y + sigma_t A z (Song et al. 2021, score SDE, app. I.2;
  the "replacement" of Ho et al. 2022, Video Diffusion, sec. 3.1). For a ``Mask`` this sets the
  known pixels, and at the clean end they equal y exactly.
- ``repaint_grid``: RePaint's schedule (Lugmayr et al. 2022, sec. 4.2 and Algorithm 1): every
  ``jump_length`` steps the sampler jumps back up by ``jump_length`` steps with the exact forward
  transition and descends again, ``resamples`` times in all, which lets the unknown part
  harmonise with the known one. Used with ``Replacement`` and any solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid, make_grid
from ..stepping import Step, StepContext
from ..utils import check_positive_int
from .operators import LinearOperator


class Replacement:
    """Constraint: x_t <- x_t + A^+ (alpha_t y + sigma_t A z - A x_t) after every step.

    The row-space part of x_t (for a ``Mask``: the known entries) becomes a draw of
    q(A x_t | A x0 = y), so the loop's x is always consistent with a noised measurement; the
    null-space part is left to the solver. Exact for noiseless measurements (``y = A x0``); a
    noisy y is treated as noiseless. ``y``: one sample's measurement (broadcast) or one per sample.
    """

    def __init__(self, operator: LinearOperator, y: Tensor) -> None:
        self.operator, self.y = operator, y

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        return pred

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        st = step.like(x)
        y = self.y.to(device=x.device, dtype=x.dtype)
        target = st.alpha1 * y if step.to_zero else st.alpha1 * y + st.sigma1 * self.operator(ctx.noise())
        return self.operator.project(x, target)


def repaint_times(steps: int, jump_length: int, resamples: int) -> list[int]:
    """RePaint's visiting order of grid positions 0 (t_max) .. steps (clean data).

    Descends one position at a time; after reaching each position p = jump_length, 2 jump_length,
    ... below steps, jumps back up to p - jump_length and descends again, ``resamples - 1`` times
    (Lugmayr et al. 2022, sec. 4.2: r resamplings with jump length j).
    """
    for name, v in (("steps", steps), ("jump_length", jump_length), ("resamples", resamples)):
        check_positive_int(name, v)
    if jump_length >= steps:
        raise ValueError(f"jump_length={jump_length} must be below steps={steps}")
    order = [0]
    for p in range(1, steps + 1):
        order.append(p)
        if p % jump_length == 0 and p < steps:
            order += [q for _ in range(resamples - 1) for q in [p - jump_length, *range(p - jump_length + 1, p + 1)]]
    return order


def repaint_grid(
    schedule: NoiseSchedule, steps: int, jump_length: int = 10, resamples: int = 10, rule: str = "uniform_t"
) -> Grid:
    """The RePaint grid on the ``rule`` grid of ``steps`` steps: a ``Grid`` with jumps whose rising
    intervals ``sample`` takes by the exact forward transition (``forward_jump``).

    Model calls: steps + (resamples - 1) * jump_length * (number of jump points).
    """
    base = make_grid(rule, schedule, steps)
    if not base.ends_at_zero:
        raise ValueError(f"grid rule {rule!r} must end at the clean end")
    order = torch.tensor(repaint_times(steps, jump_length, resamples))
    return Grid.from_times(schedule, base.t[order[:-1]], to_zero=True, jumps=True)
