"""DDNM: zero-shot restoration by range-null space decomposition (Wang et al. 2023, ICLR).

Every data prediction is corrected to be consistent with the measurement,
x0 <- A^+ y + (I - A^+ A) x0_hat (sec. 3.1 and Algorithm 1), and the solver continues from the
corrected prediction. Any solver whose last step returns its data prediction (DDPM, DDIM,
DPM-Solver++ and the other clean-end steps) therefore ends exactly on {A x = A A^+ y}, i.e.
on A x = y when y is in A's range. The measurement is taken as noiseless (DDNM+'s noise
handling, sec. 3.3, is not implemented).
"""

from __future__ import annotations

from torch import Tensor

from ..parameterization import Prediction
from ..stepping import Step, StepContext
from .operators import LinearOperator


class DDNM:
    """Constraint: the range-null correction of every prediction (``on_prediction``)."""

    def __init__(self, operator: LinearOperator, y: Tensor) -> None:
        self.operator, self.y = operator, y

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        x0 = pred.x0
        return pred.with_x0(self.operator.project(x0, self.y.to(device=x0.device, dtype=x0.dtype)))

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        return x
