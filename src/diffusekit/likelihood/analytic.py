"""Analytic-DPM's noise moments: the one Monte-Carlo estimate its optimal variance needs.

Bao et al. 2022a (ICLR), Thm 1: the optimal scalar variance of p(x_s | x_t) is
lambda^2 + gain^2 (1 - Gamma_t) with Gamma_t = E||eps_hat(x_t)||^2 / d, estimated once over
training data (their eq. 8). For the exact eps model 1 - Gamma_t = E||eps - eps_hat||^2 / d
(E<eps, eps_hat> = E||eps_hat||^2), and this second form is what is estimated here:

- it is a mean of squares, so it stays positive with few samples, where a Monte-Carlo Gamma_t
  above 1 (common near t = 0 at M = 10-100) would give 1 - Gamma_t <= 0 and collapse the
  variance and the trajectory's cost;
- for an imperfect model it is the variance that is optimal for the model's own mean (the
  scalar case of Bao et al. 2022b, eq. 12), not that of the exact model.

The clamp (Thm 2) is in units of the data: E tr Cov[x0 | x_t] / d <= tr Cov[x0] / d, the data's
per-dimension variance, measured on the same data (no assumption that data lie in [-1, 1]),
and 1 - Gamma_t <= 1. ``NoiseMoments`` is stored as JSON in a run folder and reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..denoiser import Cond, DenoiserLike
from ..files import atomic_write_text
from ..schedules.base import NoiseSchedule
from ..schedules.discrete import DiscreteSchedule
from ..utils import check_positive_int

#: The file name of the moments in a run folder.
MOMENTS_FILE = "analytic_moments.json"


@dataclass(frozen=True)
class NoiseMoments:
    """Per-time noise moments of one model (float64 lists, increasing ``times``).

    ``residual`` E||eps - eps_hat(x_t)||^2 / d (= 1 - Gamma_t for the exact model), ``gamma``
    E||eps_hat||^2 / d (Gamma_t, for reference only), ``residual_se`` the Monte-Carlo standard
    error of ``residual``; ``data_var`` tr Cov[x0] / d of the data used; ``samples`` per time.
    """

    times: tuple[float, ...]
    residual: tuple[float, ...]
    residual_se: tuple[float, ...]
    gamma: tuple[float, ...]
    data_var: float
    samples: int

    def __post_init__(self) -> None:
        n = len(self.times)
        if n < 1 or any(len(v) != n for v in (self.residual, self.residual_se, self.gamma)):
            raise ValueError(f"times, residual, residual_se and gamma must have the same length >= 1, got {n}")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise ValueError("moment times must be strictly increasing")
        if not (self.data_var > 0 and math.isfinite(self.data_var)):
            raise ValueError(f"data_var must be positive, got {self.data_var!r}")

    @property
    def key(self) -> str:
        """A content hash (for caches)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def residual_at(self, t: float | Tensor) -> Tensor:
        """``residual`` at times ``t``, linear in t between the estimated times (float64, t's shape)."""
        tt = torch.as_tensor(t, dtype=torch.float64).cpu()
        knots = torch.tensor(self.times, dtype=torch.float64)
        vals = torch.tensor(self.residual, dtype=torch.float64)
        if bool((tt < knots[0] - 1e-9).any() | (tt > knots[-1] + 1e-9).any()):
            raise ValueError(f"time outside the estimated range [{knots[0]:g}, {knots[-1]:g}]: {tt.min():g}..{tt.max():g}")
        if knots.numel() == 1:
            return vals.expand_as(tt).clone()
        i = torch.searchsorted(knots, tt.clamp(knots[0], knots[-1])).clamp(1, knots.numel() - 1)
        w = (tt - knots[i - 1]) / (knots[i] - knots[i - 1])
        return (vals[i - 1] + w.clamp(0, 1) * (vals[i] - vals[i - 1])).reshape(tt.shape)

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "NoiseMoments":
        raw = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def schedule_times(schedule: NoiseSchedule, n: int | None = None) -> Tensor:
    """The candidate times t_1 < ... < t_N: a ``DiscreteSchedule``'s knots n / N, or ``n`` even times."""
    if n is None:
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError("give the number of steps (or times) for a continuous-time schedule")
        n = schedule.num_steps
        return torch.arange(1, n + 1, dtype=torch.float64) / n
    check_positive_int("n", n)
    return torch.linspace(schedule.t_min, schedule.t_max, n, dtype=torch.float64)


