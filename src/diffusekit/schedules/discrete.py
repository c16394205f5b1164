"""DDPM's discrete beta schedules with a continuous-time view.

Ho et al. 2020 define alpha_bar_n = prod_{i<=n} (1 - beta_i) for n = 0..N-1; a
schedule is built from betas (by name or given) or from the alpha_bar table itself
(``alphas_cumprod``, e.g. a diffusers scheduler's float32 table, matched exactly). Index n
sits at time t_n = (n + 1) / N, and the model sees the (fractional) index N t - 1 as its
noise input. Between the indices (``interpolation``):

- ``log_alpha`` (default): log alpha(t) is piecewise linear, as in DPM-Solver (Lu et al.
  2022, sec. 3.4 and appendix);
- ``log_sigma``: log(sigma / alpha) = -lambda is piecewise linear in the index, as in
  k-diffusion's ``DiscreteSchedule.t_to_sigma`` and diffusers' ``_sigma_to_t`` (Karras et al.
  2022's discretized VP), so a network trained with them sees its own noise levels at
  fractional indices.

Below index 0 (t < 1/N) log alpha runs linearly to the extra knot log alpha(0) = 0 (clean
data) in both; with zero terminal SNR the last interval interpolates alpha itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


INTERPOLATIONS = ("log_alpha", "log_sigma")


def _check_table(abar: Tensor) -> None:
    """alpha_bar must be 1-d, strictly decreasing, in (0, 1), except a last value of 0."""
    if abar.ndim != 1 or len(abar) < 2:
        raise ValueError("alphas_cumprod must be a 1-d table of at least 2 values")
    inner = abar[:-1]
    if not bool(((inner > 0) & (inner < 1)).all()) or not 0 <= float(abar[-1]) < 1 or not bool((abar[1:] < abar[:-1]).all()):
        raise ValueError("alphas_cumprod must decrease strictly, with values in (0, 1) (the last may be 0)")


class DiscreteSchedule(NoiseSchedule):
    """A DDPM schedule from its betas or its alpha_bar table, viewed in continuous time on [1/N, 1].

    With ``zero_terminal_snr`` (or a table ending in 0) the last alpha is exactly 0
    (lambda(1) = -inf); the last interval then interpolates alpha itself, since log alpha
    = -inf there. ``alphas_cumprod`` (a table; then kind, num_steps, betas and
    zero_terminal_snr are not used) is kept exactly: alpha(t_n)^2 = alphas_cumprod[n] up to
    float64 rounding. ``interpolation``: see the module docstring.
    """

    def __init__(
        self,
        kind: str = "linear",
        num_steps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        zero_terminal_snr: bool = False,
        betas: Tensor | None = None,
        alphas_cumprod: Tensor | Sequence[float] | None = None,
        interpolation: str = "log_alpha",
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
        self.interpolation = interpolation
        self._beta_args = (beta_start, beta_end)
        if alphas_cumprod is not None:
            self.kind = "table"
            abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
            _check_table(abar)
            zero_terminal_snr = float(abar[-1]) == 0.0
        else:
            self.kind = kind if betas is None else "custom"
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
        # lam_knots[k] = lambda at t = k / N, as k-diffusion's -log sqrt((1 - abar) / abar) (knot 0, +inf, unused)
        lam = -((1 - abar) / abar).sqrt().log()
        self._lam_knots = torch.cat([lam[:1], lam])
        self._alpha_last_interval = abar[-2].sqrt()

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | Sequence[float], interpolation: str = "log_alpha") -> DiscreteSchedule:
        """The schedule of a given alpha_bar table (e.g. diffusers' ``scheduler.alphas_cumprod``), kept exactly."""
        return cls(alphas_cumprod=alphas_cumprod, interpolation=interpolation)

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        pos = t * self.num_steps
        k = pos.floor().clamp(0, self.num_steps - 1)
        return k.long(), pos - k

    def _log_alpha_knots(self, t: Tensor, k: Tensor, w: Tensor) -> Tensor:
        """log alpha interpolated linearly between the knots (alpha itself on a zero-SNR last interval)."""
        knots = self._knots.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        lo = knots[k]
        hi = knots[k + 1]
        if self.zero_terminal_snr:
            last = k == self.num_steps - 1
            hi = torch.where(last, lo, hi)  # finite placeholder; replaced below
            linear = lo + w * (hi - lo)
            a_last = self._alpha_last_interval.to(linear) * (1 - w)
            return torch.where(last, torch.log(a_last), linear)
        return lo + w * (hi - lo)

    def _log_sigma_interval(self, k: Tensor) -> Tensor:
        """Where ``log_sigma`` interpolation applies: between two indices, lambda finite at both."""
        inner = k >= 1
        return inner & (k < self.num_steps - 1) if self.zero_terminal_snr else inner

    def _lam_interpolated(self, t: Tensor, k: Tensor, w: Tensor) -> Tensor:
        """lambda = -log(sigma / alpha) linear in the index between the knots (k-diffusion's rule)."""
        lam = self._lam_knots.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        hi = torch.where(torch.isinf(lam[k + 1]), lam[k], lam[k + 1])  # finite where not used
        return (1 - w) * lam[k] + w * hi

    def log_alpha(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        k, w = self._segment(t)
        log_alpha = self._log_alpha_knots(t, k, w)
        if self.interpolation == "log_alpha":
            return log_alpha
        lam = self._lam_interpolated(t, k, w)
        return torch.where(self._log_sigma_interval(k), -0.5 * softplus(-2 * lam), log_alpha)

    def log_sigma(self, t: Tensor) -> Tensor:
        if self.interpolation == "log_alpha":
            return _log_sigma_vp(self.log_alpha(t))
        t = torch.as_tensor(t)
        k, w = self._segment(t)
        lam = self._lam_interpolated(t, k, w)
        outside = _log_sigma_vp(self._log_alpha_knots(t, k, w))
        return torch.where(self._log_sigma_interval(k), -0.5 * softplus(2 * lam), outside)

    def log_snr(self, t: Tensor) -> Tensor:
        if self.interpolation == "log_alpha":
            return super().log_snr(t)
        t = torch.as_tensor(t)
        k, w = self._segment(t)
        return torch.where(self._log_sigma_interval(k), self._lam_interpolated(t, k, w), super().log_snr(t))

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
        if self.interpolation == "log_sigma":  # the same interval (lambda and log alpha are monotone in t)
            lams = self._lam_knots.to(device=lam.device, dtype=lam.dtype)
            lam_hi = torch.where(torch.isinf(lams[k + 1]), lams[k], lams[k + 1])
            w_lam = ((lams[k] - lam) / (lams[k] - lam_hi)).clamp(0, 1)
            w = torch.where(self._log_sigma_interval(k), w_lam, w)
        return (k + w) / n

    def t_of_model_time(self, model_time: Tensor) -> Tensor:
        """The inverse of ``model_time``: t = (n + 1) / N."""
        return (torch.as_tensor(model_time) + 1) / self.num_steps

    def model_time(self, t: Tensor) -> Tensor:
        """The DDPM index n = N t - 1 (fractional between knots)."""
        return t * self.num_steps - 1

    def config(self) -> dict:
        """Constructor arguments; a table (or betas given as a tensor) is written as its alpha_bar table."""
        if self.kind in ("table", "custom"):
            return {"alphas_cumprod": self.alphas_cumprod.tolist(), "interpolation": self.interpolation}
        cfg = {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "beta_start": self._beta_args[0],
            "beta_end": self._beta_args[1],
            "zero_terminal_snr": self.zero_terminal_snr,
        }
        return cfg if self.interpolation == "log_alpha" else {**cfg, "interpolation": self.interpolation}
