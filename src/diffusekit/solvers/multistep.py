"""Linear multistep solvers of the probability-flow ODE dx_hat/ds = eps (x_hat = x/alpha, s = sigma/alpha).

All three are Adams-Bashforth methods on the noise prediction in EDM's coordinates
(Karras et al. 2022): an update ``x_hat1 = x_hat0 + (s1 - s0) e'`` with ``e'`` a
combination of the current and past eps. This is exactly PNDM's "transfer part" (the
DDIM step) fed with a multistep "gradient part" (Liu et al. 2022, sec. 3).

- ``plms``: PNDM/PLMS (Liu et al. 2022): fixed 4th-order coefficients
  (55, -59, 37, -9)/24 after a pseudo-Runge-Kutta (PRK) warm start.
- ``ipndm``: improved PNDM (Zhang & Chen 2023, DEIS): the same
  fixed coefficients, started by the lower-order Adams-Bashforth formulas.
- ``lms``: k-diffusion's linear multistep (Karras et al. 2022 codebase): variable-step
  Adams-Bashforth, the Lagrange interpolant of past eps integrated over [s0, s1].

Orders. The fixed coefficients assume equal steps in s. On any other grid (every practical
one: Karras, uniform-t, log-SNR) their local error is O(h^3), so PLMS and iPNDM converge with
order 2 (the h^2 terms of the step-size mismatch cancel, the h^3 ones do not); that is the
``order`` they declare. LMS's variable-step weights keep the formula order ``max_order``.
Started with lower-order steps (LMS, iPNDM), a multistep method's error eventually carries
the start-up's h^2 term; it is tiny when the first steps lie where the flow is straight
(large s), which is why LMS shows order ``max_order`` over practical step counts.

History lives in the returned state (newest first). The step to the clean end (s = 0)
is a multistep step like any other (no model call at s = 0). A step that starts at
alpha = 0 (zero terminal SNR, s = inf) is an Euler step and starts a fresh history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..stepping import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from .base import register
from .lagrange import lagrange_weights, unit_moments
from .runge_kutta import euler_update

History = tuple[tuple[float, Tensor], ...]  # (s_j, eps_j), newest first

#: Adams-Bashforth coefficients for equal steps, newest first (Hairer et al., Solving ODEs I, III.1).
AB_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _check_order(name: str, value: int) -> None:
    if isinstance(value, bool) or value not in AB_COEFFS:
        raise ValueError(f"{name} must be 1, 2, 3 or 4, got {value!r}")


def multistep_update(step: Step, pred: Prediction, coeffs: list[float] | tuple[float, ...], history: History) -> Tensor:
    """x1 = alpha1 (x_hat0 + (s1 - s0) sum_j c_j eps_j) with eps_0 = pred.eps, in an alpha-safe form:
    the Euler step alpha1 x0 + sigma1 eps_0 plus alpha1 (s1 - s0) (sum_j c_j eps_j - eps_0)."""
    out = euler_update(step, pred)
    if len(coeffs) == 1:
        return out
    h = step.sigma1 - step.alpha1 * step.sigma0 / step.alpha0  # alpha1 (s1 - s0)
    out = torch.add(out, pred.eps, alpha=h * (coeffs[0] - 1.0))
    for c, (_, e) in zip(coeffs[1:], history, strict=False):  # history may hold more
        out = torch.add(out, e, alpha=h * c)
    return out


def _euler_only(step: Step) -> bool:
    """Steps where only Euler makes sense: from alpha = 0 (s = inf) or to alpha = 0 (inversion's end)."""
    return step.alpha0 == 0.0 or step.alpha1 == 0.0


@register
@dataclass(frozen=True)
class IPNDM(Solver):
    """Improved PNDM (Zhang & Chen 2023, DEIS, app. "iPNDM"; as in Zhou et al. 2024, AMED):
    Adams-Bashforth in s with the fixed equal-step coefficients of order
    min(max_order, steps so far), no Runge-Kutta warm start: one model call per step.
    Converges with order 2 on unequal steps (order 1 with ``max_order=1``, i.e. Euler/DDIM).
    """

    max_order: int = 4
    name = "ipndm"
    nfe_per_step = 1
    default_grid = "tuned_warp"
    paper_grid = "quadratic_t"  # time-quadratic steps (Zhang & Chen 2023)

    def __post_init__(self) -> None:
        _check_order("max_order", self.max_order)

    @property
    def order(self) -> int:  # type: ignore[override]
        return min(self.max_order, 2)

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> History:
        return ()

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: History) -> tuple[Tensor, History]:
        pred = ctx.model(x, step.t0)
        if _euler_only(step):
            return euler_update(step, pred), ()
        k = min(self.max_order, len(state) + 1)
        out = multistep_update(step, pred, AB_COEFFS[k], state)
        return out, ((step.sigma0 / step.alpha0, pred.eps), *state)[: self.max_order - 1]


