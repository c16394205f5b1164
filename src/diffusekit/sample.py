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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .denoiser import Cond, DenoiserLike, device_of
from .noise import NoiseSource
from .parameterization import Prediction
from .progress import progress_bar
from .schedules.base import NoiseSchedule
from .schedules.grids import GRIDS, Grid, make_grid
from .solvers import DEFAULT_NFE, DEFAULT_SOLVER, make_solver
from .stepping import Constraint, Solver, Step, StepContext
from .utils import check_positive_int


@dataclass
class Solution:
    """The result of ``sample``: final x, the grid, NFE, and the saved trajectory (N + 1, B, ...)."""

    x: Tensor
    grid: Grid
    nfe: int
    trajectory: Tensor | None = None
    x0_trajectory: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class StepInfo(NamedTuple):
    """What a per-step ``callback`` of ``sample`` receives after grid step ``i``.

    ``t`` is the time reached, ``x`` the state there (after the constraints) and ``x0``
    the newest data prediction of the step (None when the step made no model call).
    """

    i: int
    t: float
    x: Tensor
    x0: Tensor | None


Resampler = Callable[[Tensor, Step, StepContext], Tensor]


def forward_jump(x: Tensor, step: Step, ctx: StepContext) -> Tensor:
    """Move x from t0 up to a noisier t1 by the exact forward transition q(x_t1 | x_t0).

    x_t1 = (alpha1 / alpha0) x_t0 + sqrt(sigma1^2 - (alpha1 sigma0 / alpha0)^2) z, the
    marginal-preserving jump of RePaint (Lugmayr et al. 2022, eq. 1 applied between
    two times), with z from the sample's own noise stream.
    """
    ratio = step.alpha1 / step.alpha0
    var = step.sigma1**2 - (ratio * step.sigma0) ** 2
    if var < -1e-12 * max(step.sigma1**2, 1e-300):
        raise ValueError(f"a jump from t={step.t0:g} to t={step.t1:g} lowers the noise: not a forward transition")
    return ratio * x + math.sqrt(max(var, 0.0)) * ctx.noise()


GRID_POLICIES = ("default", "paper")
"""Grid names that pick each solver's own grid: its ``default_grid`` or its ``paper_grid``."""


def grid_rule(solver: Solver, grid: str | None = None) -> str:
    """The grid rule to use: ``None`` / "default" -> the solver's ``default_grid``, "paper" -> its
    ``paper_grid``, any other name -> that registered rule (checked)."""
    if grid is None or grid == "default":
        return solver.default_grid
    if grid == "paper":
        return solver.paper_grid
    if grid not in GRIDS:
        raise ValueError(f"unknown step grid {grid!r}; allowed: {', '.join([*GRID_POLICIES, *GRIDS.names()])}")
    return grid


def sample(
    denoiser: DenoiserLike,
    solver: Solver | Tensor | None = None,
    x_T: Tensor | None = None,
    *,
    steps: int | None = None,
    grid: Grid | str | None = None,
    shape: Sequence[int] | None = None,
    batch: int | None = None,
    cond: Cond = None,
    constraints: Sequence[Constraint] = (),
    resample: Resampler = forward_jump,
    callback: Callable[[StepInfo], None] | None = None,
    seed: int | Sequence[int] | Tensor = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grad: bool = False,
    save_trajectory: bool = False,
    progress: bool = True,
) -> Solution:
    """Run ``solver`` on ``denoiser`` along a grid, from ``x_T`` (or a prior draw) to data.

    Without a solver (``sample(denoiser, x_T, steps=n)`` or ``solver=None``) the library's
    default runs: ``DEFAULT_SOLVER`` (deterministic, an ODE sampler, so it also encodes) on its
    own grid, at ``DEFAULT_NFE`` model calls unless ``steps`` or a grid is given.

    ``denoiser`` is anything with a ``schedule`` and a call ``(x, t, cond) -> Prediction``
    (``DenoiserLike``: a ``Denoiser``, the oracle, a guidance or distillation wrapper).
    Give a ``Grid``, or ``steps`` and optionally a grid name (a rule of ``GRIDS``, or the
    policy "default" = ``solver.default_grid``, "paper" = ``solver.paper_grid``); without
    ``steps``, ``solver.default_steps``. Without ``x_T``, ``shape`` (one sample's shape)
    and ``batch`` give a prior draw from the per-sample noise streams of ``seed``; a grid
    that starts below t_max (SDEdit) needs ``x_T`` at its first time.

    A grid may go back up (RePaint's jumps): each rising interval is taken by
    ``resample`` (the exact forward transition by default) and the solver restarts on
    the next falling run. Constraints' ``after_step`` follows every interval;
    ``callback`` gets a ``StepInfo`` after every interval. ``grad=True`` keeps autograd
    on through the whole loop (differentiating samples with respect to x_T, the network
    or a guidance term); by default the loop runs without it, and a guidance wrapper
    that needs a gradient enables it inside its own call.
    """
    if isinstance(solver, Tensor):  # sample(denoiser, x_T, ...): the default solver
        if x_T is not None:
            raise ValueError("give x_T once: sample(denoiser, x_T) or sample(denoiser, solver, x_T)")
        solver, x_T = None, solver
    if solver is None:
        solver = make_solver(DEFAULT_SOLVER)
        if steps is None and not isinstance(grid, Grid):
            steps = steps_for_nfe(solver, denoiser.schedule, DEFAULT_NFE, grid)
    with torch.set_grad_enabled(grad):
        return _run(
            denoiser, solver, x_T, steps, grid, shape, batch, cond, constraints, resample, callback,
            seed, device, dtype, save_trajectory, progress,
        )


