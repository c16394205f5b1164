"""Step grids: where a sampler evaluates, kept apart from the schedule.

A grid is N + 1 decreasing points in float64. Its last point may be the clean
end (alpha = 1, sigma = 0), reached without a model call at that point; this is
how every sampler "denoises to zero" (Karras et al. 2022 append sigma = 0; DDPM's
final step uses alpha_bar = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry
from ..tuned import GAUSSIAN_LAM_END, GAUSSIAN_POWER, GAUSSIAN_TABLE, TUNED_TABLE, TUNED_WARP
from ..utils import check_positive_float, check_positive_int
from .base import NoiseSchedule


@dataclass(frozen=True)
class Grid:
    """Time points ``t`` with their ``alpha`` and ``sigma`` (all float64, CPU, length N + 1).

    The clean end, if present, is stored as t = 0, alpha = 1, sigma = 0.
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    jumps: bool = False  # rising intervals are forward jumps (RePaint), not ODE steps backwards

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, t: Tensor, to_zero: bool = True, jumps: bool = False) -> "Grid":
        """Evaluate the schedule at decreasing times ``t``; append the clean end if ``to_zero``.

        With ``jumps`` the times may also rise (RePaint's resampling schedule, Lugmayr et
        al. 2022): ``sample`` takes each rising interval by a forward jump. A 2-d ``t`` of
        shape (N + 1, B) gives every sample its own decreasing times (``stack``).
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim == 2 and not jumps:
            return cls.stack([cls.from_times(schedule, col, to_zero) for col in t.T])
        t = t.flatten()
        if t.numel() < 1:
            raise ValueError("a grid needs at least one time point")
        if t.numel() > 1 and not bool((t[1:] != t[:-1]).all() if jumps else (t[1:] < t[:-1]).all()):
            what = "differ from one point to the next" if jumps else "be strictly decreasing (jumps=True allows rises)"
            raise ValueError(f"grid times must {what}, got {t.tolist()}")
        schedule.validate_t(t)
        alpha, sigma = schedule.alpha_sigma(t)
        if to_zero:
            t = torch.cat([t, t.new_zeros(1)])
            alpha = torch.cat([alpha, alpha.new_ones(1)])
            sigma = torch.cat([sigma, sigma.new_zeros(1)])
        if t.numel() < 2:
            raise ValueError("a grid needs at least two points (one step)")
        return cls(t, alpha, sigma, jumps and bool((t[1:] > t[:-1]).any()))

    @classmethod
    def stack(cls, grids: Sequence["Grid"]) -> "Grid":
        """One per-sample grid (t of shape (N + 1, B)) from B grids of N steps each, e.g. each
        sample's own SDEdit start. Solvers with ``per_sample_times`` run it in one batch."""
        if not grids or len({g.n_steps for g in grids}) != 1 or any(g.per_sample or g.jumps for g in grids):
            raise ValueError("stack needs one or more plain grids with the same number of steps")
        if len({g.ends_at_zero for g in grids}) != 1:
            raise ValueError("stacked grids must all end at the clean end, or none")
        return cls(*(torch.stack([getattr(g, f) for g in grids], 1) for f in ("t", "alpha", "sigma")))

    @property
    def per_sample(self) -> bool:
        """True for a grid with one column of times per sample."""
        return self.t.ndim == 2

    @property
    def n_steps(self) -> int:
        return self.t.shape[0] - 1

    @property
    def lam(self) -> Tensor:
        """log(alpha / sigma): +inf at the clean end, -inf where alpha = 0."""
        return self.alpha.log() - self.sigma.log()

    @property
    def ends_at_zero(self) -> bool:
        return bool((self.sigma[-1] == 0).all())

    def falling_runs(self) -> list[tuple[int, int]]:
        """(start, stop) point indices of the maximal decreasing runs, each rising interval a run
        of its own; [(0, N)] for a grid without jumps (also a rising encoding grid)."""
        if not self.jumps:
            return [(0, self.n_steps)]
        t = self.t.tolist()
        runs: list[tuple[int, int]] = []
        start = 0
        for i in range(len(t) - 1):
            if t[i + 1] > t[i]:
                if i > start:
                    runs.append((start, i))
                runs.append((i, i + 1))
                start = i + 1
        if start < len(t) - 1:
            runs.append((start, len(t) - 1))
        return runs

    def slice(self, start: int, stop: int) -> "Grid":
        """The sub-grid of points start..stop (inclusive)."""
        return Grid(self.t[start : stop + 1], self.alpha[start : stop + 1], self.sigma[start : stop + 1])

    def __len__(self) -> int:
        return self.t.shape[0]


