"""Improved precision and recall (Kynkaanniemi et al. 2019).

Each set's manifold is approximated by the union of balls around its points,
each with radius equal to the distance to its k-th nearest neighbour within the
set. Precision is the fraction of generated points inside the real manifold
(sample quality); recall is the fraction of real points inside the generated
manifold (coverage). Distances are computed with :func:`torch.cdist` in row
chunks so memory stays bounded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor

#: Upper bound on the number of entries of one distance block (float64: 128 MiB).
_MAX_BLOCK = 1 << 24


class PrecisionRecall(NamedTuple):
    """Improved precision and recall, both in [0, 1]."""

    precision: float
    recall: float


def _as_tensor(x: ArrayLike, what: str) -> Tensor:
    t = x.detach().to("cpu") if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{what} must have shape (N, F), got {tuple(t.shape)}")
    return t


def _rows_per_chunk(chunk_size: int, n_cols: int) -> int:
    return max(1, min(chunk_size, _MAX_BLOCK // max(n_cols, 1)))


def knn_radii(points: ArrayLike, k: int = 3, chunk_size: int = 1024) -> Tensor:
    """Distance from each point to its k-th nearest other point in the same set, shape (N,)."""
    x = _as_tensor(points, "points")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    rows = _rows_per_chunk(chunk_size, n)
    out = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, rows):
        d = torch.cdist(x[start:start + rows], x)
        # The point itself is at distance 0, so the k-th neighbour is the (k+1)-th smallest.
        out[start:start + rows] = d.kthvalue(k + 1, dim=1).values
    return out


def manifold_coverage(queries: ArrayLike, centres: ArrayLike, radii: Tensor, chunk_size: int = 1024) -> float:
    """Fraction of ``queries`` within distance ``radii[i]`` of some ``centres[i]``."""
    q = _as_tensor(queries, "queries")
    c = _as_tensor(centres, "centres")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"feature dimensions differ: {q.shape[1]} vs {c.shape[1]}")
    r = radii.to(torch.float64).reshape(1, -1)
    rows = _rows_per_chunk(chunk_size, c.shape[0])
    inside = 0
    for start in range(0, q.shape[0], rows):
        d = torch.cdist(q[start:start + rows], c)
        inside += int((d <= r).any(dim=1).sum())
    return inside / q.shape[0]


def precision_recall(
    real_features: ArrayLike, fake_features: ArrayLike, *, k: int = 3, chunk_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real`` (Kynkaanniemi et al. 2019)."""
    real = _as_tensor(real_features, "real_features")
    fake = _as_tensor(fake_features, "fake_features")
    real_radii = knn_radii(real, k, chunk_size)
    fake_radii = knn_radii(fake, k, chunk_size)
    precision = manifold_coverage(fake, real, real_radii, chunk_size)
    recall = manifold_coverage(real, fake, fake_radii, chunk_size)
    return PrecisionRecall(precision=precision, recall=recall)
