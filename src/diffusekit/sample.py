"""The one sampling loop: a grid, a solver that takes one step at a time, constraints, saving.

Sampling data flow (DESIGN.md): each step calls the (possibly guided) denoiser,
passes the Prediction through ``Constraint.on_prediction``, lets the solver
step, then applies ``Constraint.after_step``. The loop counts model calls (NFE),
keeps per-sample noise streams (``NoiseSource``) so a sample never depends on
its batch, can save the whole trajectory and shows a progress bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .denoiser import Cond, Denoiser
from .noise import NoiseSource
from .parameterization import Prediction
from .progress import progress_bar
from .schedules.base import NoiseSchedule
from .schedules.grids import Grid, make_grid
from .utils import check_positive_int


@dataclass(frozen=True)
class Step:
    """One interval of the grid, from (t0, alpha0, sigma0) to (t1, alpha1, sigma1), as float64 numbers.

    ``remaining`` counts the steps left including this one (None when an
    adaptive controller does not know it), for lower-order final steps.
    """

    i: int
    t0: float
    t1: float
    alpha0: float
    sigma0: float
    alpha1: float
    sigma1: float
    remaining: int | None

    @property
    def lam0(self) -> float:
        return _log_snr(self.alpha0, self.sigma0)

    @property
    def lam1(self) -> float:
        return _log_snr(self.alpha1, self.sigma1)

    @property
    def h(self) -> float:
        """lambda1 - lambda0 (DPM-Solver's step size; +inf at the clean end)."""
        return self.lam1 - self.lam0

    @property
    def to_zero(self) -> bool:
        return self.sigma1 == 0.0


def _log_snr(alpha: float, sigma: float) -> float:
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


ModelFn = Callable[[Tensor, "float | Tensor"], Prediction]


@dataclass
class StepContext:
    """What a solver may use: the model (NFE-counted), the schedule, and fresh noise on demand."""

    model: ModelFn
    schedule: NoiseSchedule
    noise: Callable[[], Tensor]


class Constraint(Protocol):
    """Hooks for inpainting, SDEdit, super-resolution, imputation, x0 clipping, ..."""

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction: ...

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor: ...


class Solver:
    """One step of a sampler. Subclasses declare ``order`` (the convergence order that
    the oracle tests check), ``stochastic``, ``nfe_per_step`` and a ``default_grid``.

    Adaptive solvers (``nfe_per_step`` NaN) run their own step-size control inside
    one loop step; ``default_steps`` is the coarse grid they want when none is given.
    """

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    nfe_per_step: float = 1
    default_grid: str = "uniform_t"
    default_steps: int = 50

    @property
    def adaptive(self) -> bool:
        """True when the NFE is set by an error controller, not by the grid."""
        return math.isnan(self.nfe_per_step)

    def init_state(self, grid: Grid) -> Any:
        return None

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Tensor | None, Any]:
        """Advance x from step.t0 to step.t1; return (x_next, error estimate or None, state)."""
        raise NotImplementedError


@dataclass
class Solution:
    """The result of ``sample``: final x, the grid, NFE, and the saved trajectory (N + 1, B, ...)."""

    x: Tensor
    grid: Grid
    nfe: int
    trajectory: Tensor | None = None
    x0_trajectory: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    solver: Solver,
    x_T: Tensor | None = None,
    *,
    steps: int | None = None,
    grid: Grid | None = None,
    shape: Sequence[int] | None = None,
    batch: int | None = None,
    cond: Cond = None,
    constraints: Sequence[Constraint] = (),
    seed: int | Sequence[int] | Tensor = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    save_trajectory: bool = False,
    progress: bool = True,
) -> Solution:
    """Run ``solver`` on ``denoiser`` along a grid, from ``x_T`` (or a prior draw) to data.

    Give either ``grid`` or ``steps`` (then ``solver.default_grid`` is used; with
    neither, ``solver.default_steps``). Without
    ``x_T``, ``shape`` (one sample's shape) and ``batch`` give a prior draw from the
    per-sample noise streams of ``seed``.
    """
    schedule = denoiser.schedule
    if grid is None:
        grid = make_grid(solver.default_grid, schedule, check_positive_int("steps", steps if steps is not None else solver.default_steps))
    elif steps is not None and steps != grid.n_steps:
        raise ValueError(f"steps={steps} disagrees with the given grid's {grid.n_steps} steps")
    if x_T is None:
        if shape is None or batch is None:
            raise ValueError("give x_T, or shape and batch for a prior draw")
        check_positive_int("batch", batch)
        device = device or _device_of(denoiser)
        noise_src = NoiseSource.from_seed(seed, batch, device)
        x_T = schedule.prior_sample(noise_src.normal(0, tuple(shape), dtype))
    else:
        noise_src = NoiseSource.from_seed(seed, x_T.shape[0], x_T.device)
    x = x_T
    counter = {"nfe": 0, "stream": 0}
    x0_saved: list[Tensor] = []

    def model(xt: Tensor, t: float | Tensor) -> Prediction:
        pred = denoiser(xt, t, cond)
        for c in constraints:
            pred = c.on_prediction(pred, t)
        counter["nfe"] += 1
        if save_trajectory:
            x0_saved.append(pred.x0)
        return pred

    def noise() -> Tensor:
        counter["stream"] += 1
        return noise_src.normal(counter["stream"], x.shape[1:], x.dtype)

    denoiser.cache_times(grid.t[grid.sigma > 0])  # every grid point's coefficients in one call
    ctx = StepContext(model, schedule, noise)
    state = solver.init_state(grid)
    traj = [x] if save_trajectory else []
    ts, alphas, sigmas = grid.t.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
    n = grid.n_steps
    for i in progress_bar(range(n), desc=solver.name, leave=False) if progress else range(n):
        st = Step(i, ts[i], ts[i + 1], alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1], n - i)
        x, _, state = solver.step(ctx, x, st, state)
        for c in constraints:
            x = c.after_step(x, st, ctx)
        if save_trajectory:
            traj.append(x)
    return Solution(
        x,
        grid,
        counter["nfe"],
        torch.stack(traj) if save_trajectory else None,
        torch.stack(x0_saved) if save_trajectory and x0_saved else None,
    )


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
