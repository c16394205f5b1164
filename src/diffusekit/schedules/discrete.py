"""DDPM's discrete beta schedules with a continuous-time view.

Ho et al. 2020 define alpha_bar_n = prod_{i<=n} (1 - beta_i) for n = 0..N-1.
As in DPM-Solver (Lu et al. 2022, sec. 3.4 and appendix), index n sits at time
t_n = (n + 1) / N and log alpha(t) is interpolated piecewise linearly between
the knots, with the extra knot log alpha(0) = 0 (clean data). The model sees the
(fractional) index N t - 1 as its noise input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .base import NoiseSchedule
from .continuous import _log_sigma_vp


def _linear(n: int, start: float, end: float) -> Tensor:
    return torch.linspace(start, end, n, dtype=torch.float64)


def _scaled_linear(n: int, start: float, end: float) -> Tensor:
    return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2


def _cosine(n: int, start: float, end: float, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021, eq. (17): alpha_bar(t) = f(t)/f(0), f = cos^2(((t/N + s)/(1 + s)) pi/2)."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=end)


def _sigmoid(n: int, start: float, end: float) -> Tensor:
    """Betas following a sigmoid ramp from start to end (as in GeoDiff, Xu et al. 2022)."""
    return torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (end - start) + start


BETA_SCHEDULES: dict[str, tuple[Callable[..., Tensor], float, float]] = {
    "linear": (_linear, 1e-4, 0.02),
    "scaled_linear": (_scaled_linear, 0.00085, 0.012),
    "cosine": (_cosine, 0.0, 0.999),
    "sigmoid": (_sigmoid, 1e-4, 0.02),
}


def make_betas(
    kind: str, num_steps: int = 1000, beta_start: float | None = None, beta_end: float | None = None
) -> Tensor:
    """float64 betas for a named schedule; ``beta_start``/``beta_end`` default per kind."""
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {kind!r}; allowed: {', '.join(BETA_SCHEDULES)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    fn, start, end = BETA_SCHEDULES[kind]
    return fn(num_steps, start if beta_start is None else beta_start, end if beta_end is None else beta_end)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2024, Alg. 1: shift and scale sqrt(alpha_bar) so the last one is 0."""
    a = alphas_cumprod.sqrt()
    a0, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a0 / (a0 - a_last)
    return a**2


class DiscreteSchedule(NoiseSchedule):
    """A DDPM schedule from its betas, viewed in continuous time on [1/N, 1].

    With ``zero_terminal_snr`` the last alpha is exactly 0 (lambda(1) = -inf);
    the last interval then interpolates alpha itself, since log alpha = -inf there.
    """

    def __init__(
        self,
        kind: str = "linear",
        num_steps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        zero_terminal_snr: bool = False,
        betas: Tensor | None = None,
    ) -> None:
        self.kind = kind if betas is None else "custom"
        self._beta_args = (beta_start, beta_end)
        betas = make_betas(kind, num_steps, beta_start, beta_end) if betas is None else betas.double()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-d tensor with values in (0, 1)")
        abar = torch.cumprod(1 - betas, 0)
        if zero_terminal_snr:
            abar = rescale_zero_terminal_snr(abar)
        self.zero_terminal_snr = zero_terminal_snr
        self.alphas_cumprod = abar
        self.num_steps = len(abar)
        self.t_min = 1.0 / self.num_steps
        self.t_max = 1.0
        # knots[k] = log alpha at t = k / N; knots[0] = 0 (clean data).
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * abar.log()])
        self._alpha_last_interval = abar[-2].sqrt()

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        pos = t * self.num_steps
        k = pos.floor().clamp(0, self.num_steps - 1)
        return k.long(), pos - k

    def log_alpha(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        knots = self._knots.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        k, w = self._segment(t)
        lo = knots[k]
        hi = knots[k + 1]
        if self.zero_terminal_snr:
            last = k == self.num_steps - 1
            hi = torch.where(last, lo, hi)  # finite placeholder; replaced below
            linear = lo + w * (hi - lo)
            a_last = self._alpha_last_interval.to(linear) * (1 - w)
            return torch.where(last, torch.log(a_last), linear)
        return lo + w * (hi - lo)

    def log_sigma(self, t: Tensor) -> Tensor:
        return _log_sigma_vp(self.log_alpha(t))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        lam = torch.as_tensor(lam)
        target = -0.5 * softplus(-2 * lam)  # log alpha for a VP process with this lambda
        knots = self._knots.to(device=lam.device, dtype=lam.dtype)
        n = self.num_steps
        k = (torch.searchsorted(-knots, -target.contiguous(), right=True) - 1).clamp(0, n - 1)
        lo, hi = knots[k], knots[k + 1]
        w = ((lo - target) / (lo - hi)).clamp(0, 1)
        if self.zero_terminal_snr:
            a_last = self._alpha_last_interval.to(lam)
            w_last = (1 - target.exp() / a_last).clamp(0, 1)
            w = torch.where(k == n - 1, w_last, w)
        return (k + w) / n

    def model_time(self, t: Tensor) -> Tensor:
        """The DDPM index n = N t - 1 (fractional between knots)."""
        return t * self.num_steps - 1

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "beta_start": self._beta_args[0],
            "beta_end": self._beta_args[1],
            "zero_terminal_snr": self.zero_terminal_snr,
        }
