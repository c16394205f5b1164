"""Sliced Wasserstein distance between point clouds (Rabin et al. 2011; Bonneel et al. 2015).

SW_p(X, Y)^p = E_theta[ W_p(theta.X, theta.Y)^p ] over directions theta on the
unit sphere, estimated with a fixed set of random directions. Each 1-D W_p is
exact from sorted projections (equal sizes) or from empirical quantile
functions evaluated at common levels (unequal sizes). Meant for low-dimensional
toy data (2-D mixtures, swiss roll) where feature networks make no sense.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def _as_points(x: ArrayLike, what: str) -> Tensor:
    t = x.detach().to("cpu") if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{what} must have shape (N, D) or (N,) with N >= 1, got {tuple(t.shape)}")
    return t


def random_directions(dim: int, num: int, seed: int = 0) -> Tensor:
    """``num`` unit vectors in R^dim, uniform on the sphere, as a float64 (dim, num) matrix."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, num, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=0, keepdim=True).clamp_min(1e-300)


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Empirical (step) quantile function of each column of ``sorted_values`` at ``levels`` in (0, 1)."""
    n = sorted_values.shape[0]
    idx = torch.clamp((levels * n).floor().long(), 0, n - 1)
    return sorted_values[idx]


def sliced_wasserstein(
    x: ArrayLike,
    y: ArrayLike,
    *,
    num_projections: int = 256,
    p: float = 2.0,
    seed: int = 0,
    num_quantiles: int | None = None,
) -> float:
    """Sliced p-Wasserstein distance between point clouds (N, D) and (M, D).

    With N == M (and ``num_quantiles`` unset) each slice is the exact 1-D W_p of
    sorted projections; otherwise both quantile functions are compared at
    ``num_quantiles`` (default max(N, M)) mid-point levels. Directions come from
    ``seed``, so the value is reproducible.
    """
    a = _as_points(x, "x")
    b = _as_points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    dirs = random_directions(a.shape[1], num_projections, seed)
    pa = torch.sort(a @ dirs, dim=0).values
    pb = torch.sort(b @ dirs, dim=0).values
    if pa.shape[0] != pb.shape[0] or num_quantiles is not None:
        q = num_quantiles if num_quantiles is not None else max(pa.shape[0], pb.shape[0])
        levels = (torch.arange(q, dtype=torch.float64) + 0.5) / q
        pa, pb = _quantiles(pa, levels), _quantiles(pb, levels)
    per_slice = (pa - pb).abs().pow(p).mean(dim=0)
    return float(per_slice.mean() ** (1.0 / p))