def _run(
    denoiser: DenoiserLike,
    solver: Solver,
    x_T: Tensor | None,
    steps: int | None,
    grid: Grid | str | None,
    shape: Sequence[int] | None,
    batch: int | None,
    cond: Cond,
    constraints: Sequence[Constraint],
    resample: Resampler,
    callback: Callable[[StepInfo], None] | None,
    seed: int | Sequence[int] | Tensor,
    device: torch.device | str | None,
    dtype: torch.dtype,
    save_trajectory: bool,
    progress: bool,
) -> Solution:
    schedule = denoiser.schedule
    if not isinstance(grid, Grid):
        n = check_positive_int("steps", steps if steps is not None else solver.default_steps)
        grid = make_grid(grid_rule(solver, grid), schedule, n)
    elif steps is not None and steps != grid.n_steps:
        raise ValueError(f"steps={steps} disagrees with the given grid's {grid.n_steps} steps")
    if x_T is None:
        if shape is None or batch is None:
            raise ValueError("give x_T, or shape and batch for a prior draw")
        check_positive_int("batch", batch)
        if float(grid.t[0]) < schedule.t_max:
            raise ValueError(f"the grid starts at t={float(grid.t[0]):g} < t_max={schedule.t_max:g}: give x_T at that time")
        device = device or device_of(denoiser)
        noise_src = NoiseSource.from_seed(seed, batch, device)
        x_T = schedule.prior_sample(noise_src.normal(0, tuple(shape), dtype))
    else:
        noise_src = NoiseSource.from_seed(seed, x_T.shape[0], x_T.device)
    x = x_T
    counter = {"nfe": 0, "stream": 0}
    x0_saved: list[Tensor] = []
    newest: list[Prediction] = []

    def model(xt: Tensor, t: float | Tensor) -> Prediction:
        pred = denoiser(xt, t, cond)
        for c in constraints:
            pred = c.on_prediction(pred, t)
        counter["nfe"] += 1
        if save_trajectory:
            x0_saved.append(pred.x0)
        if callback is not None:
            newest[:] = [pred]
        return pred

    def noise() -> Tensor:
        counter["stream"] += 1
        return noise_src.normal(counter["stream"], x.shape[1:], x.dtype)

    cache_times = getattr(denoiser, "cache_times", None)
    if grid.per_sample:
        if not solver.per_sample_times:
            raise ValueError(
                f"solver {solver.name!r} takes one time per step; a per-sample grid needs a solver with "
                "per_sample_times (`diffusekit solvers` lists them)"
            )
        if grid.t.shape[1] != x.shape[0]:
            raise ValueError(f"the per-sample grid has {grid.t.shape[1]} columns for a batch of {x.shape[0]}")
        ts, alphas, sigmas = grid.t.unbind(0), grid.alpha.unbind(0), grid.sigma.unbind(0)
    else:
        if cache_times is not None:
            cache_times(grid.t[grid.sigma > 0])  # every grid point's coefficients in one call
        ts, alphas, sigmas = grid.t.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
    ctx = StepContext(model, schedule, noise, solver)
    traj = [x] if save_trajectory else []
    runs = grid.falling_runs()
    bar = progress_bar(total=grid.n_steps, desc=solver.name, leave=False, enabled=progress)
    for start, stop in runs:
        if grid.jumps and ts[stop] > ts[start]:  # a rising interval: jump up, no solver
            st = Step(0, ts[start], ts[stop], alphas[start], sigmas[start], alphas[stop], sigmas[stop], None)
            x = resample(x, st, ctx)
            x = _after_step(x, st, ctx, constraints, start, callback, newest, save_trajectory, traj, bar)
            continue
        sub = grid if (start, stop) == (0, grid.n_steps) else grid.slice(start, stop)
        state = solver.init_state(sub, schedule)
        n = stop - start
        for j in range(n):
            i = start + j
            st = Step(j, ts[i], ts[i + 1], alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1], n - j)
            x, state = solver.step(ctx, x, st, state)
            x = _after_step(x, st, ctx, constraints, i, callback, newest, save_trajectory, traj, bar)
    bar.close()
    return Solution(
        x,
        grid,
        counter["nfe"],
        torch.stack(traj) if save_trajectory else None,
        torch.stack(x0_saved) if save_trajectory and x0_saved else None,
    )


def steps_for_nfe(solver: Solver, schedule: NoiseSchedule, nfe: int, grid: str | None = None) -> int:
    """The most steps of ``solver`` on its default grid (or the named rule or policy) that make at most
    ``nfe`` model calls (at least one step), so a requested budget is the budget used."""
    check_positive_int("nfe", nfe)
    if solver.adaptive:
        return solver.default_steps
    rule = grid_rule(solver, grid)
    n = max(1, math.ceil(nfe / float(solver.nfe_per_step)))
    while n > 1 and solver.nfe(make_grid(rule, schedule, n)) > nfe:  # type: ignore[operator]
        n -= 1
    while solver.nfe(make_grid(rule, schedule, n + 1)) <= nfe:  # type: ignore[operator]
        n += 1
    return n


def _after_step(
    x: Tensor,
    st: Step,
    ctx: StepContext,
    constraints: Sequence[Constraint],
    i: int,
    callback: Callable[[StepInfo], None] | None,
    newest: list[Prediction],
    save_trajectory: bool,
    traj: list[Tensor],
    bar: Any,
) -> Tensor:
    """The loop's work after one grid interval: constraints, callback, trajectory, progress."""
    for c in constraints:
        x = c.after_step(x, st, ctx)
    if callback is not None:
        callback(StepInfo(i, st.t1, x, newest[0].x0 if newest else None))
        newest.clear()
    if save_trajectory:
        traj.append(x)
    bar.update()
    return x
