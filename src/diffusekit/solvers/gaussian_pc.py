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
data exactly, and a mixture is integrated exactly wherever it looks Gaussian at the
scale sigma_data (the high-noise phase). Polynomials in lambda represent this
e^lambda-like growth only approximately, and the error they make at high noise moves
trajectories across the boundaries between modes.

The predictor interpolates the ``order - 1`` newest outputs (Adams-Bashforth); the
corrector (UniC, Zhao et al. 2023, Alg. 1) re-integrates the step just taken through
the output at its end (Adams-Moulton), which costs no model call and raises the order
by one. Weights are integrals of the Lagrange basis in v over u, computed by
Gauss-Legendre quadrature in lambda. The step to the clean end is
``dpm_solver.gaussian_end``: exact once each sample sits in one isotropic Gaussian mode,
so the grid need not spend calls at low noise (``gaussian_lambda`` grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from ..sample import Solver, Step, StepContext
from ..schedules.grids import Grid
from .base import register
from .dpm_solver import Node, _check_order, ddim_limit, gaussian_end, lincomb

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


class GaussianPCState(NamedTuple):
    """History (newest first), and the start (x, lambda, sigma) of the step just taken, for the corrector."""

    hist: tuple[Node, ...]
    prev: tuple[Tensor, float, float] | None


def c_in_weights(lams: list[float], lam0: float, lam1: float, sigma_data: float) -> list[float]:
    """beta_j = int_{u0}^{u1} l_j(v(u)) du for the Lagrange basis l_j in v = c_in through the
    nodes ``lams`` (log-SNRs), with u = e^lambda, by 16-point Gauss-Legendre in lambda."""
    lam = 0.5 * (lam0 + lam1) + 0.5 * (lam1 - lam0) * _GL_NODES
    u = np.exp(lam)

    def v(uu: np.ndarray) -> np.ndarray:
        return uu / np.sqrt(1.0 + (sigma_data * uu) ** 2)

    vq, vn = v(u), v(np.exp(np.asarray(lams)))
    jac = 0.5 * (lam1 - lam0) * _GL_WEIGHTS * u  # du = e^lambda dlambda
    out = []
    for j in range(len(lams)):
        basis = np.ones_like(vq)
        for m in range(len(lams)):
            if m != j:
                basis *= (vq - vn[m]) / (vn[j] - vn[m])
        out.append(float((jac * basis).sum()))
    return out


@register
@dataclass(frozen=True)
class GaussianPC(Solver):
    """Adams predictor-corrector on the data prediction in v = c_in, with the Gaussian clean end.

    ``order`` is the convergence order (with the corrector, the predictor uses
    ``order - 1`` outputs, as ``UniPC``); ``sigma_data`` is the scale at which the steps
    are exact for Gaussian data (1 = interpolation in alpha on variance-preserving
    schedules). ``lower_order_final``: the last step before the clean end is at most
    second order. The first step from alpha = 0 is its exact limit (DDIM).

    Default grid ``gaussian_lambda``: log-SNR points lambda_start + (lambda_end -
    lambda_start) (i / (n - 1))^power that stop where modes have separated and leave the
    rest to the Gaussian clean end (fitted on sharp oracle mixtures other than the
    benchmark's, ``benchmarks/grid_search.py``).
    """

    order: int = 4
    corrector: bool = True
    sigma_data: float = 1.0
    lower_order_final: bool = True
    name = "gaussian_pc"
    stochastic = False
    nfe_per_step = 1
    default_grid = "gaussian_lambda"

    def __post_init__(self) -> None:
        _check_order(self.order, range(2 if self.corrector else 1, 9))
        if not (isinstance(self.sigma_data, int | float) and 0 < self.sigma_data < math.inf):
            raise ValueError(f"sigma_data must be a positive finite number, got {self.sigma_data!r}")

    def init_state(self, grid: Grid) -> Any:
        return GaussianPCState((), None)

    def _update(self, x: Tensor, start: tuple[float, float], end: tuple[float, float], nodes: tuple[Node, ...]) -> Tensor:
        """x1 = sigma1 (x / sigma0 + sum_j beta_j D_j) from (lambda0, sigma0) = start to ``end``."""
        (lam0, sigma0), (lam1, sigma1) = start, end
        beta = c_in_weights([nd.lam for nd in nodes], lam0, lam1, self.sigma_data)
        return lincomb(x, sigma1 / sigma0, [sigma1 * b for b in beta], [nd.x0 for nd in nodes])

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, None, Any]:
        pred = ctx.model(x, step.t0)
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), None, GaussianPCState((), None)
        node = Node.of(pred, step.lam0)
        if self.corrector and state.prev is not None:
            x_s, lam_s, sigma_s = state.prev
            x = self._update(x_s, (lam_s, sigma_s), (step.lam0, step.sigma0), (node,) + state.hist[: self.order - 1])
        hist = (node,) + state.hist[: self.order - 1]
        if step.to_zero:
            return gaussian_end(step, hist), None, state
        k = min(self.order - 1 if self.corrector else self.order, len(hist))
        if self.lower_order_final and step.remaining == 2:
            k = min(k, 2)
        x_next = self._update(x, (step.lam0, step.sigma0), (step.lam1, step.sigma1), hist[:k])
        return x_next, None, GaussianPCState(hist, (x, step.lam0, step.sigma0))
