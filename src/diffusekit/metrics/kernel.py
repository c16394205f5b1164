"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

KID is the unbiased estimate of the squared maximum mean discrepancy between
two feature sets under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets; unlike FID it has an unbiased estimator, so two
samples of one distribution give about 0 at any sample size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


class KIDResult(NamedTuple):
    """Mean and standard deviation of MMD^2 over subsets."""

    mean: float
    std: float


def _as_float64(x: ArrayLike, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape (N, F), got {arr.shape}")
    return arr


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree with gamma = 1 / d by default (Binkowski et al. 2018)."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate: within-set kernel means exclude the diagonal."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("each set needs at least 2 samples")
    k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features_a: ArrayLike,
    features_b: ArrayLike,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> KIDResult:
    """KID (Binkowski et al. 2018): unbiased MMD^2 over ``num_subsets`` random subsets.

    Each subset draws ``min(subset_size, N_a, N_b)`` rows without replacement from
    each set, reproducibly from ``seed``. Returns the mean and std over subsets.
    """
    a = _as_float64(features_a, "features_a")
    b = _as_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        xa = a[rng.choice(a.shape[0], size, replace=False)]
        xb = b[rng.choice(b.shape[0], size, replace=False)]
        values[i] = mmd2_unbiased(xa, xb, degree, gamma, coef0)
    return KIDResult(mean=float(values.mean()), std=float(values.std()))
