"""Step grids: where a sampler evaluates, kept apart from the schedule.

A grid is N + 1 decreasing points in float64. Its last point may be the clean
end (alpha = 1, sigma = 0), reached without a model call at that point; this is
how every sampler "denoises to zero" (Karras et al. 2022 append sigma = 0; DDPM's
final step uses alpha_bar = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry
from ..utils import check_positive_int
from .base import NoiseSchedule


@dataclass(frozen=True)
class Grid:
    """Time points ``t`` with their ``alpha`` and ``sigma`` (all float64, CPU, length N + 1).

    The clean end, if present, is stored as t = 0, alpha = 1, sigma = 0.
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, t: Tensor, to_zero: bool = True) -> "Grid":
        """Evaluate the schedule at decreasing times ``t``; append the clean end if ``to_zero``."""
        t = torch.as_tensor(t, dtype=torch.float64).flatten()
        if t.numel() < 1:
            raise ValueError("a grid needs at least one time point")
        if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"grid times must be strictly decreasing, got {t.tolist()}")
        schedule.validate_t(t)
        alpha, sigma = schedule.alpha_sigma(t)
        if to_zero:
            t = torch.cat([t, t.new_zeros(1)])
            alpha = torch.cat([alpha, alpha.new_ones(1)])
            sigma = torch.cat([sigma, sigma.new_zeros(1)])
        if t.numel() < 2:
            raise ValueError("a grid needs at least two points (one step)")
        return cls(t, alpha, sigma)

    @property
    def n_steps(self) -> int:
        return self.t.numel() - 1

    @property
    def lam(self) -> Tensor:
        """log(alpha / sigma): +inf at the clean end, -inf where alpha = 0."""
        return self.alpha.log() - self.sigma.log()

    @property
    def ends_at_zero(self) -> bool:
        return bool(self.sigma[-1] == 0)

    def __len__(self) -> int:
        return self.t.numel()


GridRule = Callable[..., Grid]
GRIDS: Registry[GridRule] = Registry("step grid")


def _span(schedule: NoiseSchedule, t_end: float | None) -> tuple[float, float]:
    lo = schedule.t_min if t_end is None else float(t_end)
    schedule.validate_t(lo)
    if not lo < schedule.t_max:
        raise ValueError(f"t_end={lo:g} must be below t_max={schedule.t_max:g}")
    return lo, schedule.t_max


def _points(n_steps: int, to_zero: bool) -> Tensor:
    """u in [0, 1] (0 = t_max, 1 = t_end) for the points before the clean end."""
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    if count == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(0, 1, count, dtype=torch.float64)


@GRIDS.register("uniform_t")
def uniform_t(schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, to_zero: bool = True) -> Grid:
    """Equal steps in t (DDIM's uniform skip; Euler on rectified flow)."""
    lo, hi = _span(schedule, t_end)
    u = _points(n_steps, to_zero)
    return Grid.from_times(schedule, hi + u * (lo - hi), to_zero)


@GRIDS.register("quadratic_t")
def quadratic_t(schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, to_zero: bool = True) -> Grid:
    """Steps quadratic in t, dense near the data (Song et al. 2021, DDIM, sec. D.2)."""
    lo, hi = _span(schedule, t_end)
    u = _points(n_steps, to_zero)
    return Grid.from_times(schedule, lo + (1 - u) ** 2 * (hi - lo), to_zero)


