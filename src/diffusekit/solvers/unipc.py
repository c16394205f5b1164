"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models"), any order, B(h) = h ('bh1') or B(h) = e^h - 1 ('bh2').

UniP-p (the predictor) is the multistep exponential integrator (``exponential.py``) on the
p most recent outputs; UniC-p (the corrector, Alg. 1-2) reuses the model output at the
predicted point x~_t: the polynomial through the same p outputs *and* M(x~_t) is
integrated over the step just taken, so the corrected x_t^c = x~_t + c_t * sum_j
(beta_j^corr - beta_j^pred) M_j costs no model call and raises the order by one.
The next predictor starts from x_t^c with M(x~_t) as its newest output.

The coefficients solve R_p a = phi_p(h) / B(h) (the paper's eq. 8 / 12); solved
exactly this is the exact integral of the interpolating polynomial, for which B(h)
cancels. B(h) matters where UniPC fixes a coefficient instead of solving: a_1 = 1/2
for UniP-2 and UniC-1 (Zhao et al., sec. 3.2, Table 7), i.e. the first-derivative
moment becomes B(h) / 2 (bh1: h/2; bh2: (1 - e^{-h})/2 in the data form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from ..parameterization import Prediction
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..stepping import Solver, Step, StepContext
from .base import register
from ..tuned import NOISE_FORM_MAX_H
from .exponential import Node, check_form, check_order, clean_end, ddim_limit, exp_moments
from .exponential import exp_weights, final_step_order, history_nodes, lincomb, lowered_order
from .lagrange import lagrange_weights


class UniPCState(NamedTuple):
    """History (newest first) and the previous predictor step, for the corrector."""

    hist: tuple[Node, ...]
    n_steps: int
    prev: tuple[float, int] | None  # (lambda_s, predictor order) of the step just taken


def fixed_g1(h: float, data: bool, variant: str) -> float:
    """The first-derivative moment with UniPC's fixed a_1 = 1/2: B(h) / 2 in the sign
    convention of ``exp_weights`` (data form: hh = -h, noise form: hh = h)."""
    if variant == "bh1":
        return 0.5 * h
    return -0.5 * math.expm1(-h) if data else 0.5 * math.expm1(h)


@register
@dataclass(frozen=True)
class UniPC(Solver):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC-p corrector, Alg. 2 (multistep).

    ``order`` is the convergence order (the Solver contract): with the corrector the
    predictor uses order - 1 outputs (UniPC-p in the paper / diffusers'
    ``solver_order=p`` is ``UniPC(order=p + 1)``); without it, ``order`` outputs.
    ``variant`` picks B(h): 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1). ``form``
    'data' is the x0-prediction UniPC (default), 'noise' the eps one. The first step
    from alpha = 0, ``lower_order_final`` and the clean-end rule (``final_order``) are
    ``dpm_solver``'s. The corrector is not applied after the last step (it would need
    a model call at the clean end).

    Defaults: order 4 (UniP-3 + UniC, diffusers' ``solver_order=3``) on the fitted
    ``tuned_lambda`` grid (``benchmarks/grid_search.py``, fitted with this solver on
    mixtures other than the benchmark's): on the 64-d sharp-mode oracle benchmark its RMSE
    at NFE 5/8/10/15/20 is 0.066/0.044/0.030/0.0017/0.0012 (uniform lambda: 0.153/0.062/
    0.032/0.041/0.0034) with within-mode spread 1.00-1.02x of the truth at NFE 10-20.
    """

    order: int = 4
    variant: str = "bh2"
    corrector: bool = True
    form: str = "data"
    lower_order_final: bool = True
    final_order: int = 2
    name = "unipc"
    stochastic = False
    nfe_per_step = 1
    default_grid = "tuned_lambda"
    paper_grid = "uniform_lambda"  # the 'logSNR' steps of Zhao et al. 2023 for pixel space

    def __post_init__(self) -> None:
        low = 2 if self.corrector else 1
        if (
            isinstance(self.order, bool)
            or not isinstance(self.order, int)
            or not low <= self.order <= 8
        ):
            raise ValueError(
                f"order must be an integer in {low}..8{' with the corrector on' if self.corrector else ''}, "
                f"got {self.order!r}"
            )
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(
                f"variant must be 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {self.variant!r}"
            )
        check_form(self.form)
        check_order(self.final_order, range(1, 4), "final_order")

    @property
    def predictor_order(self) -> int:
        return self.order - 1 if self.corrector else self.order

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        return UniPCState((), grid.n_steps, None)

    def _weights(self, nodes: list[float], h: float, data: bool) -> list[float]:
        g = [h * v for v in exp_moments(-h if data else h, len(nodes))]
        if len(nodes) == 2:  # UniP-2 / UniC-1: a_1 = 1/2
            g[1] = fixed_g1(h, data, self.variant)
        return lagrange_weights(nodes, g)

    def _correction(
        self, step: Step, pred: Prediction, state: UniPCState
    ) -> tuple[list[float], list[Tensor]]:
        """UniC: x_t^c = x~_t + c_t sum_j (beta^C_j - beta^P_j) M_j over the step s -> t, as
        (coefficients, outputs), so the predictor can take it in the same pass."""
        lam_s, k = state.prev  # type: ignore[misc]
        data = self.form == "data"
        h = step.lam0 - lam_s
        nodes, outs = history_nodes(state.hist, lam_s, h, k, data)
        beta_p = self._weights(nodes, h, data)
        beta_c = self._weights(nodes + [1.0], h, data)
        c = step.alpha0 if data else -step.sigma0
        coeffs = [c * (bc - bp) for bc, bp in zip(beta_c, beta_p)] + [c * beta_c[-1]]
        return coeffs, outs + [pred.x0 if data else pred.eps]

    def step(
        self, ctx: StepContext, x: Tensor, step: Step, state: Any
    ) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), UniPCState((), state.n_steps, None)
        correction: tuple[list[float], list[Tensor]] = ([], [])
        if self.corrector and state.prev is not None:
            correction = self._correction(step, pred, state)
        lam0 = step.lam0
        hist = (Node.of(pred, lam0),) + state.hist[: max(self.order, self.final_order)]
        if step.to_zero:
            k = final_step_order(
                self.final_order, state.n_steps, self.lower_order_final
            )
            return clean_end(_corrected(x, correction), step, hist, k), state
        h = step.lam1 - lam0
        k = lowered_order(
            self.predictor_order,
            len(hist) - 1,
            step,
            state.n_steps,
            self.lower_order_final,
        )
        data = self.form == "data"
        if (
            not data and h > NOISE_FORM_MAX_H
        ):  # first order, and no corrector over this step
            weights = exp_weights(step.alpha0, step.sigma0, step.alpha1, step.sigma1, h, [0.0], False)
            x_next = lincomb(_corrected(x, correction), *weights, [pred.eps])
            return x_next, UniPCState(hist, state.n_steps, None)
        nodes, outs = history_nodes(hist, lam0, h, k, data)
        g1 = fixed_g1(h, data, self.variant) if k == 2 else None
        scale, coeffs = exp_weights(step.alpha0, step.sigma0, step.alpha1, step.sigma1, h, nodes, data, g1=g1)
        # predictor of the corrected x in one pass: scale (x + sum c_j M_j) + sum b_j M_j,
        # each output (the same tensors in both sums) weighted once
        weights: dict[int, float] = {}
        terms: dict[int, Tensor] = {}
        for w, t in [*((scale * c, m) for c, m in zip(*correction)), *zip(coeffs, outs)]:
            weights[id(t)] = weights.get(id(t), 0.0) + w
            terms[id(t)] = t
        x_next = lincomb(x, scale, list(weights.values()), list(terms.values()))
        return x_next, UniPCState(hist, state.n_steps, (lam0, k))


def _corrected(x: Tensor, correction: tuple[list[float], list[Tensor]]) -> Tensor:
    """x with the UniC correction applied (x itself when there is none)."""
    return lincomb(x, 1.0, *correction) if correction[0] else x
