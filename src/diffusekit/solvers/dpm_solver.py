"""DPM-Solver and DPM-Solver++ (Lu et al. 2022a, 2022b): exponential integrators in log-SNR.

Every step here is ``exponential.exp_weights`` (the exact integral of the polynomial in
lambda through some model outputs, DPM-Solver eq. 3.4 / DPM-Solver++ eq. 8) with the
nodes of one method, and the shared limits at alpha = 0 (``ddim_limit``) and at the
clean end (``clean_end``); see ``solvers/exponential.py``.

Registered names: ``dpm_solver`` (order 1-3, method 'multistep' | 'singlestep', form
'data' | 'noise'), ``dpm_solver_sde`` (order 1-3, eta), ``dpm_solver_adaptive``
(order 2 | 3 = DPM-Solver-12 | 23), and the aliases ``dpmpp_2m``, ``dpmpp_3m``,
``dpmpp_2m_sde``, ``dpmpp_3m_sde`` (subclasses that only change the default order;
every option still applies). All fixed-step ones cost one model call per grid step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..stepping import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..utils import append_dims
from ..tuned import NOISE_FORM_MAX_H
from .base import register
from .controllers import StepSizeController
from .exponential import (
    Node,
    check_form,
    check_order,
    clean_end,
    ddim_limit,
    exp_moments_tensor,
    exp_weights,
    final_step_order,
    history_nodes,
    lincomb,
    lowered_order,
)
from .lagrange import lagrange_weights


class MultistepState(NamedTuple):
    """Multistep history (newest first, finite lambda only) and the grid length."""

    hist: tuple[Node, ...]
    n_steps: int


# ---------------------------------------------------------------------------
# DPM-Solver / DPM-Solver++
# ---------------------------------------------------------------------------


class SinglestepState(NamedTuple):
    """Per-grid-step plan (group start, group order), the grid as floats, and the
    current group's start value and evaluations."""

    plan: tuple[tuple[int, int], ...]
    lam: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    x_start: Tensor | None
    start: int  # grid index the current group integrates from
    group: tuple[Node, ...]
    tail: tuple[Node, ...]  # the last finished group, newest first (for the clean end)
    x_last: Tensor | None  # the value returned by the last step (the loop may have changed it)


def singlestep_orders(n_regular: int, order: int, lower_order_final: bool) -> list[int]:
    """Group sizes (= orders) covering ``n_regular`` grid intervals, one model call each.

    DPM-Solver's adaptive-order allocation (Lu et al. 2022a, sec. 3.4) spends any NFE
    with groups of order k and a remainder of lower order. Here no group is first order
    unless n_regular = 1, so one remainder group never lowers the global order:
    order 3 uses [3, ..., 3] and a remainder [2] or [2, 2], at the end with
    ``lower_order_final`` (as Lu et al.) and otherwise at the start; order 2 uses
    [2, ..., 2], after one [3] when the count is odd.
    """
    if n_regular <= 0:
        return []
    if order == 1 or n_regular == 1:
        return [1] * n_regular
    if n_regular <= order:
        return [n_regular]
    q, r = divmod(n_regular, order)
    if order == 2:  # an odd count: one third-order group, first
        return [2] * q if r == 0 else [3] + [2] * (q - 1)
    full, rest = {0: ([3] * q, []), 1: ([3] * (q - 1), [2, 2]), 2: ([3] * q, [2])}[r]
    return full + rest if lower_order_final else rest + full


