"""Deterministic encoding x0 -> x_T by the probability-flow ODE run backwards, and its decoding.

The probability-flow ODE (Song et al. 2021, sec. 4.3) is a bijection between data and
noise; DDIM inversion (Song, Meng & Ermon 2021, sec. 5.4) integrates it from data to
t_max with a deterministic solver. Here any deterministic solver
runs on the reversed grid (increasing t): the solvers step in EDM's coordinates
x_hat = x/alpha, s = sigma/alpha, which are symmetric in the direction of s.

The encoding starts at t_min from x_{t_min} = alpha(t_min) x0 (the data taken at the first
point where the model is defined), and ``reconstruct`` ends there and divides by
alpha(t_min), so a round trip differs from x0 only by the solvers' discretisation error.
"""

from __future__ import annotations

from torch import Tensor

from .denoiser import Cond, Denoiser
from .sample import Solution, sample
from .stepping import Solver
from .schedules.grids import Grid, make_grid
from .solvers import adaptive_ode, multistep, runge_kutta  # noqa: F401  (registers the solvers)
from .solvers.base import make_solver


def _resolve(solver: str | Solver) -> Solver:
    solver = make_solver(solver) if isinstance(solver, str) else solver
    if solver.stochastic:
        raise ValueError(f"inversion needs a deterministic solver, got {solver.name!r} with noise")
    return solver


def encoding_grid(denoiser: Denoiser, solver: Solver, steps: int, grid: str | None = None) -> Grid:
    """The solver's grid (or the named rule) from t_max to t_min without the clean end."""
    return make_grid(grid or solver.default_grid, denoiser.schedule, steps, to_zero=False)


def invert(
    denoiser: Denoiser,
    x0: Tensor,
    solver: str | Solver = "heun",
    steps: int = 50,
    *,
    grid: str | Grid | None = None,
    cond: Cond = None,
    progress: bool = False,
    return_solution: bool = False,
) -> Tensor | Solution:
    """Encode clean data ``x0`` to x_T: solve the probability-flow ODE from t_min up to t_max.

    ``grid`` names a grid rule or gives a decreasing ``Grid`` without the clean end (the one a
    later ``reconstruct`` uses); by default the solver's own rule with ``steps`` steps.
    """
    solver = _resolve(solver)
    g = grid if isinstance(grid, Grid) else encoding_grid(denoiser, solver, steps, grid)
    if g.ends_at_zero:
        raise ValueError("the encoding grid must end at t_min, not at the clean end (use to_zero=False)")
    rev = Grid(g.t.flip(0), g.alpha.flip(0), g.sigma.flip(0))
    x_start = x0 * float(rev.alpha[0])
    sol = sample(denoiser, solver, x_start, grid=rev, cond=cond, progress=progress)
    return sol if return_solution else sol.x


def reconstruct(
    denoiser: Denoiser,
    x_T: Tensor,
    solver: str | Solver = "heun",
    steps: int = 50,
    *,
    grid: str | Grid | None = None,
    cond: Cond = None,
    progress: bool = False,
) -> Tensor:
    """Decode x_T back to data along the same grid: solve down to t_min and divide by alpha(t_min)."""
    solver = _resolve(solver)
    g = grid if isinstance(grid, Grid) else encoding_grid(denoiser, solver, steps, grid)
    sol = sample(denoiser, solver, x_T, grid=g, cond=cond, progress=progress)
    return sol.x / float(g.alpha[-1])


def round_trip_error(
    denoiser: Denoiser,
    x0: Tensor,
    solver: str | Solver = "heun",
    steps: int = 50,
    *,
    grid: str | None = None,
    cond: Cond = None,
) -> tuple[Tensor, Tensor]:
    """(x_T, per-sample RMS error of reconstruct(invert(x0)) against x0)."""
    x_T = invert(denoiser, x0, solver, steps, grid=grid, cond=cond)
    assert isinstance(x_T, Tensor)
    back = reconstruct(denoiser, x_T, solver, steps, grid=grid, cond=cond)
    return x_T, (back - x0).flatten(1).pow(2).mean(1).sqrt()


__all__ = ["encoding_grid", "invert", "reconstruct", "round_trip_error"]
