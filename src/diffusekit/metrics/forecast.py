"""Scores of probabilistic forecasts given by samples: CRPS and central-interval coverage.

CRPS(F, y) = E|X - y| - 1/2 E|X - X'| for X, X' ~ F independent (Gneiting & Raftery 2007,
eq. 21), here for F the empirical distribution of n samples; the pair term uses the sorted
samples, sum_{i,j} |x_i - x_j| = 2 sum_i (2i - n + 1) x_(i) (0-based i), so it costs a sort.
A point forecast (n = 1) has CRPS = absolute error.
"""

from __future__ import annotations

import torch
from torch import Tensor


def crps_samples(samples: Tensor, truth: Tensor) -> Tensor:
    """CRPS of the empirical distribution of ``samples`` (n, *shape) at ``truth`` (*shape), per entry."""
    if samples.ndim < 1 or samples.shape[1:] != truth.shape:
        raise ValueError(f"samples must be (n, *truth.shape) = (n, {tuple(truth.shape)}), got {tuple(samples.shape)}")
    n = samples.shape[0]
    first = (samples - truth).abs().mean(0)
    ranks = torch.arange(n, dtype=samples.dtype, device=samples.device).reshape(-1, *[1] * truth.ndim)
    pairs = 2 * ((2 * ranks - n + 1) * samples.sort(0).values).sum(0) / n**2
    return first - 0.5 * pairs


def interval_coverage(samples: Tensor, truth: Tensor, level: float) -> Tensor:
    """Whether ``truth`` lies in the central ``level`` interval of the samples (per entry, bool)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lo, hi = torch.quantile(samples, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype,
                                                  device=samples.device), dim=0)
    return (truth >= lo) & (truth <= hi)
