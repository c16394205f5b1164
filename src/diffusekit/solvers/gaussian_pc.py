"""A predictor-corrector that is exact for Gaussian data: Adams steps on the data prediction
interpolated in c_in, and a clean-end step exact for locally Gaussian modes.

With u = alpha / sigma = e^lambda the probability-flow ODE in data form is

    d(x / sigma) / du = D(x, u)          (DPM-Solver++, Lu et al. 2022b, eq. 8, with du = e^lambda dlambda),

so one step is x1 = sigma1 (x0 / sigma0 + int_{u0}^{u1} D du). DPM-Solver++ and UniPC
interpolate D by a polynomial in lambda. Here the interpolation variable is

    v = c_in = 1 / sqrt(rho^2 + sigma_data^2),     rho = sigma / alpha = 1 / u,

EDM's input scaling (Karras et al. 2022, Table 1) in the coordinates y = x / alpha. The
reason: for data N(m, sigma_data^2 I) the denoiser is D = m + sigma_data^2 / (sigma_data^2 +
rho^2) (y - m), and along a solution of the ODE y - m = sqrt(sigma_data^2 + rho^2) z for a
fixed z, so D = m + sigma_data^2 c_in z is *linear* in c_in: any step size integrates such
data exactly (from two evaluations), and a mixture nearly so where it looks like such data
(the high-noise phase). Polynomials in lambda represent this e^lambda-like growth only
approximately, and the error they make at high noise moves trajectories across the
boundaries between modes.

The predictor interpolates the ``order - 1`` newest outputs (``order`` without the
corrector; Adams-Bashforth); the corrector (UniC, Zhao et al. 2023, Alg. 1) re-integrates
the step just taken through the output at its end (Adams-Moulton), which costs no model
call and raises the order by one. Weights are integrals of the Lagrange basis in v over
u, computed by Gauss-Legendre quadrature in lambda once per grid. The step to the clean end is
``gaussian_end``: exact once each sample sits in one isotropic Gaussian mode,
so the grid need not spend calls at low noise (``gaussian_lambda`` grid).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from ..sample import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..tuned import GAUSSIAN_PC_ORDER, GAUSSIAN_PC_SIGMA_DATA
from ..utils import check_positive_float
from .base import register
from .exponential import Node, check_order, ddim_limit, lincomb
from .gaussian_end import gaussian_end
from .lagrange import lagrange_weights, quadrature_moments

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


class GaussianPCState(NamedTuple):
    """The per-step plan, the history (newest first), the start x of the step just taken and
    its predicted end (to tell whether the loop changed x after the step)."""

    plan: tuple[StepPlan, ...]
    hist: tuple[Node, ...]
    x_prev: Tensor | None
    x_pred: Tensor | None


class StepPlan(NamedTuple):
    """One grid step's updates as (scale, coefficients of the history's data predictions, newest
    first): the corrector of the step just taken (None: no corrector) and the predictor
    (None: the DDIM limit at alpha = 0 or the Gaussian clean end)."""

    corrector: tuple[float, list[float]] | None
    predictor: tuple[float, list[float]] | None


def c_in_weights(lams: list[float], lam0: float, lam1: float, sigma_data: float) -> list[float]:
    """beta_j = int_{u0}^{u1} l_j(v(u)) du for the Lagrange basis l_j in v = c_in through the
    nodes ``lams`` (log-SNRs), with u = e^lambda, by 16-point Gauss-Legendre in lambda."""
    lam = 0.5 * (lam0 + lam1) + 0.5 * (lam1 - lam0) * _GL_NODES
    u = np.exp(lam)

    def v(uu: np.ndarray) -> np.ndarray:
        return uu / np.sqrt(1.0 + (sigma_data * uu) ** 2)

    v0, v1 = v(math.exp(lam0)), v(math.exp(lam1))

    def scaled(uu: np.ndarray) -> np.ndarray:  # v mapped to v0 -> 0, v1 -> 1
        return (v(uu) - v0) / (v1 - v0)

    jac = 0.5 * (lam1 - lam0) * _GL_WEIGHTS * u  # du = e^lambda dlambda
    nodes = scaled(np.exp(np.asarray(lams))).tolist()
    return lagrange_weights(nodes, quadrature_moments(scaled(u), jac, len(lams)))


@register
@dataclass(frozen=True)
class GaussianPC(Solver):
    """Adams predictor-corrector on the data prediction in v = c_in, with the Gaussian clean end.

    ``order`` is the convergence order (with the corrector, the predictor uses
    ``order - 1`` outputs, as ``UniPC``); ``sigma_data`` is the scale at which the steps
    are exact for Gaussian data (1 = interpolation in alpha on variance-preserving
    schedules). ``lower_order_final``: the last step before the clean end is at most
    second order. The first step from alpha = 0 is its exact limit (DDIM).

    Default grid ``gaussian_lambda``: log-SNR points that stop where modes have separated
    and leave the rest to the Gaussian clean end (fitted rows for 5-8 steps, a power law
    beyond; fitted on sharp oracle mixtures other than the benchmark's,
    ``benchmarks/grid_search.py``). Defaults (order 4, sigma_data 1, the corrector) were
    chosen on the same mixtures (8,192 trajectories, ``grid_search.py ablation``): sigma_data
    0.5-2 are within noise of each other; UniPC's lambda polynomials with the same clean end
    and grid make 3x / 2x / 1.3x the mode switches at 5 / 8 / 10 steps, and dropping the
    corrector 3x / 7x / 3x.
    """

    order: int = GAUSSIAN_PC_ORDER
    corrector: bool = True
    sigma_data: float = GAUSSIAN_PC_SIGMA_DATA
    lower_order_final: bool = True
    name = "gaussian_pc"
    stochastic = False
    nfe_per_step = 1
    default_grid = "gaussian_lambda"
    paper_grid = "gaussian_lambda"  # its own grid

    def __post_init__(self) -> None:
        check_order(self.order, range(2 if self.corrector else 1, 9))
        check_positive_float("sigma_data", self.sigma_data)

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        return GaussianPCState(_plan(self, tuple(grid.lam.tolist()), tuple(grid.sigma.tolist())), (), None, None)

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        plan = state.plan[step.i]
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), state
        hist = (Node.of(pred, step.lam0),) + state.hist[: self.order - 1]
        if plan.corrector is not None:
            scale, coeffs = plan.corrector
            corrected = lincomb(state.x_prev, scale, coeffs, [nd.x0 for nd in hist])
            # a projection made after the predictor (constraints) is kept: correct by the difference
            x = corrected if x is state.x_pred else x + (corrected - state.x_pred)
        if plan.predictor is None:
            return gaussian_end(step, hist), state
        scale, coeffs = plan.predictor
        x_next = lincomb(x, scale, coeffs, [nd.x0 for nd in hist])
        return x_next, state._replace(hist=hist, x_prev=x, x_pred=x_next)


@functools.lru_cache(maxsize=128)
def _plan(solver: GaussianPC, lam: tuple[float, ...], sigma: tuple[float, ...]) -> tuple[StepPlan, ...]:
    """Every step's coefficients for a grid, computed once per grid (the weights depend only on
    the grid's log-SNRs); the rules are the class docstring's."""
    steps = []
    first = 1 if math.isinf(lam[0]) and lam[0] < 0 else 0  # alpha = 0: a DDIM step, no history
    n = len(lam) - 1
    for i in range(n):
        if i < first:
            steps.append(StepPlan(None, None))
            continue
        known = lam[first : i + 1][::-1]  # log-SNRs of the history, newest first
        corrector = None
        if solver.corrector and i > first:
            nodes = known[: solver.order]
            beta = c_in_weights(list(nodes), lam[i - 1], lam[i], solver.sigma_data)
            corrector = (sigma[i] / sigma[i - 1], [sigma[i] * b for b in beta])
        predictor = None
        if not math.isinf(lam[i + 1]):
            k = min(solver.order - 1 if solver.corrector else solver.order, len(known))
            if solver.lower_order_final and i == n - 2:
                k = min(k, 2)
            beta = c_in_weights(list(known[:k]), lam[i], lam[i + 1], solver.sigma_data)
            predictor = (sigma[i + 1] / sigma[i], [sigma[i + 1] * b for b in beta])
        steps.append(StepPlan(corrector, predictor))
    return tuple(steps)
