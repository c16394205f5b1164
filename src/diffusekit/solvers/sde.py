"""Reverse-SDE samplers of score-based models (Song et al. 2021, "Score-based generative
modeling through SDEs", sec. 4 and app. E, G) and NCSN's annealed Langevin dynamics
(Song & Ermon 2019, Alg. 1), on every schedule.

The reverse SDE of dx = f(t) x dt + g(t) dW is (Anderson 1982; Song et al. 2021, eq. 6)

    dx = [f x - g^2 grad log p_t(x)] dt + g dW_bar,   grad log p_t = -eps_hat / sigma,

with (f, g^2) from ``NoiseSchedule.drift_diffusion``. Where alpha = 0 (zero terminal SNR,
rectified flow at t = 1) f and g are infinite; a step starting there is the exact ancestral
draw x1 = alpha1 x0_hat + sigma1 z instead (x_t carries no information about x0 there). The
step to the clean end is the x0 jump (Song et al.'s final "denoising" step). Noise is drawn
once per predictor or corrector move, only when used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..sample import Solver, Step, StepContext
from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..utils import append_dims
from .base import make_solver, register
from ..utils import check_positive_int

SdeCoeffs = tuple[tuple[float, ...], tuple[float, ...]]  # f and g^2 at each grid point


def _from_pure_noise(ctx: StepContext, step: Step, pred: Prediction) -> Tensor:
    """q(x_t1 | x_t0, x0) for alpha0 = 0: x_t0 is pure noise, so x_t1 = alpha1 x0 + sigma1 z."""
    return step.alpha1 * pred.x0 + step.sigma1 * ctx.noise()


def _grid_sde_coeffs(schedule: NoiseSchedule, grid: Grid) -> SdeCoeffs:
    """(f, g^2) at every grid point strictly inside the process (alpha > 0, sigma > 0); NaN elsewhere."""
    inside = (grid.alpha > 0) & (grid.sigma > 0)
    f = torch.full_like(grid.t, math.nan)
    g2 = torch.full_like(grid.t, math.nan)
    if bool(inside.any()):
        fi, gi = schedule.drift_diffusion(grid.t[inside])
        f[inside], g2[inside] = fi.double(), gi.double()
    return tuple(f.tolist()), tuple(g2.tolist())


@register
@dataclass(frozen=True)
class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, sec. 4.1-4.2, the "Euler-Maruyama" predictor):

        x1 = x + (f x + g^2 eps_hat / sigma0) dt + g sqrt(|dt|) z,   dt = t1 - t0 < 0,

    with f, g^2 at t0 (computed for the whole grid in one call at the first step).
    """

    name = "euler_maruyama"
    order = 1  # weak order; strong order 1/2
    stochastic = True
    nfe_per_step = 1
    default_grid = "uniform_lambda"  # geometric in s: Song et al.'s VE grid, close to uniform t on VP

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Grid | SdeCoeffs:
        return grid

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Grid | SdeCoeffs) -> tuple[Tensor, SdeCoeffs]:
        if isinstance(state, Grid):
            state = _grid_sde_coeffs(ctx.schedule, state)
        elif not isinstance(state, tuple):
            raise ValueError("euler_maruyama needs the state from its init_state(grid)")
        pred = ctx.model(x, step.t0)
        if step.sigma1 == 0.0:
            return pred.x0, state
        if step.alpha0 == 0.0:
            return _from_pure_noise(ctx, step, pred), state
        f, g2 = state[0][step.i], state[1][step.i]
        dt = step.t1 - step.t0
        out = (1.0 + f * dt) * x + (g2 * dt / step.sigma0) * pred.eps
        return out + math.sqrt(g2 * abs(dt)) * ctx.noise(), state


@register
@dataclass(frozen=True)
class ReverseDiffusion(Solver):
    """The reverse-diffusion predictor (Song et al. 2021, app. E): reverse the discretised
    forward step x_t0 = (alpha0/alpha1) x_t1 + sigma_{0|1} z (VDM, eq. 10), giving

        x1 = (2 - alpha0/alpha1) x + sigma_{0|1}^2 grad log p_t0(x) + sigma_{0|1} z,

    sigma_{0|1}^2 = sigma0^2 - (alpha0/alpha1)^2 sigma1^2: Song et al.'s VP and VE predictors on any grid.
    """

    name = "reverse_diffusion"
    order = 1
    stochastic = True
    nfe_per_step = 1
    default_grid = "uniform_lambda"  # geometric in s: Song et al.'s VE grid, close to uniform t on VP

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if step.sigma1 == 0.0:
            return pred.x0, state
        if step.alpha0 == 0.0:
            return _from_pure_noise(ctx, step, pred), state
        r = step.alpha0 / step.alpha1
        var = max(step.sigma0**2 - (r * step.sigma1) ** 2, 0.0)
        out = (2.0 - r) * x - (var / step.sigma0) * pred.eps
        if var > 0:
            out = out + math.sqrt(var) * ctx.noise()
        return out, state