def estimate_moments(
    denoiser: DenoiserLike,
    data: Tensor,
    *,
    times: Tensor | None = None,
    samples: int = 100,
    seed: int = 0,
    batch: int = 1024,
    cond: Cond = None,
) -> NoiseMoments:
    """Monte-Carlo noise moments at every time (Bao et al. 2022a, eq. 8, in the residual form above).

    ``samples`` (M) data items drawn with replacement per time, each with fresh noise; all
    (time, item) pairs go through the model in batches of ``batch``. ``times`` default to the
    schedule's knots (``schedule_times``). ``cond`` (one label per data item) for conditional runs.
    """
    check_positive_int("samples", samples)
    check_positive_int("batch", batch)
    if data.shape[0] < 1:
        raise ValueError("estimate_moments needs at least one data item")
    t = schedule_times(denoiser.schedule) if times is None else torch.as_tensor(times, dtype=torch.float64).flatten()
    n, d = t.numel(), data[0].numel()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.shape[0], (n * samples,), generator=gen)
    tt = t.repeat_interleave(samples)
    alpha, sigma = denoiser.schedule.alpha_sigma(tt)
    sq_res, sq_eps = torch.empty(n * samples, dtype=torch.float64), torch.empty(n * samples, dtype=torch.float64)
    labels = None if cond is None else torch.as_tensor(cond)
    for lo in range(0, n * samples, batch):
        sl = slice(lo, min(lo + batch, n * samples))
        x0 = data[idx[sl]]
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0)
        shape = (-1, *[1] * (x0.ndim - 1))
        a, s = alpha[sl].to(x0).reshape(shape), sigma[sl].to(x0).reshape(shape)
        with torch.no_grad():
            hat = denoiser(a * x0 + s * eps, tt[sl].to(x0.device), None if labels is None else labels[idx[sl]]).eps
        sq_res[sl] = (eps - hat).double().pow(2).flatten(1).sum(1).cpu() / d
        sq_eps[sl] = hat.double().pow(2).flatten(1).sum(1).cpu() / d
    res, eps2 = sq_res.reshape(n, samples), sq_eps.reshape(n, samples)
    se = res.std(1) / math.sqrt(samples) if samples > 1 else torch.full((n,), math.inf, dtype=torch.float64)
    flat = data.double().flatten(1)
    data_var = float(flat.var(0, unbiased=False).mean()) if flat.shape[0] > 1 else float("nan")
    if not data_var > 0:
        raise ValueError(f"the data's variance must be positive to bound the variance (Bao et al. Thm 2), got {data_var!r}")
    return NoiseMoments(tuple(t.tolist()), tuple(res.mean(1).tolist()), tuple(se.tolist()), tuple(eps2.mean(1).tolist()),
                        data_var, samples)


def run_moments(run_dir: str | Path, denoiser: DenoiserLike, data: Tensor, *, samples: int = 100, seed: int = 0,
                batch: int = 1024, cond: Cond = None) -> NoiseMoments:
    """The moments stored in a run folder (``MOMENTS_FILE``), estimated with ``samples`` per time and
    stored on first use; a stored estimate is reused as it is (delete the file to re-estimate)."""
    path = Path(run_dir) / MOMENTS_FILE
    if path.is_file():
        return NoiseMoments.load(path)
    moments = estimate_moments(denoiser, data, samples=samples, seed=seed, batch=batch, cond=cond)
    moments.save(path)
    return moments