@register
@dataclass(frozen=True)
class DPMSolver(Solver):
    """DPM-Solver (Lu et al. 2022a, NeurIPS) and DPM-Solver++ (Lu et al. 2022b), orders 1-3.

    ``form='noise'`` integrates eps (DPM-Solver, eq. 3.4), ``form='data'`` integrates
    the data prediction (DPM-Solver++, eq. 8). ``method='multistep'`` uses earlier
    evaluations (DPM-Solver++(2M), Alg. 2, and the 3M rule); ``method='singlestep'``
    groups ``order`` consecutive grid intervals into one DPM-Solver-k step whose
    intermediate stages are the inner grid points (Alg. 1/2 with r1 = 1/3, r2 = 2/3 on
    a uniform-lambda grid). Either way every grid interval costs exactly one model
    call: NFE = number of steps for any count (``nfe_per_step = 1``): a count that the
    order does not divide gets DPM-Solver's adaptive-order allocation (see
    ``singlestep_orders``), and NFE below the order lowers it. The loop's values inside
    a singlestep group are the stage values.

    Coefficients are the exact exponential integrals of the interpolating polynomial
    (the 'taylor' variant). The first step from alpha = 0 is its exact limit (DDIM).
    The step to the clean end uses ``final_order`` evaluations (``clean_end``): 1 is
    the x0 jump, 2-3 the rho-polynomial rule, which removes the x0 jump's O(sigma_min^2)
    error floor (on the oracle at 160 steps: 8e-5 -> 5e-6); short grids (< 15 steps)
    with ``lower_order_final`` use the jump. ``lower_order_final``: see also
    ``lowered_order`` (multistep) and ``singlestep_orders``.

    Default grid: ``tuned_lambda`` (log-SNR points fitted on sharp oracle mixtures,
    ``benchmarks/grid_search.py``); on the 64-d sharp-mode benchmark it beats Lu et al.'s
    uniform 'logSNR' grid at every NFE 5-20 (order 3: RMSE 0.098 vs 0.183 at 5, 0.042 vs
    0.049 at 10, 0.0052 vs 0.030 at 20) with spread 1.00-1.06x at NFE 10-20.
    """

    order: int = 3
    method: str = "multistep"
    form: str = "data"
    lower_order_final: bool = True
    final_order: int = 2
    name = "dpm_solver"
    stochastic = False
    nfe_per_step = 1
    default_grid = "tuned_lambda"
    paper_grid = "uniform_lambda"  # the 'logSNR' steps of Lu et al. 2022, sec. 3.3

    def __post_init__(self) -> None:
        check_order(self.order, range(1, 4))
        check_form(self.form)
        check_order(self.final_order, range(1, 4), "final_order")
        if self.method not in ("singlestep", "multistep"):
            raise ValueError(
                f"method must be 'singlestep' or 'multistep', got {self.method!r}"
            )

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        n = grid.n_steps
        if self.method == "multistep":
            return MultistepState((), n)
        lam = tuple(grid.lam.tolist())
        n_regular = n - 1 if grid.ends_at_zero else n
        plan: list[tuple[int, int]] = []
        start = 0
        if n_regular > 0 and math.isinf(
            lam[0]
        ):  # alpha = 0: a first-order group of its own
            plan.append((0, 1))
            start = 1
        for q in singlestep_orders(
            n_regular - start, self.order, self.lower_order_final
        ):
            if self.form == "noise" and lam[start + q] - lam[start] > NOISE_FORM_MAX_H:
                plan.extend((start + j, 1) for j in range(q))  # see NOISE_FORM_MAX_H
            else:
                plan.extend([(start, q)] * q)
            start += q
        plan.extend([(start, 1)] * (n - n_regular))
        return SinglestepState(
            tuple(plan),
            lam,
            tuple(grid.alpha.tolist()),
            tuple(grid.sigma.tolist()),
            None,
            0,
            (),
            (),
            None,
        )

    def step(
        self, ctx: StepContext, x: Tensor, step: Step, state: Any
    ) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if self.method == "multistep":
            return self._multistep(x, step, pred, state)
        return self._singlestep(x, step, pred, state)

    def _multistep(
        self, x: Tensor, step: Step, pred: Prediction, state: MultistepState
    ) -> tuple[Tensor, Any]:
        lam0 = step.lam0
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), state
        hist = (Node.of(pred, lam0),) + state.hist[
            : max(self.order, self.final_order) - 1
        ]
        if step.to_zero:
            k = final_step_order(
                self.final_order, state.n_steps, self.lower_order_final
            )
            return clean_end(x, step, hist, k), state
        h = step.lam1 - lam0
        k = lowered_order(
            self.order, len(hist) - 1, step, state.n_steps, self.lower_order_final
        )
        data = self.form == "data"
        if not data and h > NOISE_FORM_MAX_H:
            k = 1
        nodes, outs = history_nodes(hist, lam0, h, k, data)
        x_next = lincomb(x, *exp_weights(step.alpha0, step.sigma0, step.alpha1, step.sigma1, h, nodes, data), outs)
        return x_next, MultistepState(hist, state.n_steps)

    def _singlestep(
        self, x: Tensor, step: Step, pred: Prediction, state: SinglestepState
    ) -> tuple[Tensor, Any]:
        start, q = state.plan[step.i]
        if step.alpha0 == 0.0:
            return ddim_limit(step, pred), state
        if step.to_zero:
            hist = (Node.of(pred, step.lam0),) + state.tail
            k = final_step_order(
                self.final_order, len(state.plan), self.lower_order_final
            )
            return clean_end(x, step, hist, k), state
        if step.i == start or x is not state.x_last:  # a new group, or x changed by a constraint:
            x_start, start, group = x, step.i, ()  # integrate on from the loop's x
        else:
            x_start, start, group = state.x_start, state.start, state.group
        group = group + (Node.of(pred, step.lam0),)
        # integrate from the group start to the next grid point through all stages so far
        lam_s = state.lam[start]
        h = step.lam1 - lam_s
        data = self.form == "data"
        nodes = [(nd.lam - lam_s) / h for nd in group]
        outs = [nd.x0 if data else nd.eps for nd in group]
        weights = exp_weights(state.alpha[start], state.sigma[start], step.alpha1, step.sigma1, h, nodes, data)
        x_next = lincomb(x_start, *weights, outs)
        if step.i + 1 == state.plan[step.i][0] + q:
            return (
                x_next,
                state._replace(
                    x_start=None, group=(), tail=group[::-1][: self.final_order - 1], x_last=None
                ),
            )
        return x_next, state._replace(x_start=x_start, start=start, group=group, x_last=x_next)