@dataclass(frozen=True)
class LangevinCorrector:
    """Langevin corrector with the signal-to-noise step rule (Song et al. 2021, Alg. 4 / 5):
    step = 2 (snr ||z|| / ||grad log p||)^2, then x <- x + step grad log p + sqrt(2 step) z.

    ``norm="batch"`` averages the two norms over the batch, as Song et al.'s code does (one
    step size per batch; robust in any dimension). ``norm="sample"`` uses each sample's own
    norms, so a sample never depends on its batch; in low dimension the ratio is heavy-tailed
    (a small ||grad|| gives a huge step), so use it for high-dimensional data. The VP factor
    alpha_i = 1 - beta_i of Alg. 5 (close to 1) is omitted.
    """

    snr: float = 0.16
    steps: int = 1
    norm: str = "batch"

    def __post_init__(self) -> None:
        if not self.snr > 0:
            raise ValueError(f"snr must be > 0, got {self.snr!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"corrector steps must be an integer >= 0, got {self.steps!r}")
        if self.norm not in ("batch", "sample"):
            raise ValueError(f"norm must be 'batch' or 'sample', got {self.norm!r}")

    def __call__(self, ctx: StepContext, x: Tensor, t: float, sigma: float) -> Tensor:
        """``steps`` Langevin moves at noise level (t, sigma); ``steps`` model calls and noise draws."""
        for _ in range(self.steps):
            eps = ctx.model(x, t).eps
            z = ctx.noise()
            e_norm = eps.flatten(1).norm(dim=1)
            z_norm = z.flatten(1).norm(dim=1)
            if self.norm == "batch":
                e_norm, z_norm = e_norm.mean(), z_norm.mean()
            # grad = -eps / sigma, so snr ||z|| / ||grad|| = snr sigma ||z|| / ||eps||.
            ratio = self.snr * sigma * z_norm / e_norm.clamp_min(torch.finfo(eps.dtype).tiny)
            if ratio.ndim:
                ratio = append_dims(ratio, x.ndim)
            x = x - (2.0 / sigma) * ratio.square() * eps + 2.0 * ratio * z
        return x


@register
@dataclass(frozen=True)
class PC(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3): at each grid point the Langevin
    corrector (``snr``, ``corrector_steps``, ``norm``) runs at t0, then the predictor steps to t1.

    ``predictor`` is a registered solver name or a Solver (default: the reverse-diffusion
    predictor, as in Song et al.'s PC samplers; ``"euler_maruyama"`` also works).
    """

    predictor: str | Solver = "reverse_diffusion"
    snr: float = 0.16
    corrector_steps: int = 1
    norm: str = "batch"
    name = "pc"
    order = 1
    stochastic = True

    def __post_init__(self) -> None:
        if isinstance(self.predictor, str):
            object.__setattr__(self, "predictor", make_solver(self.predictor))
        if not isinstance(self.predictor, Solver) or isinstance(self.predictor, PC):
            raise ValueError(f"predictor must be a solver name or a (non-PC) Solver, got {self.predictor!r}")
        object.__setattr__(self, "_corrector", LangevinCorrector(self.snr, self.corrector_steps, self.norm))

    @property
    def corrector(self) -> LangevinCorrector:
        return self._corrector  # type: ignore[attr-defined]

    @property
    def nfe_per_step(self) -> float:  # type: ignore[override]
        return self.predictor.nfe_per_step + self.corrector_steps  # type: ignore[union-attr]

    @property
    def default_grid(self) -> str:  # type: ignore[override]
        return self.predictor.default_grid  # type: ignore[union-attr]

    def init_state(self, grid: Grid, schedule: NoiseSchedule) -> Any:
        return self.predictor.init_state(grid, schedule)  # type: ignore[union-attr]

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        x = self.corrector(ctx, x, step.t0, step.sigma0)
        return self.predictor.step(ctx, x, step, state)  # type: ignore[union-attr]


@register
@dataclass(frozen=True)
class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Alg. 1), on any schedule.

    At each grid level ``steps_each`` Langevin moves x_hat <- x_hat + a/2 grad log p + sqrt(a) z
    run in EDM's coordinates x_hat = x/alpha, s = sigma/alpha (the VE process every schedule
    is equivalent to), with a = ``step_size`` s^2: Alg. 1's alpha_i = eps sigma_i^2 / sigma_L^2
    with ``step_size`` = eps / sigma_L^2 (0.2 for eps = 2e-5, sigma_L = 0.01). Then x_hat carries
    over to the next level. At the end ``denoise`` adds the Tweedie step x0_hat (Song & Ermon
    2020, NCSNv2, sec. 4; one more call), else the last x_hat is returned.
    """

    steps_each: int = 5
    step_size: float = 0.2
    denoise: bool = True
    name = "annealed_langevin"
    order = 1
    stochastic = True
    default_grid = "uniform_lambda"
    paper_grid = "uniform_lambda"  # geometric noise levels (Song & Ermon 2019)

    def __post_init__(self) -> None:
        check_positive_int("steps_each", self.steps_each)
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")

    @property
    def nfe_per_step(self) -> float:  # type: ignore[override]
        return self.steps_each

    def nfe(self, grid: Grid) -> int:
        """steps_each per level, one where alpha = 0, and one for the final Tweedie step."""
        levels = sum(1 if a == 0.0 else self.steps_each for a in grid.alpha[:-1].tolist())
        return levels + int(self.denoise and grid.ends_at_zero and bool(grid.alpha[-2] != 0))

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        if step.alpha0 == 0.0:
            pred = ctx.model(x, step.t0)
            return (pred.x0 if step.sigma1 == 0.0 else _from_pure_noise(ctx, step, pred)), state
        # In x: x <- x + alpha0 (a/2 (-eps / s0) + sqrt(a) z) with a = step_size s0^2, alpha0 s0 = sigma0.
        drift = 0.5 * self.step_size * step.sigma0
        spread = math.sqrt(self.step_size) * step.sigma0
        for _ in range(self.steps_each):
            eps = ctx.model(x, step.t0).eps
            x = x - drift * eps + spread * ctx.noise()
        if step.sigma1 != 0.0:
            return x * (step.alpha1 / step.alpha0), state
        if self.denoise:
            return ctx.model(x, step.t0).x0, state
        return x / step.alpha0, state
