"""Frechet distance between Gaussian fits of feature sets (Heusel et al. 2017, FID).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium") fits a Gaussian N(mu, Sigma) to the features of
each image set and reports the squared 2-Wasserstein (Frechet) distance

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}).

This module holds the statistics (:class:`FeatureStats`, accumulated over
batches in float64), the distance, the :class:`FeatureExtractor` protocol, the
batching/progress loop (:func:`compute_stats`) and an on-disk cache of reference
statistics (:func:`cached_stats`). It is feature-agnostic: the Inception network
lives in :mod:`diffusekit.metrics.inception`, small dataset classifiers in
:mod:`diffusekit.metrics.classifier`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..progress import progress_bar

ArrayLike = np.ndarray | Tensor

#: Environment variable that overrides the cache folder.
CACHE_ENV_VAR = "DIFFUSEKIT_CACHE"


def default_cache_dir() -> Path:
    """The cache folder: ``$DIFFUSEKIT_CACHE`` if set, else ``~/.cache/diffusekit``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "diffusekit"


def _as_float64_2d(features: ArrayLike, what: str = "features") -> np.ndarray:
    """Features as a C-contiguous float64 (N, F) numpy array."""
    if isinstance(features, Tensor):
        arr = features.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape (N, F), got {arr.shape}")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class FeatureStats:
    """Mean (F,), unbiased covariance (F, F) and sample count of a feature set, in float64.

    These are the sufficient statistics of FID (Heusel et al. 2017). Build them with
    :meth:`from_features` or, for data that arrives in batches, with
    :class:`FeatureStatsAccumulator`.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"mean {mean.shape} and cov {cov.shape} do not match (F,) and (F, F)")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "count", int(self.count))

    @property
    def dim(self) -> int:
        """Feature dimension F."""
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: ArrayLike) -> FeatureStats:
        """Statistics of an (N, F) feature matrix, N >= 2 (covariance with ddof = 1)."""
        acc = FeatureStatsAccumulator()
        acc.update(features)
        return acc.result()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored in a ``.npz`` file (``mean``, ``cov``, ``count``)."""
        return {"mean": self.mean, "cov": self.cov, "count": np.asarray(self.count, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> FeatureStats:
        """Inverse of :meth:`to_arrays` (accepts a dict or an open ``np.load`` result)."""
        return cls(mean=np.asarray(arrays["mean"]), cov=np.asarray(arrays["cov"]),
                   count=int(np.asarray(arrays["count"])))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` as ``.npz``, atomically (temporary file + ``os.replace``)."""
        _atomic_savez(Path(path), self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read statistics written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as data:
            return cls.from_arrays(data)


class FeatureStatsAccumulator:
    """Streaming float64 accumulation of mean and covariance over batches of (B, F) features.

    Sums are taken about a shift (the first batch's mean), which keeps the
    ``sum(x x^T) - n mu mu^T`` covariance formula accurate when features have a
    large mean relative to their spread.
    """

    def __init__(self) -> None:
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self.count = 0

    def update(self, features: ArrayLike) -> None:
        """Add a (B, F) batch of features."""
        x = _as_float64_2d(features)
        if x.shape[0] == 0:
            return
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dimension changed from {self._shift.shape[0]} to {x.shape[1]}")
        assert self._sum is not None and self._outer is not None
        xc = x - self._shift
        self._sum += xc.sum(axis=0)
        self._outer += xc.T @ xc
        self.count += x.shape[0]

    def result(self) -> FeatureStats:
        """The :class:`FeatureStats` of everything added so far (needs at least 2 samples)."""
        if self._shift is None or self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        assert self._sum is not None and self._outer is not None
        n = self.count
        centred_mean = self._sum / n
        cov = (self._outer - n * np.outer(centred_mean, centred_mean)) / (n - 1)
        cov = 0.5 * (cov + cov.T)
        return FeatureStats(mean=self._shift + centred_mean, cov=cov, count=n)


def _single_threaded_lapack() -> contextlib.AbstractContextManager[object]:
    """Limit BLAS/LAPACK to one thread for the decompositions.

    On a busy 2-core machine multithreaded OpenBLAS ``syevd`` was measured at 18 s
    for a 2048-d covariance against 1.4 s single-threaded; when idle one thread
    costs only ~30% more, so one thread is the robust choice.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl ships with scikit-learn; without it run as is
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; eigenvalues below round-off are set to 0."""
    w, v = np.linalg.eigh(cov)
    top = max(float(w.max(initial=0.0)), 0.0)
    tol = top * cov.shape[0] * np.finfo(np.float64).eps
    w = np.where(w > tol, w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((S_a S_b)^{1/2}) as the nuclear norm of S_a^{1/2} S_b^{1/2}.

    The singular values of R_a R_b (R = symmetric square roots) are the square roots
    of the eigenvalues of S_a S_b, but are computed to absolute accuracy
    eps * ||S|| instead of sqrt(eps) * ||S||, so no complex parts or negative
    eigenvalues appear and near-singular (e.g. N < F) covariances are fine.
    """
    prod = _sqrt_psd(cov_a) @ _sqrt_psd(cov_b)
    try:
        s = scipy.linalg.svd(prod, compute_uv=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:
        s = scipy.linalg.svd(prod, compute_uv=False, lapack_driver="gesvd", check_finite=False)
    return float(s.sum())


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats, *, eps: float = 1e-6) -> float:
    """Squared Frechet distance between N(mu_a, S_a) and N(mu_b, S_b) (Heusel et al. 2017).

    ``eps`` is added to both diagonals only when the first attempt is not finite.
    Rounding can make a distance of exactly zero come out at about -1e-12; the
    result is clipped at 0.
    """
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"feature dimensions differ: {stats_a.dim} vs {stats_b.dim}")
    for s in (stats_a, stats_b):
        if not (np.isfinite(s.mean).all() and np.isfinite(s.cov).all()):
            raise ValueError("statistics contain NaN or inf")
    diff = stats_a.mean - stats_b.mean
    cov_a = 0.5 * (stats_a.cov + stats_a.cov.T)
    cov_b = 0.5 * (stats_b.cov + stats_b.cov.T)
    with _single_threaded_lapack():
        try:
            tr_sqrt = _trace_sqrt_product(cov_a, cov_b)
        except np.linalg.LinAlgError:
            tr_sqrt = float("nan")
        if not np.isfinite(tr_sqrt):
            # Distance between the eps-regularised Gaussians: traces and product both offset.
            offset = eps * np.eye(stats_a.dim)
            cov_a, cov_b = cov_a + offset, cov_b + offset
            tr_sqrt = _trace_sqrt_product(cov_a, cov_b)
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    if not np.isfinite(value):
        raise FloatingPointError("Frechet distance is not finite even with the eps offset")
    return max(value, 0.0)


def frechet_distance_from_features(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Frechet distance between the Gaussian fits of two (N, F) feature matrices."""
    return frechet_distance(FeatureStats.from_features(features_a), FeatureStats.from_features(features_b))


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps an (N, ...) image tensor to (N, F) features; ``name`` identifies it in cache keys."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


Data = ArrayLike | Iterable[Any]


def _first_tensor(item: Any) -> Tensor:
    """The image tensor of a batch: the batch itself, or the first entry of a tuple/list/dict."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    elif isinstance(item, dict):
        for key in ("image", "images", "x"):
            if key in item:
                item = item[key]
                break
        else:
            raise TypeError(f"cannot find images in a batch dict with keys {sorted(item)}")
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, Tensor):
        raise TypeError(f"expected a tensor batch, got {type(item).__name__}")
    return item


def _iter_batches(data: Data, batch_size: int, max_items: int | None) -> tuple[Iterator[Tensor], int | None]:
    """Batches of at most ``batch_size`` items from a tensor/array or an iterable of batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, Tensor):
        n = data.shape[0] if max_items is None else min(data.shape[0], max_items)
        tensor = data

        def from_tensor() -> Iterator[Tensor]:
            for start in range(0, n, batch_size):
                yield tensor[start:min(start + batch_size, n)]

        return from_tensor(), n

    total: int | None = None
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        total = len(dataset)
    if max_items is not None:
        total = max_items if total is None else min(total, max_items)

    def from_iterable() -> Iterator[Tensor]:
        seen = 0
        for item in data:
            batch = _first_tensor(item)
            if max_items is not None:
                batch = batch[: max_items - seen]
            for start in range(0, batch.shape[0], batch_size):
                chunk = batch[start:start + batch_size]
                seen += chunk.shape[0]
                yield chunk
            if max_items is not None and seen >= max_items:
                return

    return from_iterable(), total


def _run_extractor(
    extractor: Callable[[Tensor], Tensor],
    data: Data,
    batch_size: int,
    progress: bool,
    max_items: int | None,
    sink: Callable[[np.ndarray], None],
) -> None:
    """Feed every batch through ``extractor`` and pass float64 features to ``sink``."""
    batches, total = _iter_batches(data, batch_size, max_items)
    desc = f"features [{getattr(extractor, 'name', type(extractor).__name__)}]"
    with progress_bar(total=total, desc=desc, unit="img", enabled=progress, leave=False) as bar:
        with torch.inference_mode():
            for batch in batches:
                if batch.shape[0] == 0:
                    continue
                feats = extractor(batch)
                if feats.ndim != 2 or feats.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"extractor returned shape {tuple(feats.shape)} for a batch of {batch.shape[0]}"
                    )
                sink(_as_float64_2d(feats))
                bar.update(batch.shape[0])


def compute_stats(
    extractor: Callable[[Tensor], Tensor],
    data: Data,
    batch_size: int = 64,
    progress: bool = True,
    *,
    max_items: int | None = None,
) -> FeatureStats:
    """Stream ``data`` through ``extractor`` and return float64 :class:`FeatureStats`.

    ``data`` is an (N, ...) tensor/array or an iterable of batches (tensors, or
    tuples/lists whose first entry is the image tensor, e.g. a DataLoader).
    Batches are re-cut to at most ``batch_size``; ``max_items`` stops early.
    """
    acc = FeatureStatsAccumulator()
    _run_extractor(extractor, data, batch_size, progress, max_items, acc.update)
    return acc.result()


def compute_features(
    extractor: Callable[[Tensor], Tensor],
    data: Data,
    batch_size: int = 64,
    progress: bool = True,
    *,
    max_items: int | None = None,
) -> np.ndarray:
    """Like :func:`compute_stats` but return all features as a float64 (N, F) array (for KID, P/R)."""
    parts: list[np.ndarray] = []
    _run_extractor(extractor, data, batch_size, progress, max_items, parts.append)
    if not parts:
        raise ValueError("no data")
    return np.concatenate(parts, axis=0)


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file in the same folder, then ``os.replace`` onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache file is shareable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _safe_key(key: str) -> str:
    """A file-name-safe form of ``key``; a short hash is appended when characters were replaced."""
    if not key:
        raise ValueError("cache key must be non-empty")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "stats"
    if safe != key:
        safe = f"{safe[:150]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    return safe


def stats_cache_path(key: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`cached_stats` keeps the statistics for ``key``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "stats" / f"{_safe_key(key)}.npz"


def cached_stats(
    key: str,
    compute_fn: Callable[[], FeatureStats],
    cache_dir: str | os.PathLike[str] | None = None,
) -> FeatureStats:
    """Load statistics for ``key`` from the cache, or compute, save (atomically) and return them.

    ``key`` should name the extractor and the data (e.g. ``f"{extractor.name}-fashion_mnist-train"``).
    A missing or unreadable file is recomputed.
    """
    path = stats_cache_path(key, cache_dir)
    if path.is_file():
        try:
            return FeatureStats.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
    stats = compute_fn()
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"compute_fn must return FeatureStats, got {type(stats).__name__}")
    stats.save(path)
    return stats


def cached_features(
    key: str,
    compute_fn: Callable[[], np.ndarray],
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Load a feature array for ``key`` from ``<cache>/features``, or compute, save (atomically) and return it.

    Use when a metric needs the features themselves (KID, precision/recall), not only their
    mean and covariance (:func:`cached_stats`). A missing or unreadable file is recomputed.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "features" / f"{_safe_key(key)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return np.asarray(f["features"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
    features = np.asarray(compute_fn())
    _atomic_savez(path, {"features": features})
    return features