def _lambda_ramp(
    schedule: NoiseSchedule,
    n_steps: int,
    t_end: float | None,
    to_zero: bool,
    ramp: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> Grid:
    """Points placed by ``ramp(lam_start, lam_end, u)`` in log-SNR.

    Where lambda(t_max) = -inf (zero terminal SNR) the first point stays at t_max
    and the ramp starts one uniform-t step below it.
    """
    lo, hi = _span(schedule, t_end)
    u = _points(n_steps, to_zero)
    if len(u) == 1:
        return Grid.from_times(schedule, torch.tensor([hi], dtype=torch.float64), to_zero)
    head = torch.empty(0, dtype=torch.float64)
    t_start = hi
    if math.isinf(float(schedule.log_snr(torch.tensor(hi, dtype=torch.float64)))):
        head = torch.tensor([hi], dtype=torch.float64)
        t_start = hi - (hi - lo) / (len(u) - 1)
        u = torch.linspace(0, 1, len(u) - 1, dtype=torch.float64) if len(u) > 2 else u[:1]
    lam = schedule.log_snr(torch.tensor([t_start, lo], dtype=torch.float64))
    t = schedule.t_of_log_snr(ramp(lam[0], lam[1], u))
    t[0] = t_start
    t[-1] = lo if len(u) > 1 else t_start
    return Grid.from_times(schedule, torch.cat([head, t]), to_zero)


@GRIDS.register("uniform_lambda")
def uniform_lambda(schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, to_zero: bool = True) -> Grid:
    """Equal steps in log-SNR lambda (DPM-Solver's 'logSNR' spacing, Lu et al. 2022)."""
    return _lambda_ramp(schedule, n_steps, t_end, to_zero, lambda a, b, u: a + u * (b - a))


@GRIDS.register("karras")
def karras(
    schedule: NoiseSchedule,
    n_steps: int,
    *,
    rho: float = 7.0,
    t_end: float | None = None,
    to_zero: bool = True,
) -> Grid:
    """Karras et al. 2022, eq. (5), on s = sigma / alpha = exp(-lambda):
    s_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho.
    """

    def ramp(lam_a: Tensor, lam_b: Tensor, u: Tensor) -> Tensor:
        a, b = torch.exp(-lam_a / rho), torch.exp(-lam_b / rho)
        return -rho * torch.log(a + u * (b - a))

    return _lambda_ramp(schedule, n_steps, t_end, to_zero, ramp)


def _discrete_steps(schedule: NoiseSchedule) -> int:
    n = getattr(schedule, "num_steps", None)
    if n is None:
        raise ValueError(
            f"this spacing needs a discrete schedule (DiscreteSchedule), got {schedule!r}; "
            "use uniform_t, quadratic_t, uniform_lambda or karras"
        )
    return n


def _from_indices(schedule: NoiseSchedule, idx: Tensor, to_zero: bool) -> Grid:
    n = _discrete_steps(schedule)
    idx = torch.unique(idx.long()).flip(0)  # decreasing, no repeats
    return Grid.from_times(schedule, (idx.double() + 1) / n, to_zero)


@GRIDS.register("leading")
def leading(schedule: NoiseSchedule, n_steps: int, *, to_zero: bool = True) -> Grid:
    """diffusers 'leading' spacing: indices 0, k, 2k, ... with k = N // n (DDIM's default)."""
    n = _discrete_steps(schedule)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    return _from_indices(schedule, torch.arange(count) * (n // count), to_zero)


@GRIDS.register("trailing")
def trailing(schedule: NoiseSchedule, n_steps: int, *, to_zero: bool = True) -> Grid:
    """diffusers 'trailing' spacing: indices N - 1, N - 1 - k, ... (Lin et al. 2024, Table 2)."""
    n = _discrete_steps(schedule)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    idx = torch.round(torch.arange(n, 0, -n / count, dtype=torch.float64)[:count]) - 1
    return _from_indices(schedule, idx, to_zero)


@GRIDS.register("linspace")
def linspace(schedule: NoiseSchedule, n_steps: int, *, to_zero: bool = True) -> Grid:
    """diffusers 'linspace' spacing: round(linspace(0, N - 1, n))."""
    n = _discrete_steps(schedule)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    return _from_indices(schedule, torch.linspace(0, n - 1, count, dtype=torch.float64).round(), to_zero)


def _check_count(count: int, n: int) -> None:
    if count > n:
        raise ValueError(f"{count} grid points exceed the schedule's {n} training steps")


def make_grid(name: str, schedule: NoiseSchedule, n_steps: int, **kwargs) -> Grid:
    """Build a grid by name; see ``GRIDS.names()``."""
    return GRIDS.get(name)(schedule, n_steps, **kwargs)