# ---------------------------------------------------------------------------
# SDE-DPM-Solver++
# ---------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class DPMSolverSDE(Solver):
    """SDE-DPM-Solver++(kM) (Lu et al. 2022b, sec. 5 and appendix B; the 2M/3M SDE samplers).

    The reverse SDE with noise scale eta in the data form has the exact linear part

        x1 = (sigma1/sigma0) e^{-eta h} x0 + alpha1 int e^{-(1+eta)(lam1 - lam)} (1+eta) D dlam
             + sigma1 sqrt(1 - e^{-2 eta h}) z,

    integrated with the same multistep polynomials as ``dpm_solver`` (z = -(1+eta) h in
    the phi functions). eta = 1 is the reverse SDE (order 1 is then DDPM's posterior
    step), eta = 0 is DPM-Solver++(kM). ``order`` is the drift's polynomial order (1-3).
    """

    order: int = 2
    eta: float = 1.0
    lower_order_final: bool = True
    name = "dpm_solver_sde"
    nfe_per_step = 1
    default_grid = "uniform_lambda"
    paper_grid = "karras"  # k-diffusion's sample_dpmpp_2m_sde / 3m_sde grid

    def __post_init__(self) -> None:
        check_order(self.order, range(1, 4))
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        return MultistepState((), grid.n_steps)

    def step(
        self, ctx: StepContext, x: Tensor, step: Step, state: Any
    ) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if step.to_zero:
            return pred.x0, state
        if (
            step.alpha0 == 0.0
        ):  # h = inf: e^{-eta h} = 0, the noise has full variance sigma1^2
            if self.eta == 0:
                return ddim_limit(step, pred), state
            return pred.x0 * step.alpha1 + ctx.noise() * step.sigma1, state
        lam0 = step.lam0
        h = step.lam1 - lam0
        hist = (Node.of(pred, lam0),) + state.hist[: self.order - 1]
        k = lowered_order(
            self.order, len(hist) - 1, step, state.n_steps, self.lower_order_final
        )
        # the D differences carry Brownian noise: never extrapolate them > 10x their span
        while k > 1 and (lam0 - hist[k - 1].lam) < 0.1 * (k - 1) * h:
            k -= 1
        nodes, outs = history_nodes(hist, lam0, h, k, True)
        weights = exp_weights(step.alpha0, step.sigma0, step.alpha1, step.sigma1, h, nodes, True, eta=self.eta)
        x_next = lincomb(x, *weights, outs)
        if self.eta > 0:
            x_next.add_(
                ctx.noise(),
                alpha=step.sigma1 * math.sqrt(-math.expm1(-2.0 * self.eta * h)),
            )
        return x_next, MultistepState(hist, state.n_steps)


@register
@dataclass(frozen=True)
class DPMSolverPP2M(DPMSolver):
    """Alias: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) = ``dpm_solver`` order 2, multistep, data form."""

    order: int = 2
    name = "dpmpp_2m"


