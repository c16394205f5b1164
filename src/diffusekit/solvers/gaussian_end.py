"""The clean-end step that is exact for locally Gaussian modes, and any deterministic solver with it.

``gaussian_end`` is the step (also ``gaussian_pc``'s last step).
``make_solver(name, end="gaussian")`` (CLI: ``--option end=gaussian``) wraps a solver in
``GaussianEnd``: every step but the last is the solver's own; the step to sigma = 0 is
``gaussian_end`` from the solver's two newest model evaluations, instead of
the x0 jump or a polynomial end. With the ``gaussian_lambda`` grid (the wrapper's
default), which stops once modes have separated, this removes the collapse of the
within-mode spread that first-order and Adams-type solvers show at 8-10 model calls
(measured in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..sample import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..utils import append_dims
from .exponential import Node


def gaussian_end(step: Step, hist: tuple[Node, ...]) -> Tensor:
    """The step to the clean end that is exact where the data are locally an isotropic Gaussian.

    If the posterior at the newest two evaluations is one Gaussian N(mu, s^2 I) (a
    decided mode), the denoiser in EDM coordinates y = x / alpha, rho = sigma / alpha is
    D = mu + s^2 / (s^2 + rho^2) (y - mu), and the probability-flow ODE dy/drho =
    (y - D) / rho moves y - mu by sqrt(s^2 + rho^2) (Karras et al. 2022, eq. 4 for
    a Gaussian), so the exact step from rho0 to 0 is

        y(0) = D0 + s (sqrt(s^2 + rho0^2) - s) eps0 / rho0.

    s^2 is estimated per sample from the two newest evaluations: eliminating mu from
    mu = D_j - s^2 eps_j / rho_j gives D0 - D1 = s^2 (eps0 / rho0 - eps1 / rho1), solved
    by least squares over the sample's coordinates and clamped at 0. s = 0 is the x0
    jump (y = D0); any s gives a point between D0 and (y0 + D0) / 2, so the rule is
    bounded when the data are not Gaussian. With fewer than two evaluations: the jump.
    """
    newest = hist[0]
    if len(hist) < 2:
        return newest.x0 * step.alpha1
    prev = hist[1]
    rho0, rho1 = math.exp(-newest.lam), math.exp(-prev.lam)
    dx0 = (newest.x0 - prev.x0).flatten(1)
    deps = (newest.eps / rho0 - prev.eps / rho1).flatten(1)
    s2 = ((dx0 * deps).sum(1) / (deps * deps).sum(1).clamp_min(torch.finfo(deps.dtype).tiny)).clamp_min(0.0)
    s = s2.sqrt()
    weight = s * rho0 / ((s2 + rho0 * rho0).sqrt() + s)  # s (sqrt(s^2 + rho0^2) - s) / rho0, stably
    return (newest.x0 + append_dims(weight, newest.eps.ndim) * newest.eps) * step.alpha1


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
        self.paper_grid = inner.paper_grid

    def __repr__(self) -> str:
        return f"GaussianEnd({self.inner!r})"

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        return GaussianEndState(self.inner.init_state(grid, schedule), None)

    def nfe(self, grid: Grid) -> int | None:
        """The inner solver's calls before the clean end, and one for the Gaussian end."""
        if not grid.ends_at_zero or grid.n_steps == 1:
            return 1 if grid.ends_at_zero else self.inner.nfe(grid)
        inner = self.inner.nfe(grid.slice(0, grid.n_steps - 1))
        return None if inner is None else inner + 1

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        if step.to_zero:
            pred = ctx.model(x, step.t0)
            hist = (Node.of(pred, step.lam0),)
            if state.last is not None:
                t_prev, prev = state.last
                lam_prev = ctx.schedule.log_snr(torch.as_tensor(t_prev, dtype=torch.float64)).flatten()[0]
                hist += (Node.of(prev, float(lam_prev)),)
            return gaussian_end(step, hist), state
        seen: list[tuple[float, Prediction]] = []

        def model(xt: Tensor, t: float | Tensor) -> Prediction:
            pred = ctx.model(xt, t)
            seen.append((t, pred))
            return pred

        x, inner = self.inner.step(StepContext(model, ctx.schedule, ctx.noise), x, step, state.inner)
        return x, GaussianEndState(inner, seen[-1] if seen else state.last)