GridRule = Callable[..., Grid]
GRIDS: Registry[GridRule] = Registry("step grid")


def _span(schedule: NoiseSchedule, t_end: float | None, t_start: float | None = None) -> tuple[float, float]:
    """(t_end, t_start) of a grid: by default the schedule's whole range [t_min, t_max].

    A later ``t_start`` starts the grid inside the process (SDEdit / img2img, Meng et al.
    2022): every step is spent below it.
    """
    hi = schedule.t_max if t_start is None else float(t_start)
    lo = schedule.t_min if t_end is None else float(t_end)
    schedule.validate_t(hi)
    schedule.validate_t(lo)
    if not lo < hi:
        raise ValueError(f"t_end={lo:g} must be below t_start={hi:g}")
    return lo, hi


def _points(n_steps: int, to_zero: bool) -> Tensor:
    """u in [0, 1] (0 = t_max, 1 = t_end) for the points before the clean end."""
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    if count == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(0, 1, count, dtype=torch.float64)


@GRIDS.register("uniform_t")
def uniform_t(
    schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, t_start: float | None = None, to_zero: bool = True
) -> Grid:
    """Equal steps in t (DDIM's uniform skip; Euler on rectified flow)."""
    lo, hi = _span(schedule, t_end, t_start)
    u = _points(n_steps, to_zero)
    return Grid.from_times(schedule, hi + u * (lo - hi), to_zero)


@GRIDS.register("quadratic_t")
def quadratic_t(
    schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, t_start: float | None = None, to_zero: bool = True
) -> Grid:
    """Steps quadratic in t, dense near the data (Song et al. 2021, DDIM, sec. D.2)."""
    lo, hi = _span(schedule, t_end, t_start)
    u = _points(n_steps, to_zero)
    return Grid.from_times(schedule, lo + (1 - u) ** 2 * (hi - lo), to_zero)


def _lambda_ramp(
    schedule: NoiseSchedule,
    n_steps: int,
    t_end: float | None,
    to_zero: bool,
    ramp: Callable[[Tensor, Tensor, Tensor], Tensor],
    snap_end: bool = True,
    t_start: float | None = None,
) -> Grid:
    """Points placed by ``ramp(lam_start, lam_end, u)`` in log-SNR.

    Where lambda(t_max) = -inf (zero terminal SNR) the first point stays at t_max
    and the ramp starts one uniform-t step below it. ``snap_end``: the last point is
    exactly t_end (the ramp ends at lambda(t_end)).
    """
    lo, hi = _span(schedule, t_end, t_start)
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
    if snap_end:
        t[-1] = lo if len(u) > 1 else t_start
    return Grid.from_times(schedule, torch.cat([head, t]), to_zero)


@GRIDS.register("uniform_lambda")
def uniform_lambda(
    schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, t_start: float | None = None, to_zero: bool = True
) -> Grid:
    """Equal steps in log-SNR lambda (DPM-Solver's 'logSNR' spacing, Lu et al. 2022)."""
    return _lambda_ramp(schedule, n_steps, t_end, to_zero, lambda a, b, u: a + u * (b - a), t_start=t_start)


