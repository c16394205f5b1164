"""Any deterministic solver with the clean-end step that is exact for locally Gaussian modes.

``make_solver(name, end="gaussian")`` (CLI: ``--option end=gaussian``) wraps a solver in
``GaussianEnd``: every step but the last is the solver's own; the step to sigma = 0 is
``dpm_solver.gaussian_end`` from the solver's two newest model evaluations, instead of
the x0 jump or a polynomial end. With the ``gaussian_lambda`` grid (the wrapper's
default), which stops once modes have separated, this removes the collapse of the
within-mode spread that first-order and Adams-type solvers show at 8-10 model calls
(measured in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..sample import Solver, Step, StepContext
from ..schedules.grids import Grid
from .dpm_solver import Node, gaussian_end


class GaussianEndState(NamedTuple):
    """The inner solver's state and its newest model evaluation (time, prediction)."""

    inner: Any
    last: tuple[float, Prediction] | None


class GaussianEnd(Solver):
    """``inner``'s steps, then the Gaussian clean end (see the module docstring)."""

    def __init__(self, inner: Solver) -> None:
        if inner.stochastic or inner.adaptive:
            raise ValueError(
                f"end='gaussian' needs a fixed-step deterministic solver (it ends the probability-flow ODE), "
                f"got {inner.name!r}"
            )
        self.inner = inner
        self.name = inner.name
        self.order = inner.order
        self.nfe_per_step = inner.nfe_per_step
        self.default_steps = inner.default_steps
        self.default_grid = "gaussian_lambda"

    def __repr__(self) -> str:
        return f"GaussianEnd({self.inner!r})"

    def init_state(self, grid: Grid) -> Any:
        return GaussianEndState(self.inner.init_state(grid), None)

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Tensor | None, Any]:
        if step.to_zero:
            pred = ctx.model(x, step.t0)
            hist = (Node.of(pred, step.lam0),)
            if state.last is not None:
                t_prev, prev = state.last
                lam_prev = ctx.schedule.log_snr(torch.as_tensor(t_prev, dtype=torch.float64)).flatten()[0]
                hist += (Node.of(prev, float(lam_prev)),)
            return gaussian_end(step, hist), None, state
        seen: list[tuple[float, Prediction]] = []

        def model(xt: Tensor, t: float | Tensor) -> Prediction:
            pred = ctx.model(xt, t)
            seen.append((t, pred))
            return pred

        x, err, inner = self.inner.step(StepContext(model, ctx.schedule, ctx.noise), x, step, state.inner)
        return x, err, GaussianEndState(inner, seen[-1] if seen else state.last)

