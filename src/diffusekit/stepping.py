"""What a solver sees and implements: the grid interval (``Step``), the loop's services
(``StepContext``), the ``Solver`` interface and the ``Constraint`` hooks.

The loop that drives them is ``diffusekit.sample``; the solvers live in ``diffusekit.solvers``.
Kept apart from both so that solvers and the loop import this, and the loop may import
the solvers (its default) without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .parameterization import Prediction
from .schedules.base import NoiseSchedule
from .schedules.grids import Grid
from .utils import append_dims

Number = float | Tensor  # a shared float64 number, or one per sample


@dataclass(frozen=True)
class Step:
    """One interval of the grid, from (t0, alpha0, sigma0) to (t1, alpha1, sigma1).

    On an ordinary grid the numbers are float64 Python floats. On a per-sample grid
    (``Grid`` with t of shape (N + 1, B)) they are CPU float64 tensors of shape (B,), and
    only solvers with ``per_sample_times`` accept them; ``like(x)`` makes them broadcast
    against x. ``remaining`` counts the steps left including this one (None when an
    adaptive controller does not know it), for lower-order final steps.
    """

    i: int
    t0: Number
    t1: Number
    alpha0: Number
    sigma0: Number
    alpha1: Number
    sigma1: Number
    remaining: int | None

    @property
    def lam0(self) -> Number:
        return _log_snr(self.alpha0, self.sigma0)

    @property
    def lam1(self) -> Number:
        return _log_snr(self.alpha1, self.sigma1)

    @property
    def h(self) -> Number:
        """lambda1 - lambda0 (DPM-Solver's step size; +inf at the clean end)."""
        return self.lam1 - self.lam0

    @property
    def to_zero(self) -> bool:
        """The step ends in clean data (a per-sample grid shares its clean end)."""
        if isinstance(self.sigma1, Tensor):
            return bool((self.sigma1 == 0).all())
        return self.sigma1 == 0.0

    def like(self, x: Tensor) -> "Step":
        """The step with per-sample numbers shaped (B, 1, ...) in x's dtype and device; unchanged
        when the numbers are shared floats."""
        if not isinstance(self.alpha0, Tensor):
            return self

        def cast(v: Number) -> Number:
            return append_dims(v.to(device=x.device, dtype=x.dtype), x.ndim) if isinstance(v, Tensor) else v

        return Step(self.i, self.t0, self.t1, *(cast(v) for v in (self.alpha0, self.sigma0, self.alpha1, self.sigma1)), self.remaining)


def _log_snr(alpha: Number, sigma: Number) -> Number:
    if isinstance(alpha, Tensor) or isinstance(sigma, Tensor):
        return torch.as_tensor(alpha).log() - torch.as_tensor(sigma).log()
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


ModelFn = Callable[[Tensor, "float | Tensor"], Prediction]


@dataclass
class StepContext:
    """What a solver may use: the model (NFE-counted), the schedule, and fresh noise on demand.

    ``solver`` is the solver the loop runs (None where a solver steps another on its own context):
    a constraint that reads the step's law from it, as Algorithm 1's mean shift reads the
    ancestral step's variance (``guidance.MeanShiftClassifierGuidance``)."""

    model: ModelFn
    schedule: NoiseSchedule
    noise: Callable[[], Tensor]
    solver: "Solver | None" = None


class Constraint(Protocol):
    """Hooks for inpainting, SDEdit, super-resolution, imputation, x0 clipping, ..."""

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction: ...

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor: ...


class Solver:
    """One step of a sampler. Subclasses declare ``order`` (the convergence order that
    the oracle tests check), ``stochastic``, ``nfe_per_step``, a ``default_grid`` (diffusekit's
    choice) and a ``paper_grid`` (the one its paper uses; ``grid="paper"`` selects it).

    Adaptive solvers (``nfe_per_step`` NaN) run their own step-size control inside
    one loop step; ``default_steps`` is the coarse grid they want when none is given.

    Contract: ``step`` continues from the ``x`` it is given. Constraints may change x
    between steps (``after_step``), so a solver that keeps its own copy of an earlier
    output (a corrector, a singlestep stage) checks ``x is`` that copy and otherwise
    continues from the given x (``tests/test_contracts.py`` checks every solver).
    """

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    per_sample_times: bool = False  # accepts a per-sample grid (Step numbers of shape (B,))
    paper_grid: str = "uniform_t"  # the grid of the solver's paper (grid policy "paper")
    nfe_per_step: float = 1
    default_grid: str = "uniform_t"
    default_steps: int = 50

    @property
    def adaptive(self) -> bool:
        """True when the NFE is set by an error controller, not by the grid."""
        return math.isnan(self.nfe_per_step)

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        """Fresh state for a run along ``grid`` (a falling run of the loop's grid)."""
        return None

    def nfe(self, grid: Grid) -> int | None:
        """The model calls a run along ``grid`` makes (None when an error controller decides)."""
        return None if self.adaptive else int(self.nfe_per_step * grid.n_steps)

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        """Advance x from step.t0 to step.t1; return (x_next, state)."""
        raise NotImplementedError