@GRIDS.register("karras")
def karras(
    schedule: NoiseSchedule,
    n_steps: int,
    *,
    rho: float = 7.0,
    t_end: float | None = None,
    t_start: float | None = None,
    to_zero: bool = True,
) -> Grid:
    """Karras et al. 2022, eq. (5), on s = sigma / alpha = exp(-lambda):
    s_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho.
    """

    def ramp(lam_a: Tensor, lam_b: Tensor, u: Tensor) -> Tensor:
        a, b = torch.exp(-lam_a / rho), torch.exp(-lam_b / rho)
        return -rho * torch.log(a + u * (b - a))

    return _lambda_ramp(schedule, n_steps, t_end, to_zero, ramp, t_start=t_start)


@GRIDS.register("uniform_angle")
def uniform_angle(
    schedule: NoiseSchedule, n_steps: int, *, t_end: float | None = None, t_start: float | None = None, to_zero: bool = True
) -> Grid:
    """Equal steps in the angle phi = atan(sigma / alpha), down to phi = 0 at the clean end: uniform t of
    the cosine schedule (Nichol & Dhariwal 2021), the grid of progressive distillation (Salimans & Ho
    2022, sec. 4 and Alg. 2). Nested: the grid of n steps is every other point of the grid of 2n steps.
    Points below t_end are raised to it (only with hundreds of steps on schedules with a large t_min).
    Without ``to_zero`` the n + 1 points run from phi(t_start) to phi(t_end) instead.
    """
    lo, hi = _span(schedule, t_end, t_start)
    check_positive_int("n_steps", n_steps)
    phi_hi, phi_lo = (float(torch.atan2(s, a)) for a, s in (schedule.alpha_sigma(torch.tensor(v, dtype=torch.float64))
                                                          for v in (hi, lo)))
    k = torch.arange(n_steps if to_zero else n_steps + 1, dtype=torch.float64)
    phi = phi_hi * (1 - k / n_steps) if to_zero else phi_hi + k / n_steps * (phi_lo - phi_hi)
    t = schedule.t_of_log_snr(-torch.log(torch.tan(phi))).clamp(lo, hi)
    t[0] = hi
    if not to_zero:
        t[-1] = lo
    return Grid.from_times(schedule, t, to_zero)


def gaussian_lam_end(n_steps: int) -> float:
    """Default last log-SNR of ``gaussian_lambda`` (``GAUSSIAN_LAM_END``): 0.75 (sigma / alpha ~
    0.47) up to 6 steps, then 0.1 higher per step (1.15 at 10, 2.15 at 20), so that with many
    steps the grid reaches t_end and the sampler converges to the ODE solution for any data.
    An absolute log-SNR fitted to data in about [-1, 1] (see ``diffusekit.tuned``)."""
    base, per_step, after = GAUSSIAN_LAM_END
    return base + per_step * max(0, n_steps - after)


def lambda_warp(u: Tensor, warp: Sequence[float]) -> Tensor:
    """The piecewise-linear increasing map [0, 1] -> [0, 1] through (k / K, warp[k])."""
    w = torch.as_tensor(warp, dtype=torch.float64)
    if w.ndim != 1 or w.numel() < 2 or float(w[0]) != 0.0 or float(w[-1]) != 1.0 or not bool((w[1:] > w[:-1]).all()):
        raise ValueError(f"warp must increase strictly from 0 to 1 with at least two knots, got {list(warp)}")
    return _interp(u, w)


def _interp(u: Tensor, values: Tensor) -> Tensor:
    """Piecewise-linear interpolation through (k / K, values[k]), k = 0..K, at u in [0, 1]."""
    pos = u * (values.numel() - 1)
    k = pos.floor().clamp(0, values.numel() - 2).long()
    return values[k] + (pos - k) * (values[k + 1] - values[k])