@register
@dataclass(frozen=True)
class DPMSolverPP3M(DPMSolver):
    """Alias: DPM-Solver++(3M) (Lu et al. 2022b) = ``dpm_solver`` order 3, multistep, data form."""

    order: int = 3
    name = "dpmpp_3m"


@register
@dataclass(frozen=True)
class DPMSolverPP2MSDE(DPMSolverSDE):
    """Alias: SDE-DPM-Solver++(2M) = ``dpm_solver_sde`` order 2, eta 1."""

    order: int = 2
    name = "dpmpp_2m_sde"


@register
@dataclass(frozen=True)
class DPMSolverPP3MSDE(DPMSolverSDE):
    """Alias: SDE-DPM-Solver++(3M) = ``dpm_solver_sde`` order 3, eta 1."""

    order: int = 3
    name = "dpmpp_3m_sde"


# ---------------------------------------------------------------------------
# adaptive DPM-Solver-12 / 23
# ---------------------------------------------------------------------------


class _Point(NamedTuple):
    """Per-sample time, alpha, sigma and lambda (float64 CPU tensors of shape (B,))."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor


@register
@dataclass(frozen=True)
class DPMSolverAdaptive(Solver):
    """Adaptive DPM-Solver-12 (``order=2``) and DPM-Solver-23 (``order=3``), Lu et al. 2022a, sec. 4.2.

    Each trial step of size h in lambda computes the lower-order solution (DPM-Solver-1,
    resp. DPM-Solver-2 with r1 = 1/3) and the higher-order one (DPM-Solver-2 with r1 = 1/2,
    resp. DPM-Solver-3 with r1 = 1/3, r2 = 2/3) sharing their model calls (2, resp. 3
    per trial); ``StepSizeController`` accepts or rejects it and proposes the next h.

    The adaptive loop runs inside one loop ``step`` for each grid interval, per sample
    (every sample has its own lambda and h, so results never depend on the batch); use a
    coarse grid, e.g. ``steps=2``: one adaptive interval from t_max to t_min, then the
    clean end (the x0 jump, one model call). NFE is not fixed in advance
    (``nfe_per_step`` is NaN); read it from ``Solution.nfe``.
    """

    order: int = 3
    form: str = "data"
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    safety: float = 0.9
    max_trials: int = 10_000
    name = "dpm_solver_adaptive"
    stochastic = False
    nfe_per_step = math.nan
    default_steps = 2
    default_grid = "uniform_lambda"

    def __post_init__(self) -> None:
        check_order(self.order, range(2, 4))
        check_form(self.form)
        if not self.h_init > 0:
            raise ValueError(f"h_init must be > 0, got {self.h_init!r}")
        StepSizeController(
            self.rtol, self.atol, self.safety
        )  # validates the tolerances

    @property
    def controller(self) -> StepSizeController:
        return StepSizeController(self.rtol, self.atol, self.safety)

    def step(
        self, ctx: StepContext, x: Tensor, step: Step, state: Any
    ) -> tuple[Tensor, Any]:
        if step.to_zero:
            return ctx.model(x, step.t0).x0, state
        t0 = step.t0
        if step.alpha0 == 0.0:  # a DDIM step off the alpha = 0 point, then adapt
            t_a = t0 + 1e-3 * (step.t1 - t0)
            a_a, s_a = (
                float(v)
                for v in ctx.schedule.alpha_sigma(
                    torch.tensor(t_a, dtype=torch.float64)
                )
            )
            first = Step(step.i, t0, t_a, step.alpha0, step.sigma0, a_a, s_a, None)
            x = ddim_limit(first, ctx.model(x, t0))
            t0 = t_a
        return self._adapt(ctx, x, t0, step), state

    def _point(
        self, ctx: StepContext, lam: Tensor, t0: float, t1: float, lam1: float
    ) -> _Point:
        """The time at log-SNR ``lam`` (snapped to t1 at the interval's end), with alpha and sigma."""
        t = ctx.schedule.t_of_log_snr(lam)
        t = torch.where(
            lam >= lam1 - 1e-9 * max(1.0, abs(lam1)), torch.full_like(t, t1), t
        ).clamp(t1, t0)
        alpha, sigma = ctx.schedule.alpha_sigma(t)
        return _Point(t, alpha, sigma, alpha.log() - sigma.log())

    def _update(
        self,
        x: Tensor,
        p0: _Point,
        p1: _Point,
        m0: Tensor,
        m1: Tensor | None,
        r: Tensor | None,
    ) -> Tensor:
        """One exponential step p0 -> p1 with M0 (and M1 at relative node r) per sample."""
        h = p1.lam - p0.lam
        data = self.form == "data"
        if data:
            scale, c, m = p1.sigma / p0.sigma, p1.alpha, exp_moments_tensor(-h, 2)
        else:
            scale, c, m = p1.alpha / p0.alpha, -p1.sigma, exp_moments_tensor(h, 2)
        g0 = h * m[0]

        def b(v: Tensor) -> Tensor:
            return append_dims(v.to(device=x.device, dtype=x.dtype), x.ndim)

        if m1 is None:
            return b(scale) * x + b(c * g0) * m0
        # the linear interpolant through (0, M0), (r, M1), per sample
        beta0, beta1 = lagrange_weights([torch.zeros_like(r), r], [g0, h * m[1]])
        return b(scale) * x + b(c * beta0) * m0 + b(c * beta1) * m1

    def _adapt(self, ctx: StepContext, x: Tensor, t0: float, step: Step) -> Tensor:
        data = self.form == "data"
        ctl = self.controller
        b = x.shape[0]
        def full(v):
            return torch.full((b,), v, dtype=torch.float64)
        lam_end = step.lam1
        lam_start = float(ctx.schedule.log_snr(torch.tensor(t0, dtype=torch.float64)))
        ps = self._point(ctx, full(lam_start), t0, step.t1, lam_end)
        h = full(min(self.h_init, lam_end - lam_start))
        done = torch.zeros(b, dtype=torch.bool)
        def out(pred):
            return pred.x0 if data else pred.eps
        m0: Tensor | None = None
        r1, r2 = (0.5, 1.0) if self.order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        for _ in range(self.max_trials):
            if bool(done.all()):
                return x
            h = torch.where(
                done, torch.zeros_like(h), torch.minimum(h, lam_end - ps.lam)
            )
            pt = self._point(ctx, ps.lam + h, t0, step.t1, lam_end)
            if m0 is None:
                m0 = out(ctx.model(x, ps.t))
            p1 = self._point(ctx, ps.lam + r1 * h, t0, step.t1, lam_end)
            m1 = out(ctx.model(self._update(x, ps, p1, m0, None, None), p1.t))
            rel1 = (p1.lam - ps.lam) / (pt.lam - ps.lam).clamp(min=1e-300)
            if self.order == 2:
                x_low = self._update(x, ps, pt, m0, None, None)
                x_high = self._update(x, ps, pt, m0, m1, rel1.clamp(min=1e-12))
            else:
                x_low = self._update(x, ps, pt, m0, m1, rel1.clamp(min=1e-12))
                p2 = self._point(ctx, ps.lam + r2 * h, t0, step.t1, lam_end)
                rel12 = (p1.lam - ps.lam) / (p2.lam - ps.lam).clamp(min=1e-300)
                u2 = self._update(x, ps, p2, m0, m1, rel12.clamp(min=1e-12))
                m2 = out(ctx.model(u2, p2.t))
                rel2 = (p2.lam - ps.lam) / (pt.lam - ps.lam).clamp(min=1e-300)
                x_high = self._update(x, ps, pt, m0, m2, rel2.clamp(min=1e-12))
            ratio = torch.where(
                done,
                torch.zeros(b, dtype=torch.float64),
                ctl.error_ratio(x_high, x_low, x),
            )
            ok = ctl.accept(ratio) & ~done
            h_used = pt.lam - ps.lam
            mask = append_dims(ok.to(x.device), x.ndim)
            x = torch.where(mask, x_high, x)
            ps = _Point(*(torch.where(ok, a, c) for a, c in zip(pt, ps)))
            done = done | (ok & (pt.t == step.t1))
            h = ctl.propose(torch.where(ok, h_used, h), ratio, self.order)
            if bool(ok.any()):
                m0 = None  # accepted samples moved: evaluate at the new points
        raise RuntimeError(
            f"adaptive DPM-Solver did not reach t={step.t1:g} within max_trials={self.max_trials}"
        )
