"""One deterministic solver step as a teacher: move x from per-sample times t0 to t1 with any
registered solver that takes per-sample times (DDIM, Euler, Heun, ...).

Progressive distillation (Salimans & Ho 2022, Alg. 2) uses two DDIM steps of the teacher;
consistency distillation (Song et al. 2023, Alg. 2) one ODE-solver step Phi(x, t_{n+1}, t_n; phi).
Both call the solver's own ``step`` with a one-interval per-sample ``Step``, so the teacher's
step is the library's solver, not a copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..denoiser import Cond, DenoiserLike
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..solvers import make_solver
from ..stepping import Solver, Step, StepContext


def alpha_sigma_to_zero(schedule: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) at per-sample times ``t``, with t = 0 the clean end (1, 0) as on a grid's last point."""
    alpha, sigma = schedule.alpha_sigma(t)
    clean = t == 0
    return torch.where(clean, 1.0, alpha), torch.where(clean, 0.0, sigma)


def _no_noise() -> Tensor:
    raise ValueError("a teacher step must be deterministic; this solver asked for noise")


@dataclass(frozen=True)
class SolverStep:
    """``step(x, t0, t1, cond)``: one step of ``solver`` on ``teacher`` from times t0 to t1 (B,), t1 < t0;
    t1 = 0 is the clean end. ``solver``: a registered name or a ``Solver``, deterministic, with per-sample times."""

    teacher: DenoiserLike
    solver: Solver | str = "heun"

    def __post_init__(self) -> None:
        solver = make_solver(self.solver) if isinstance(self.solver, str) else self.solver
        if solver.stochastic or solver.adaptive or not solver.per_sample_times:
            raise ValueError(f"a teacher step needs a deterministic fixed-step solver with per-sample times, got "
                             f"{solver.name!r}; allowed: ddim, euler, heun (see `diffusekit solvers`)")
        object.__setattr__(self, "solver", solver)

    @torch.no_grad()
    def __call__(self, x: Tensor, t0: Tensor, t1: Tensor, cond: Cond = None) -> Tensor:
        schedule = self.teacher.schedule
        t0, t1 = (t.detach().to("cpu", torch.float64) for t in (t0, t1))
        a0, s0 = schedule.alpha_sigma(t0)
        a1, s1 = alpha_sigma_to_zero(schedule, t1)
        grid = Grid(torch.stack([t0, t1]), torch.stack([a0, a1]), torch.stack([s0, s1]))
        solver: Solver = self.solver  # type: ignore[assignment]
        ctx = StepContext(lambda xt, t: self.teacher(xt, t, cond), schedule, _no_noise)
        out, _ = solver.step(ctx, x, Step(0, t0, t1, a0, s0, a1, s1, 1), solver.init_state(grid, schedule))
        return out
