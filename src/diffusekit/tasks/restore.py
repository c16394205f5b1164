"""One entry point for the zero-shot methods on a linear problem y = A x0 (+ noise), by name.

``restore`` runs replacement, RePaint, DDNM, PiGDM or DPS with DDPM ancestral steps (Ho et al.
2020) on a grid uniform in log-SNR, which suits every schedule (VP, VE, EDM). It is what the
`diffusekit inpaint / superres / deblur` commands and benchmarks/restoration_on_digits.py run.
"""

from __future__ import annotations

from torch import Tensor

from ..denoiser import Cond, DenoiserLike
from ..sample import Solution, sample
from ..schedules.grids import make_grid
from ..solvers import make_solver
from ..solvers.constraints import ClipX0
from ..stepping import Constraint
from ..utils import check_positive_int
from .ddnm import DDNM
from .dps import DPS
from .inpainting import Replacement, repaint_grid
from .operators import LinearOperator
from .pigdm import PiGDM

#: The method names ``restore`` takes.
METHODS: tuple[str, ...] = ("pigdm", "ddnm", "dps", "replacement", "repaint")
GRID_RULE = "uniform_lambda"


def restore(
    denoiser: DenoiserLike,
    operator: LinearOperator,
    y: Tensor,
    shape: tuple[int, ...],
    *,
    method: str = "pigdm",
    steps: int = 100,
    noise_std: float = 0.0,
    data_var: float = 0.25,
    zeta: float = 1.0,
    jump_length: int = 5,
    resamples: int = 5,
    seed: int = 0,
    cond: Cond = None,
    clip: bool = False,
    progress: bool = False,
) -> Solution:
    """Restore one x0 of ``shape`` per row of ``y`` (B, ...) with ``method`` at ``steps`` DDPM steps.

    ``noise_std``: the measurement's noise (PiGDM's weighting; the projections treat y as noiseless);
    ``data_var``: PiGDM's prior variance v; ``zeta``: the DPS step; ``jump_length`` and
    ``resamples``: RePaint's schedule (steps + (resamples - 1) jump_length (steps / jump_length - 1)
    model calls). ``cond``: the denoiser's condition (e.g. the null label to use a model trained with label
    dropout unconditionally). ``clip``: clamp every data prediction to [-1, 1] before the method's own
    projection (Ho et al. 2020's clipping; keeps PiGDM finite on a DDPM-linear eps model, whose first guided
    prediction at alpha_T = 0.006 is ~1e5 and NaN five steps later: benchmarks/RESULTS.md, Fashion-MNIST).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    check_positive_int("steps", steps)
    schedule, solver = denoiser.schedule, make_solver("ddpm")
    grid = (repaint_grid(schedule, steps, jump_length, resamples, rule=GRID_RULE) if method == "repaint"
            else make_grid(GRID_RULE, schedule, steps))
    model: DenoiserLike = denoiser
    constraints: list[Constraint] = [ClipX0()] if clip else []
    if method in ("replacement", "repaint"):
        constraints += [Replacement(operator, y)]
    elif method == "ddnm":
        constraints += [DDNM(operator, y)]
    elif method == "pigdm":
        model = PiGDM(denoiser, operator, y, noise_std=noise_std, data_var=data_var)
    else:
        model = DPS(denoiser, operator, y, zeta=zeta)
        constraints += [model]
    return sample(model, solver, grid=grid, shape=shape, batch=y.shape[0], constraints=constraints, seed=seed,
                  cond=cond, device=y.device, progress=progress)