@GRIDS.register("tuned_lambda")
def tuned_lambda(
    schedule: NoiseSchedule,
    n_steps: int,
    *,
    warp: Sequence[float] | None = None,
    fractions: Sequence[float] | None = None,
    t_end: float | None = None,
    t_start: float | None = None,
    to_zero: bool = True,
) -> Grid:
    """Log-SNR points lambda_i = lambda_a + f_i (lambda_b - lambda_a) between t_max (a) and
    t_end (b), with f_i = w(i / (n - 1)) for the piecewise-linear ``lambda_warp`` through
    ``warp`` (identity = ``uniform_lambda``), or f_i = ``fractions[i]`` given per point.

    Defaults: the fitted ``TUNED_TABLE`` row for this step count if there is one (grids
    ending at the clean end), else the fitted ``TUNED_WARP`` (``diffusekit.tuned``). Both were fitted by
    ``benchmarks/grid_search.py`` on sharp Gaussian mixtures other than the benchmark's;
    being fractions of the log-SNR span they apply to any schedule.
    """
    if warp is not None and fractions is not None:
        raise ValueError("give warp or fractions, not both")
    count = n_steps if to_zero else n_steps + 1
    if fractions is None and warp is None and to_zero and count in TUNED_TABLE:
        fractions = TUNED_TABLE[count]
    if fractions is not None:
        f = torch.as_tensor(fractions, dtype=torch.float64)
        if f.shape != (count,) or float(f[0]) != 0.0 or float(f[-1]) > 1.0 or not bool((f[1:] > f[:-1]).all()):
            raise ValueError(
                f"fractions must be {count} increasing values from 0 to at most 1 "
                f"(one per grid point before the clean end), got {list(fractions)}"
            )
        return _lambda_ramp(schedule, n_steps, t_end, to_zero, lambda a, b, u: a + _interp(u, f) * (b - a), bool(f[-1] == 1.0), t_start)
    knots = TUNED_WARP if warp is None else warp
    return _lambda_ramp(schedule, n_steps, t_end, to_zero, lambda a, b, u: a + lambda_warp(u, knots) * (b - a), t_start=t_start)


@GRIDS.register("tuned_warp")
def tuned_warp(
    schedule: NoiseSchedule,
    n_steps: int,
    *,
    warp: Sequence[float] = TUNED_WARP,
    t_end: float | None = None,
    t_start: float | None = None,
    to_zero: bool = True,
) -> Grid:
    """``tuned_lambda`` with the shared warp at every step count (no per-count table rows):
    smooth in the step count; the better choice for the Adams-type solvers (iPNDM, PLMS, LMS)
    and Euler, for which the table rows (fitted with UniPC) are not."""
    return tuned_lambda(schedule, n_steps, warp=warp, t_end=t_end, t_start=t_start, to_zero=to_zero)


@GRIDS.register("gaussian_lambda")
def gaussian_lambda(
    schedule: NoiseSchedule,
    n_steps: int,
    *,
    lam_end: float | None = None,
    power: float | None = None,
    t_end: float | None = None,
    t_start: float | None = None,
    to_zero: bool = True,
) -> Grid:
    """Log-SNR points lambda_i = lambda_start + (lambda_stop - lambda_start) (i / (n - 1))^power,
    lambda_stop = min(``lam_end``, lambda(t_end)) (default ``gaussian_lam_end``, power
    ``GAUSSIAN_POWER``), for solvers whose clean-end step is exact for locally Gaussian
    modes (``gaussian_pc``): once the modes of data scaled to about [-1, 1] have separated
    (log-SNR ~ 1) that step finishes exactly, so every call is spent at higher noise,
    where trajectories choose their mode; power < 1 takes one long first step and packs
    the rest toward lambda_stop. With neither option given, step counts in
    ``GAUSSIAN_TABLE`` use its fitted log-SNRs (when they lie inside the schedule's span).
    All defaults were fitted with ``gaussian_pc`` by ``benchmarks/grid_search.py`` on sharp
    mixtures other than the benchmark's. Where the ramp starts above ``lam_end`` (zero
    terminal SNR with very few steps) it runs to t_end.
    """
    if power is None:
        row = GAUSSIAN_TABLE.get(n_steps) if lam_end is None and to_zero else None
        if row is not None:
            lo, hi = _span(schedule, t_end, t_start)
            lam_span = schedule.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
            if float(lam_span[0]) < row[0] and row[-1] <= float(lam_span[1]):
                t_row = schedule.t_of_log_snr(torch.tensor(row, dtype=torch.float64))
                return Grid.from_times(schedule, torch.cat([torch.tensor([hi], dtype=torch.float64), t_row]), to_zero)
        power = GAUSSIAN_POWER
    check_positive_float("power", power)
    stop_at = gaussian_lam_end(n_steps) if lam_end is None else lam_end

    def ramp(a: Tensor, b: Tensor, u: Tensor) -> Tensor:
        stop = torch.clamp(b, max=stop_at) if stop_at > a else b  # a ramp starting above lam_end runs to t_end
        return a + (stop - a) * u**power

    return _lambda_ramp(schedule, n_steps, t_end, to_zero, ramp, snap_end=False, t_start=t_start)


