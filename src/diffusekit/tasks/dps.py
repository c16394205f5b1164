"""Diffusion posterior sampling (Chung et al. 2023, ICLR), Algorithm 1, with any solver.

Each step of the solver gives x'_{t1} from x_t0; DPS then moves it against the gradient of the
measurement error of the denoised estimate,

    x_{t1} = x'_{t1} - zeta grad_{x_t0} ||y - A x0_hat(x_t0)||,

which is Algorithm 1's zeta_i grad ||y - A x0_hat||^2 with zeta_i = zeta' / ||y - A x0_hat||
(zeta = 2 zeta'). The gradient runs through the
denoiser (``torch.enable_grad`` on a detached x inside the no-grad loop, as ``EnergyGuidance``).

DPS is approximate: it replaces p(y | x_t) by p(y | E[x0 | x_t]) and takes one fixed-size
step, so it does not sample the posterior even with exact scores and many steps (its bias is
reported against the exact posterior in benchmarks/RESULTS.md, "Inverse problems").
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Cond, DenoiserLike, DenoiserWrapper
from ..parameterization import Prediction
from ..stepping import Step, StepContext
from ..utils import check_positive_float
from .operators import LinearOperator


class DPS(DenoiserWrapper):
    """The DPS wrapper AND constraint: pass it as the denoiser and in ``constraints``::

        dps = DPS(denoiser, operator, y, zeta=1.0)
        sample(dps, solver, ..., constraints=[dps])

    The first model call of each step (at x_t0) records the gradient; ``after_step``
    applies it to the step's result. Later calls within a step (multi-stage solvers) are
    plain calls of ``inner``.
    """

    def __init__(self, inner: DenoiserLike, operator: LinearOperator, y: Tensor, zeta: float = 1.0) -> None:
        super().__init__(inner)
        self.operator, self.y = operator, y
        self.zeta = check_positive_float("zeta", zeta)
        self._grad: Tensor | None = None

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        if self._grad is not None:
            return self.inner(x, t, cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = self.inner(xg, t, cond)
            resid = (self.y.to(device=x.device, dtype=x.dtype) - self.operator(pred.x0)).flatten(1)
            (grad,) = torch.autograd.grad(resid.norm(dim=1).sum(), xg)
        self._grad = grad
        return Prediction(x, pred.alpha.detach(), pred.sigma.detach(), pred.x0.detach(), pred.eps.detach())

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        return pred

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        grad, self._grad = self._grad, None
        return x if grad is None else x - self.zeta * grad
