"""Adaptive black-box probability-flow ODE solve (Song et al. 2021, sec. 4.3: RK45 with rtol/atol).

Dormand-Prince 5(4) from torchdiffeq (Chen et al. 2018) integrates each grid interval in the
angle variable phi = atan2(sigma, alpha) with the state y = x / sqrt(alpha^2 + sigma^2)
(``schedules.angle``: dy/dphi = cos(phi) eps_hat - sin(phi) x0_hat). Its right-hand side
is bounded for every schedule, including alpha = 0 (zero terminal SNR, phi = pi/2), so one
error control fits all. The interval to the clean end (phi = 0, where the model is never
called) integrates down to the schedule's t_min and finishes with the x0 jump
(Song et al.'s final denoising step). Every evaluation goes through ``ctx.model``, so
the loop's NFE is the true count. Step sizes are shared by the batch; the error norm is
the largest per-sample RMS, so every sample meets the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..stepping import Solver, Step, StepContext
from ..schedules.angle import angle_at, angle_of, angle_velocity, frame_at, time_of_angle
from .base import register


@register
@dataclass(frozen=True)
class Dopri5(Solver):
    """Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980) on the probability-flow ODE via
    ``torchdiffeq.odeint``, with relative/absolute tolerances ``rtol``/``atol`` (Song et al.
    2021 use 1e-5). NFE is whatever the controller needs: ``nfe_per_step`` is NaN. Use a
    1-step grid (``steps=1``) to integrate t_max -> t_min in one adaptive solve.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    max_num_steps: int = 10_000
    name = "dopri5"
    order = 5
    stochastic = False
    nfe_per_step = math.nan
    default_steps = 1
    default_grid = "uniform_t"

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got rtol={self.rtol!r}, atol={self.atol!r}")

    def step(self, ctx: StepContext, x: Tensor, step: Step, state: Any) -> tuple[Tensor, Any]:
        if step.sigma1 != 0.0:
            return self._integrate(ctx, x, step.t0, step.alpha0, step.sigma0, step.t1), state
        t_min = ctx.schedule.t_min
        if step.t0 > t_min:
            x = self._integrate(ctx, x, step.t0, step.alpha0, step.sigma0, t_min)
        return ctx.model(x, min(step.t0, t_min)).x0, state

    def _integrate(self, ctx: StepContext, x: Tensor, t0: float, alpha0: float, sigma0: float, t1: float) -> Tensor:
        from torchdiffeq import odeint

        schedule = ctx.schedule
        (phi0, r0), (phi1, r1) = angle_of(alpha0, sigma0), angle_at(schedule, t1)
        batch = x.shape[0]

        def rhs(phi: Tensor, y: Tensor) -> Tensor:
            t = time_of_angle(schedule, phi.detach().to("cpu", torch.float64))
            r, c, s = (float(v) for v in frame_at(schedule, t))
            pred = ctx.model(y * r, float(t))
            return angle_velocity(pred.x0, pred.eps, c, s)

        def norm(e: Tensor) -> Tensor:
            return e.reshape(batch, -1).pow(2).mean(1).sqrt().max()

        y0 = x / r0
        span = torch.tensor([phi0, phi1], dtype=torch.float64, device=x.device)
        options = {"norm": norm, "max_num_steps": self.max_num_steps}
        y1 = odeint(rhs, y0, span, rtol=self.rtol, atol=self.atol, method="dopri5", options=options)[-1]
        return y1 * r1