def _discrete_steps(schedule: NoiseSchedule, t_start: float | None = None) -> int:
    """The schedule's number of training steps N, or of those at or below ``t_start``."""
    n = getattr(schedule, "num_steps", None)
    if n is None:
        raise ValueError(
            f"this spacing needs a discrete schedule (DiscreteSchedule), got {schedule!r}; "
            "use uniform_t, quadratic_t, uniform_lambda or karras"
        )
    if t_start is None:
        return n
    _span(schedule, None, t_start)
    return math.floor(float(t_start) * n + 1e-9)


def _from_indices(schedule: NoiseSchedule, idx: Tensor, to_zero: bool) -> Grid:
    n = schedule.num_steps  # type: ignore[attr-defined]
    idx = torch.unique(idx.long()).flip(0)  # decreasing, no repeats
    return Grid.from_times(schedule, (idx.double() + 1) / n, to_zero)


@GRIDS.register("leading")
def leading(schedule: NoiseSchedule, n_steps: int, *, t_start: float | None = None, to_zero: bool = True) -> Grid:
    """diffusers 'leading' spacing: indices 0, k, 2k, ... with k = N // n (DDIM's default)."""
    n = _discrete_steps(schedule, t_start)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    return _from_indices(schedule, torch.arange(count) * (n // count), to_zero)


@GRIDS.register("trailing")
def trailing(schedule: NoiseSchedule, n_steps: int, *, t_start: float | None = None, to_zero: bool = True) -> Grid:
    """diffusers 'trailing' spacing: indices N - 1, N - 1 - k, ... (Lin et al. 2024, Table 2)."""
    n = _discrete_steps(schedule, t_start)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    idx = torch.round(torch.arange(n, 0, -n / count, dtype=torch.float64)[:count]) - 1
    return _from_indices(schedule, idx, to_zero)


@GRIDS.register("linspace")
def linspace(schedule: NoiseSchedule, n_steps: int, *, t_start: float | None = None, to_zero: bool = True) -> Grid:
    """diffusers 'linspace' spacing: round(linspace(0, N - 1, n))."""
    n = _discrete_steps(schedule, t_start)
    check_positive_int("n_steps", n_steps)
    count = n_steps if to_zero else n_steps + 1
    _check_count(count, n)
    return _from_indices(schedule, torch.linspace(0, n - 1, count, dtype=torch.float64).round(), to_zero)


def _check_count(count: int, n: int) -> None:
    if count > n:
        raise ValueError(f"{count} grid points exceed the schedule's {n} training steps")


_GRID_CACHE: dict[tuple, Grid] = {}


def make_grid(name: str, schedule: NoiseSchedule, n_steps: int, **kwargs) -> Grid:
    """Build a grid by name; see ``GRIDS.names()``.

    Grids are pure functions of (rule, schedule, steps, options) and schedules are immutable,
    so a grid is built once and shared (treat its tensors as read-only): repeated sampling
    calls cost no grid arithmetic.
    """
    rule = GRIDS.get(name)
    try:
        key: tuple | None = (name, schedule, n_steps, tuple(sorted(kwargs.items())))
        cached = _GRID_CACHE.get(key)  # type: ignore[arg-type]
    except TypeError:  # unhashable options (e.g. a list of warp knots): no sharing
        key, cached = None, None
    if cached is not None:
        return cached
    grid = rule(schedule, n_steps, **kwargs)
    if key is not None:
        if len(_GRID_CACHE) >= 1024:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = grid
    return grid
