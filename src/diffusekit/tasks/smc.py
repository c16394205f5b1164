"""Twisted sequential Monte Carlo for linear inverse problems: an asymptotically exact posterior
sampler on the sampling loop (Wu et al. 2023, twisted diffusion sampler, sec. 3).

The batch is a population of particles for one measurement y = A x0 + N(0, s^2 I). The solver's
own transitions propose (the bootstrap form of TDS, no gradient: any stochastic solver), and the
particles are weighted by the twisting functions

    p~_t(y | x_t) = N(y; A x0_hat(x_t), (s^2 + r_t^2) I),   r_t^2 = v sigma^2 / (v alpha^2 + sigma^2)

(PiGDM's r_t^2 = s^2 / (1 + s^2) at s = sigma / alpha, Song et al. 2023, for data variance v), with p~_0(y | x0) = N(y; A x0, s^2 I)
the exact likelihood at the clean end. The incremental weights p~_t1(x_t1) / p~_t0(x_t0)
telescope to p(y | x0), so the weighted particles target p_model(x0) p(y | x0) / p(y): the
exact posterior of the sampler's model, for any twisting, as the particle count grows. The
twisting only makes the weights even. When the effective sample size falls below
``ess_threshold`` x particles, the particles are resampled (systematic resampling, Douc &
Cappé 2005); the last step always resamples, so ``sample`` returns equally weighted particles.

On the loop: the weight of a step's start is known at the step's first model call
(``on_prediction``), one step after the particle moved, so ``after_step`` resamples the new
particles with the weights up to their parents, which is the same law (each particle moves
independently). Resampling is a gather with a mask, no host sync. The argument needs the
proposal to be a Markov kernel in x: use a single-step stochastic solver (ddpm, ddim with
eta > 0, euler_ancestral, euler_maruyama, ...), not a multistep one or an ODE solver.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Cond, DenoiserLike, DenoiserWrapper
from ..parameterization import Prediction
from ..solvers.ancestral import posterior_mean
from ..stepping import Step, StepContext
from ..utils import check_positive_float
from ..variances import posterior_var
from .operators import LinearOperator
from .pigdm import x0_variance


class TwistedSMC:
    """Constraint holding the particle weights of one ``sample`` run (``sample(..., constraints=[smc])``;
    every batch row is a particle for the same ``y``). Reusable: the state resets at the clean end.

    ``ess_history`` holds the effective sample size (a (1,) tensor) after every step of the last run.
    """

    def __init__(
        self,
        operator: LinearOperator,
        y: Tensor,
        noise_std: float,
        *,
        ess_threshold: float = 0.5,
        data_var: float = 1.0,
    ) -> None:
        self.operator, self.y = operator, y
        self.noise_var = check_positive_float("noise_std", noise_std) ** 2
        if not 0 <= ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
        self.ess_threshold = ess_threshold
        self.data_var = check_positive_float("data_var", data_var)
        self._log_w: Tensor | None = None  # (B,) log weights
        self._log_twist: Tensor | None = None  # (B,) log p~ at each particle's last weighted state
        self._fresh = True
        self.ess_history: list[Tensor] = []

    def _log_normal(self, x0: Tensor, var: Tensor | float) -> Tensor:
        """log N(y; A x0, var I) per particle (B,)."""
        resid = (self.y.to(device=x0.device, dtype=x0.dtype) - self.operator(x0)).flatten(1).double()
        var = torch.as_tensor(var, dtype=torch.float64, device=x0.device).flatten()
        return -0.5 * (resid.pow(2).sum(1) / var + resid.shape[1] * torch.log(2 * math.pi * var))

    def _reweight(self, log_twist: Tensor) -> None:
        if self._log_w is None or self._log_twist is None:  # a new run
            self._log_w, self._log_twist = torch.zeros_like(log_twist), torch.zeros_like(log_twist)
            self.ess_history = []
        self._log_w = self._log_w + log_twist - self._log_twist
        self._log_twist = log_twist

    def _log_twist_of(self, pred: Prediction) -> Tensor:
        """log p~_t(y | x_t) per particle, from the prediction at x_t."""
        alpha, sigma = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (pred.alpha, pred.sigma))
        return self._log_normal(pred.x0, self.noise_var + x0_variance(alpha, sigma, self.data_var))

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        if self._fresh:  # the step's first call, at its starting x
            self._reweight(self._log_twist_of(pred))
            self._fresh = False
        return pred

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        self._fresh = True
        if self._log_w is None:  # a step without a model call (a RePaint jump)
            return x
        final = step.to_zero
        if final:
            self._reweight(self._log_normal(x, self.noise_var))
        w = torch.softmax(self._log_w, 0)
        ess = 1 / w.pow(2).sum()
        self.ess_history.append(ess.reshape(1))
        n = x.shape[0]
        u = torch.special.ndtr(ctx.noise().flatten()[:1].double())  # one uniform from the loop's streams
        positions = (u + torch.arange(n, dtype=torch.float64, device=x.device)) / n
        idx = torch.searchsorted(w.cumsum(0), positions).clamp(max=n - 1)
        do = torch.ones((), dtype=torch.bool, device=x.device) if final else ess < self.ess_threshold * n
        idx = torch.where(do, idx, torch.arange(n, device=x.device))
        self._log_w = torch.where(do, torch.zeros_like(self._log_w), self._log_w)
        self._log_twist = self._log_twist[idx]
        if final:
            self._log_w = self._log_twist = None
        return x[idx]


class TDS(TwistedSMC):
    """The twisted diffusion sampler with its gradient proposal (Wu et al. 2023, Algorithm 1).

    The DDPM kernel is proposed from the twisted score, s + grad log p~_t(y | x_t), i.e. from the data
    prediction x0_hat + (sigma^2 / alpha) grad log p~_t (Tweedie), and the weights carry the ratio
    p(x_t1 | x_t0) / q(x_t1 | x_t0, y) of the untwisted to the twisted Gaussian kernel (eq. 7), so the
    target is the bootstrap sampler's (``TwistedSMC``) with far more even weights. The last step
    returns the untwisted x0_hat, the model's own clean end, which the exact likelihood then weights.
    Run it as::

        tds = TDS(operator, y, noise_std)
        sample(tds.guided(denoiser), "ddpm", ..., constraints=[tds])   # DDPM, small variance

    (the kernel ratio is that of ``ddpm`` with ``variance="small"``; other solvers are not valid proposals).
    Use a grid uniform in log-SNR (``uniform_lambda``): where one step shrinks sigma many-fold (the last
    step of a uniform-t grid), the kernel's spread is far below the twisted mean shift and the ratio
    collapses the effective sample size (on the test oracle: to 1% of the particles in that step).
    """

    def __init__(self, operator: LinearOperator, y: Tensor, noise_std: float, *, ess_threshold: float = 0.5,
                 data_var: float = 1.0) -> None:
        super().__init__(operator, y, noise_std, ess_threshold=ess_threshold, data_var=data_var)
        self._move: tuple[Tensor, Tensor, Tensor] | None = None  # x_t0, x0_hat, twisted x0_hat of this step

    def guided(self, inner: DenoiserLike) -> DenoiserLike:
        """The denoiser whose first call in each step returns the twisted data prediction."""
        return _Twisted(inner, self)

    def _twisted(self, inner: DenoiserLike, x: Tensor, t: float | Tensor, cond: Cond) -> Prediction:
        if not self._fresh:
            return inner(x, t, cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = inner(xg, t, cond)
            log_twist = self._log_twist_of(pred)
            (grad,) = torch.autograd.grad(log_twist.sum(), xg)
        alpha, sigma = pred.alpha.detach(), pred.sigma.detach()
        x0 = pred.x0.detach()
        twisted = x0 + sigma**2 / alpha * grad.to(x.dtype)
        self._move = (x.detach(), x0, twisted)
        self._reweight(log_twist.detach())
        self._fresh = False
        return Prediction(x, alpha, sigma, twisted)

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        return pred  # weighted in ``_twisted``

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        if self._move is not None and self._log_w is not None:
            x_t0, x0, twisted = self._move
            if step.to_zero:
                x = x0  # the untwisted clean end
            else:
                st = step.like(x)
                var = torch.as_tensor(posterior_var(st), dtype=torch.float64, device=x.device)
                d_q = (x - posterior_mean(st, x_t0, twisted)).flatten(1).double()
                d_p = (x - posterior_mean(st, x_t0, x0)).flatten(1).double()
                self._log_w = self._log_w + (d_q.pow(2).sum(1) - d_p.pow(2).sum(1)) / (2 * var.flatten())
        self._move = None
        return super().after_step(x, step, ctx)


class _Twisted(DenoiserWrapper):
    """``TDS.guided``: the denoiser wrapper that routes each call through its ``TDS``."""

    def __init__(self, inner: DenoiserLike, tds: TDS) -> None:
        super().__init__(inner)
        self.tds = tds

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        return self.tds._twisted(self.inner, x, t, cond)
