"""SDEdit (Meng et al. 2022): image-to-image by noising a reference to t0 and denoising from there.

``sdedit`` perturbs the reference with the exact forward kernel, x_t0 = alpha(t0) x_ref +
sigma(t0) eps (sec. 3), and runs any solver on a grid that
starts at t0: t0 trades faithfulness to the reference (small t0) for realism (large t0).
``ode_edit`` is the deterministic variant: encode the reference to t0 with the probability-flow
ODE (``inversion.invert``) and decode it, possibly under another condition (DDIB, Su et al.
2023, where the decoding model or class differs from the encoding one).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..denoiser import Cond, Denoiser, DenoiserLike
from ..inversion import invert, reconstruct
from ..noise import NoiseSource
from ..sample import Solution, sample
from ..schedules.grids import make_grid
from ..solvers.base import make_solver
from ..stepping import Constraint, Solver


def sdedit(
    denoiser: DenoiserLike,
    solver: str | Solver,
    reference: Tensor,
    t0: float,
    steps: int,
    *,
    grid: str | None = None,
    cond: Cond = None,
    constraints: Sequence[Constraint] = (),
    seed: int | Sequence[int] | Tensor = 0,
    progress: bool = False,
) -> Solution:
    """Edit ``reference`` (B, ...) at strength ``t0``: exact forward noise to t0, then ``steps``
    steps of ``solver`` on its grid rule (or ``grid``) from t_start = t0 to data.

    The perturbation uses the seed's noise stream 0 (the one an unconditional ``sample`` uses for
    its prior draw), so where alpha(t_max) = 0 an edit at t0 = t_max is unconditional sampling.
    """
    solver = make_solver(solver) if isinstance(solver, str) else solver
    schedule = denoiser.schedule
    schedule.validate_t(t0)
    g = make_grid(grid or solver.default_grid, schedule, steps, t_start=t0)
    eps = NoiseSource.from_seed(seed, reference.shape[0], reference.device).normal(0, reference.shape[1:], reference.dtype)
    alpha, sigma = float(g.alpha[0]), float(g.sigma[0])
    x_t0 = alpha * reference + sigma * eps
    return sample(denoiser, solver, x_t0, grid=g, cond=cond, constraints=constraints, seed=seed, progress=progress)


def ode_edit(
    denoiser: Denoiser,
    reference: Tensor,
    t0: float,
    solver: str | Solver = "heun",
    steps: int = 50,
    *,
    grid: str | None = None,
    cond: Cond = None,
    target_cond: Cond = None,
    progress: bool = False,
) -> Tensor:
    """Encode ``reference`` to t0 with the probability-flow ODE under ``cond`` and decode it under
    ``target_cond`` (the same by default, which gives the reference back up to the solver's error).

    Both directions use one grid (``solver``'s rule, or ``grid``) from t0 down to t_min.
    """
    solver = make_solver(solver) if isinstance(solver, str) else solver
    g = make_grid(grid or solver.default_grid, denoiser.schedule, steps, t_start=t0, to_zero=False)
    x_t0 = invert(denoiser, reference, solver, grid=g, cond=cond, progress=progress)
    assert isinstance(x_t0, Tensor)
    return reconstruct(denoiser, x_t0, solver, grid=g, cond=cond if target_cond is None else target_cond, progress=progress)
