"""Runge-Kutta solvers of the probability-flow ODE in EDM's coordinates (Karras et al. 2022).

With x_hat = x / alpha and s = sigma / alpha (= exp(-lambda)), the probability-flow
ODE of *every* schedule is the same equation. (Karras et al. 2022, eq. 4:
their scale s(t) is our alpha and their noise level sigma(t) our s; in x / alpha the
ODE reads d(x/alpha)/d sigma = -sigma grad log p = eps.)

    dx_hat / ds = eps_hat(x_hat, s),

where eps_hat is the model's noise prediction. The schedule only decides where
the grid points lie. An Euler step written back in x is
``x1 = alpha1 x0_hat + sigma1 eps_hat`` (it coincides with DDIM, eta = 0), which
also covers the two singular ends: the clean end s = 0 (the "x0 jump") and a start
at alpha = 0 (zero terminal SNR, s = inf). Heun adds the trapezoidal correction
``alpha1 (s1 - s0) / 2 (eps_hat(x1') - eps_hat(x0))`` except at those ends.

Both take EDM's stochastic churn (Alg. 2): before the step, noise raises s0 to
s_hat = s0 (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1) for s0 in [S_tmin, S_tmax].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..stepping import Solver, Step, StepContext
from ..schedules.grids import Grid
from ..tuned import HEUN_MAX_RATIO
from .base import register


def euler_update(step: Step, pred: Prediction) -> Tensor:
    """One Euler step of dx_hat/ds = eps from s0 to s1, written in x: alpha1 x0 + sigma1 eps."""
    if step.to_zero:
        return pred.x0
    step = step.like(pred.x_t)
    return step.alpha1 * pred.x0 + step.sigma1 * pred.eps


@dataclass(frozen=True)
class _ChurnMixin:
    """Shared fields and the churn move of Karras et al. 2022, Alg. 2, lines 4-6."""

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0

    def _check_churn(self) -> None:
        if not self.S_churn >= 0:
            raise ValueError(f"S_churn must be >= 0, got {self.S_churn!r}")
        if not self.S_tmin <= self.S_tmax:
            raise ValueError(f"need S_tmin <= S_tmax, got {self.S_tmin!r} > {self.S_tmax!r}")
        if not self.S_noise >= 0:
            raise ValueError(f"S_noise must be >= 0, got {self.S_noise!r}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.S_churn > 0 and self.S_noise > 0

    @property
    def per_sample_times(self) -> bool:  # type: ignore[override]
        return self.S_churn == 0  # churn raises one shared noise level

    def _churn(self, ctx: StepContext, x: Tensor, step: Step) -> tuple[Tensor, Step]:
        """Raise the noise level of x from s0 to s_hat (capped at s(t_max)); the step then starts there."""
        if self.S_churn == 0 or step.alpha0 == 0.0 or step.remaining is None:
            return x, step
        s0 = step.sigma0 / step.alpha0
        if not self.S_tmin <= s0 <= self.S_tmax:
            return x, step
        gamma = min(self.S_churn / (step.i + step.remaining), math.sqrt(2.0) - 1.0)
        schedule = ctx.schedule
        s_hat = s0 * (1.0 + gamma)
        t_hat = float(schedule.t_of_log_snr(torch.tensor(-math.log(s_hat), dtype=torch.float64)))
        if not t_hat < schedule.t_max:  # EDM's network accepts any sigma; a schedule stops at t_max
            t_hat = schedule.t_max
        t_hat = max(t_hat, step.t0)
        a_hat, sg_hat = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_hat, dtype=torch.float64)))
        if a_hat == 0.0:
            return x, step
        s_hat = sg_hat / a_hat
        var = s_hat**2 - s0**2
        x_up = x * (a_hat / step.alpha0)  # same x / alpha, now at t_hat
        if var > 0 and self.S_noise > 0:
            x_up = x_up + (a_hat * self.S_noise * math.sqrt(var)) * ctx.noise()
        return x_up, replace(step, t0=t_hat, alpha0=a_hat, sigma0=sg_hat)


@register
@dataclass(frozen=True)
class Euler(_ChurnMixin, Solver):
    """Euler's method on dx_hat/ds = eps (Karras et al. 2022, Alg. 1 with first order only; Alg. 2 churn).

    Deterministic with ``S_churn = 0``, where it equals DDIM (Song et al. 2021) step for step.
    """

    name = "euler"
    order = 1
    nfe_per_step = 1
    default_grid = "tuned_warp"
    paper_grid = "karras"  # Karras et al. 2022, eq. 5

    def __post_init__(self) -> None:
        self._check_churn()

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        x, step = self._churn(ctx, x, step)
        return euler_update(step, ctx.model(x, step.t0)), state


@register
@dataclass(frozen=True)
class Heun(_ChurnMixin, Solver):
    """Heun's 2nd-order method on dx_hat/ds = eps, Karras et al. 2022, Alg. 1 (deterministic)
    and Alg. 2 (stochastic churn ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``).

    Two model calls per step; the step to the clean end (and one starting at alpha = 0)
    is a single Euler step, so N steps cost 2N - 1 calls. The trapezoidal correction puts
    the weight (s0 - s1) / (2 s1) on the change of the denoiser over the step (the exact flow
    puts at most 1 there), so steps with s0 / s1 > ``max_ratio`` are Euler steps (one call):
    without this guard few-step runs overshoot wildly (NFE 5 on Karras grids). EDM's own grids
    have s0 / s1 <= 10 from 11 steps on, where this is Alg. 1 exactly; ``max_ratio=inf`` is
    Alg. 1 at any step count. The returned error estimate is the correction itself (Heun - Euler).
    """

    max_ratio: float = HEUN_MAX_RATIO
    name = "heun"
    order = 2
    nfe_per_step = 2
    default_grid = "tuned_lambda"
    paper_grid = "karras"  # Karras et al. 2022, eq. 5

    def __post_init__(self) -> None:
        self._check_churn()
        if not self.max_ratio > 1:
            raise ValueError(f"max_ratio must be > 1, got {self.max_ratio!r}")

    def _heun_ok(self, alpha0: Any, sigma0: Any, alpha1: Any, sigma1: Any) -> Any:
        """The correction applies (two calls) unless the step goes to the clean end, from or to alpha = 0,
        or s0 / s1 > max_ratio (going up in s, as in inversion, the weight is below 1/2). Floats give a
        bool, decided on the grid so ``nfe`` is known before the run; per-sample tensors give a mask."""
        return (sigma1 > 0) & (alpha0 > 0) & (alpha1 > 0) & (sigma0 * alpha1 <= self.max_ratio * alpha0 * sigma1)

    def nfe(self, grid: Grid) -> int:
        a, s = grid.alpha.tolist(), grid.sigma.tolist()
        return sum(2 if self._heun_ok(a[i], s[i], a[i + 1], s[i + 1]) else 1 for i in range(grid.n_steps))

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        if isinstance(step.alpha0, Tensor):
            return self._per_sample_step(ctx, x, step), state
        euler_only = not self._heun_ok(step.alpha0, step.sigma0, step.alpha1, step.sigma1)
        x, step = self._churn(ctx, x, step)
        pred = ctx.model(x, step.t0)
        x1 = euler_update(step, pred)
        if euler_only:
            return x1, state
        pred1 = ctx.model(x1, step.t1)
        half = 0.5 * (step.sigma1 - step.alpha1 * step.sigma0 / step.alpha0)  # alpha1 (s1 - s0) / 2
        correction = half * (pred1.eps - pred.eps)
        return x1 + correction, state

    def _per_sample_step(self, ctx: StepContext, x: Tensor, step: Step) -> Tensor:
        """The step with one time per sample (a teacher step in distillation): the Heun correction
        where ``_heun_ok`` holds for that sample, Euler elsewhere; two calls if any sample needs both."""
        pred = ctx.model(x, step.t0)
        x1 = euler_update(step, pred)
        heun = self._heun_ok(step.alpha0, step.sigma0, step.alpha1, step.sigma1)
        if not bool(heun.any()):
            return x1
        pred1 = ctx.model(x1, torch.where(heun, step.t1, step.t0))  # type: ignore[arg-type]
        st = step.like(x)
        half = 0.5 * (st.sigma1 - st.alpha1 * st.sigma0 / st.alpha0)  # type: ignore[operator]
        mask = heun.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(mask, x1 + half * (pred1.eps - pred.eps), x1)


@register
@dataclass(frozen=True)
class EulerAncestral(Solver):
    """Euler-ancestral (k-diffusion's ``sample_euler_ancestral``, after Karras et al. 2022 and
    Ho et al. 2020): an Euler step of dx_hat/ds = eps down to s_down, then fresh noise s_up,

        s_up = min(s1, eta s1 sqrt(1 - s1^2 / s0^2)),  s_down = sqrt(s1^2 - s_up^2),
        x1 = alpha1 (x0 + s_down eps + S_noise s_up z).

    With eta = 1 this is the DDPM posterior (small variance) on any schedule; eta = 0 is Euler.
    """

    eta: float = 1.0
    s_noise: float = 1.0
    name = "euler_ancestral"
    order = 1
    nfe_per_step = 1
    default_grid = "tuned_warp"
    paper_grid = "karras"  # k-diffusion's sample_euler_ancestral grid

    def __post_init__(self) -> None:
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if not self.s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0, got {self.s_noise!r}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0 and self.s_noise > 0

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        pred = ctx.model(x, step.t0)
        if step.sigma1 == 0.0:
            return pred.x0, state
        ratio = step.alpha0 * step.sigma1 / (step.alpha1 * step.sigma0)  # s1 / s0, 0 where alpha0 = 0
        up = min(step.sigma1, self.eta * step.sigma1 * math.sqrt(max(1.0 - ratio * ratio, 0.0)))  # alpha1 s_up
        down = math.sqrt(max(step.sigma1**2 - up * up, 0.0))  # alpha1 s_down
        out = step.alpha1 * pred.x0 + down * pred.eps
        if up > 0 and self.s_noise > 0:
            out = out + (self.s_noise * up) * ctx.noise()
        return out, state