@register
@dataclass(frozen=True)
class PLMS(Solver):
    """PNDM / PLMS, Liu et al. 2022 ("Pseudo numerical methods for diffusion models on manifolds"),
    sec. 3: the first three steps are pseudo Runge-Kutta (PRK: classic RK4 whose increments
    are DDIM transfers, midpoints at s_mid = (s0 + s1)/2; 4 model calls each), then pseudo
    linear multistep with e' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3)/24.

    ``warmup``: ``"prk"`` (the paper; N steps cost N + 9 calls), ``"multistep"`` (lower-order
    Adams-Bashforth start, N calls; this is iPNDM) or ``"auto"``: PRK when the grid has at least
    ``prk_min_steps`` steps, else the multistep start, so few-step runs keep NFE = N.
    Order 2 on unequal steps in s (see the module notes), 4 on equal ones.
    """

    warmup: str = "auto"
    prk_min_steps: int = 20
    name = "plms"
    order = 2
    nfe_per_step = 1  # asymptotically; the PRK warm start adds 9 calls in total
    default_grid = "tuned_warp"

    def __post_init__(self) -> None:
        if self.warmup not in ("auto", "prk", "multistep"):
            raise ValueError(f"warmup must be 'auto', 'prk' or 'multistep', got {self.warmup!r}")
        if isinstance(self.prk_min_steps, bool) or not isinstance(self.prk_min_steps, int) or self.prk_min_steps < 0:
            raise ValueError(f"prk_min_steps must be an integer >= 0, got {self.prk_min_steps!r}")

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> History:
        return ()

    def nfe(self, grid: Grid) -> int:
        """One call per step, four on a PRK warm-up step (decided as ``step`` decides)."""
        t, a, sg = grid.t.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
        calls, depth, n = 0, 0, grid.n_steps
        for i in range(n):
            st = Step(i, t[i], t[i + 1], a[i], sg[i], a[i + 1], sg[i + 1], n - i)
            if _euler_only(st):
                calls, depth = calls + 1, 0
                continue
            calls += 4 if self._use_prk(st, (None,) * depth) else 1  # type: ignore[arg-type]
            depth = min(depth + 1, 3)
        return calls

    def _use_prk(self, step: Step, history: History) -> bool:
        if len(history) >= 3 or step.sigma1 == 0.0 or _euler_only(step):
            return False
        if self.warmup == "prk":
            return True
        if self.warmup == "multistep" or step.remaining is None:
            return False
        return step.i + step.remaining >= self.prk_min_steps

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: History) -> tuple[Tensor, History]:
        pred = ctx.model(x, step.t0)
        if _euler_only(step):
            return euler_update(step, pred), ()
        entry = ((step.sigma0 / step.alpha0, pred.eps),)
        if self._use_prk(step, state):
            out = self._prk(ctx, x, step, pred)
        else:
            out = multistep_update(step, pred, AB_COEFFS[min(4, len(state) + 1)], state)
        return out, (*entry, *state)[:3]

    @staticmethod
    def _prk(ctx: StepContext, x: Tensor, step: Step, pred: Prediction) -> Tensor:
        """PNDM's pseudo-RK4 step (Liu et al. 2022) in s; three more model calls."""
        s0 = step.sigma0 / step.alpha0
        s1 = step.sigma1 / step.alpha1
        s_mid = 0.5 * (s0 + s1)
        schedule = ctx.schedule
        t_mid = float(schedule.t_of_log_snr(torch.tensor(-math.log(s_mid), dtype=torch.float64)))
        t_mid = min(max(t_mid, min(step.t0, step.t1)), max(step.t0, step.t1))
        a_mid, sg_mid = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_mid, dtype=torch.float64)))
        x_hat = x / step.alpha0

        def transfer(e: Tensor, alpha: float, sigma: float) -> Tensor:  # DDIM from s0 to sigma/alpha
            return alpha * x_hat + (sigma - alpha * s0) * e

        e1 = pred.eps
        e2 = ctx.model(transfer(e1, a_mid, sg_mid), t_mid).eps
        e3 = ctx.model(transfer(e2, a_mid, sg_mid), t_mid).eps
        e4 = ctx.model(transfer(e3, step.alpha1, step.sigma1), step.t1).eps
        return transfer((e1 + 2 * e2 + 2 * e3 + e4) / 6, step.alpha1, step.sigma1)


@register
@dataclass(frozen=True)
class LMS(Solver):
    """Linear multistep (k-diffusion ``sample_lms``; Karras et al. 2022 codebase): variable-step
    Adams-Bashforth in s of order min(max_order, steps so far), with weights integrating the
    Lagrange interpolant of the past eps exactly (``lagrange_weights``, u = (s - s0) / (s1 - s0)). One call per step.
    """

    max_order: int = 4
    name = "lms"
    nfe_per_step = 1
    default_grid = "tuned_warp"
    paper_grid = "karras"  # k-diffusion's sample_lms grid

    def __post_init__(self) -> None:
        _check_order("max_order", self.max_order)

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.max_order

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> History:
        return ()

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: History) -> tuple[Tensor, History]:
        pred = ctx.model(x, step.t0)
        if _euler_only(step):
            return euler_update(step, pred), ()
        s0 = step.sigma0 / step.alpha0
        k = min(self.max_order, len(state) + 1)
        if k == 1:
            out = euler_update(step, pred)
        else:
            h = step.sigma1 / step.alpha1 - s0
            nodes = [0.0, *((s - s0) / h for s, _ in state[: k - 1])]
            out = multistep_update(step, pred, lagrange_weights(nodes, unit_moments(k)), state)
        return out, ((s0, pred.eps), *state)[: self.max_order - 1]
