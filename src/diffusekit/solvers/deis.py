"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator").

In the scaled variables x^ = x / alpha and rho = sigma / alpha the probability-flow
ODE is dx^/drho = eps(x, t) (DEIS eq. 9 with the exponential integrator absorbed into
the change of variables, sec. 3.2). Its exact solution over one step is

    x^_1 = x^_0 + int_{rho0}^{rho1} eps(t(rho)) drho,

and the r-th order multistep rule (the 'AB' family, Alg. 1) interpolates eps through
the last r outputs by a polynomial in either

- ``variable='t'``   (tAB-DEIS, the paper's best; the integral of the Lagrange basis
  over rho is computed with Gauss-Legendre quadrature on t(rho)), or
- ``variable='rho'`` (rhoAB-DEIS; the integrals are closed-form).

(Interpolating in log rho = -lambda instead gives the noise-form multistep
DPM-Solver, registered as ``dpm_solver``.) The clean end rho = 0 needs no special
case: the polynomial is integrated down to rho = 0, so the last step keeps the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..sample import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from .base import register
from .exponential import check_order, ddim_limit, lincomb, lowered_order
from .lagrange import lagrange_weights, quadrature_moments, unit_moments

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


class DEISState(NamedTuple):
    """History of (rho, t, eps) newest first, and t at the Gauss nodes of every step (tAB)."""

    hist: tuple[tuple[float, float, Tensor], ...]
    n_steps: int
    rho: tuple[float, ...]
    t_nodes: tuple[tuple[float, ...], ...] | None


@register
@dataclass(frozen=True)
class DEIS(Solver):
    """DEIS (Zhang & Chen 2023), Alg. 1: multistep exponential integrator in rho = sigma/alpha.

    ``order`` 1-3 is the number of eps evaluations interpolated (order 1 is DDIM);
    warm-up steps use what history exists, ``lower_order_final`` lowers the order of the
    last steps of short grids as in ``dpm_solver``.
    """

    order: int = 3
    variable: str = "t"
    lower_order_final: bool = True
    name = "deis"
    stochastic = False
    nfe_per_step = 1
    default_grid = "tuned_lambda"
    paper_grid = "quadratic_t"  # time-quadratic steps (Zhang & Chen 2023, sec. 5)

    def __post_init__(self) -> None:
        check_order(self.order, range(1, 4))
        if self.variable not in ("t", "rho"):
            raise ValueError(
                f"variable must be 't' (tAB-DEIS) or 'rho' (rhoAB-DEIS), got {self.variable!r}"
            )

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        rho = (grid.sigma / grid.alpha).tolist()
        return DEISState((), grid.n_steps, tuple(rho), None)

    def _t_nodes(
        self, ctx: StepContext, rho: tuple[float, ...]
    ) -> tuple[tuple[float, ...], ...]:
        """t(rho) at the Gauss-Legendre nodes of every grid interval (one schedule call)."""
        r0 = torch.tensor(rho[:-1], dtype=torch.float64)[:, None]
        r1 = torch.tensor(rho[1:], dtype=torch.float64)[:, None]
        u = torch.from_numpy(_GL_NODES)[None, :]
        r = 0.5 * (r0 + r1) + 0.5 * (r1 - r0) * u
        r = torch.where(
            torch.isfinite(r), r, torch.ones_like(r)
        )  # the alpha = 0 step is DDIM
        t = ctx.schedule.t_of_log_snr(-torch.log(r))
        return tuple(tuple(row) for row in t.tolist())

    def _weights(self, step: Step, state: DEISState, k: int) -> list[float]:
        """C_j = int_{rho0}^{rho1} l_j(v) drho for the k newest nodes (v = rho or t)."""
        rho0, rho1 = state.rho[step.i], state.rho[step.i + 1]
        hist = state.hist[:k]
        if self.variable == "rho":
            d = rho1 - rho0
            nodes = [(r - rho0) / d for r, _, _ in hist]
            return [d * b for b in lagrange_weights(nodes, unit_moments(k))]
        # the basis in t, integrated over rho by Gauss-Legendre; t scaled so the two newest nodes are 0, 1
        t0, span = step.t0, hist[1][1] - step.t0
        nodes = [(t - t0) / span for _, t, _ in hist]
        tq = (np.asarray(state.t_nodes[step.i]) - t0) / span  # type: ignore[index]
        return lagrange_weights(nodes, quadrature_moments(tq, 0.5 * (rho1 - rho0) * _GL_WEIGHTS, k))

    def step(
        self, ctx: StepContext, x: Tensor, step: Step, state: Any
    ) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), state
        if self.variable == "t" and state.t_nodes is None:
            state = state._replace(t_nodes=self._t_nodes(ctx, state.rho))
        hist = ((state.rho[step.i], step.t0, pred.eps),) + state.hist[: self.order - 1]
        state = state._replace(hist=hist)
        k = lowered_order(
            self.order, len(hist) - 1, step, state.n_steps, self.lower_order_final
        )
        if k == 1:
            return ddim_limit(step, pred), state
        coeffs = self._weights(step, state, k)
        # x1 = alpha1 (x0 / alpha0 + sum_j C_j eps_j)
        a1 = step.alpha1
        x_next = lincomb(
            x, a1 / step.alpha0, [a1 * c for c in coeffs], [e for _, _, e in hist[:k]]
        )
        return x_next, state
