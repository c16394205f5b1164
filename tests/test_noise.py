"""NoiseSource: per-sample counter-based normals (src/diffusekit/noise.py)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from diffusekit.noise import _BLOCK, NoiseSource


def test_sample_noise_never_depends_on_its_batch() -> None:
    """Row b is the same in a batch of 3 and in one spanning several work blocks."""
    shape = (5, 7)  # odd element count: the last Box-Muller pair is cut
    rows_per_block = _BLOCK // ((math.prod(shape) + 1) // 2)
    big = NoiseSource.from_seed(11, 2 * rows_per_block + 5).normal(4, shape)
    small = NoiseSource.from_seed(11, 3).normal(4, shape)
    assert torch.equal(big[:3], small)
    # a sample given by its own seed: same noise wherever it sits in a batch
    seeds = torch.arange(2 * rows_per_block + 5) * 7 + 1
    many = NoiseSource.from_seed(seeds, seeds.numel()).normal(4, shape)
    assert torch.equal(NoiseSource.from_seed(seeds[-1:], 1).normal(4, shape)[0], many[-1])


def test_noise_is_standard_normal_and_streams_are_independent() -> None:
    src = NoiseSource.from_seed(0, 64)
    a, b = src.normal(1, (1000,)), src.normal(2, (1000,))
    assert stats.kstest(a.flatten().double().numpy(), "norm").pvalue > 1e-3
    assert abs(float(a.mean())) < 5 / math.sqrt(a.numel())
    assert abs(float(a.var()) - 1) < 5 * math.sqrt(2 / a.numel())
    # streams, samples and the two halves of a Box-Muller pair are uncorrelated
    n = a.numel()
    assert abs(float((a * b).mean())) < 5 / math.sqrt(n)
    assert abs(float((a[:-1] * a[1:]).mean())) < 5 / math.sqrt(n)
    assert abs(float((a[:, :500] * a[:, 500:]).mean())) < 5 / math.sqrt(n / 2)
    assert not torch.equal(src.normal(1, (10,)), src.normal(2, (10,)))


def test_dtypes_agree_and_seeds_are_checked() -> None:
    src = NoiseSource.from_seed(3, 4)
    x32, x64 = src.normal(0, (3, 3)), src.normal(0, (3, 3), torch.float64)
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    torch.testing.assert_close(x32.double(), x64, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="1-d int64"):
        NoiseSource(torch.zeros(3))
    with pytest.raises(ValueError, match="got 2 seeds for a batch of 3"):
        NoiseSource.from_seed([1, 2], 3)


def test_rademacher_signs_are_fair_independent_and_batch_free() -> None:
    """+-1 only; mean 0; uncorrelated across neighbours, across the 64-bit words and bytes they come
    from, across streams and against ``normal`` of the same stream; a row never depends on its batch."""
    src = NoiseSource.from_seed(3, 64)
    a, b = src.rademacher(1, (1000,), torch.float64), src.rademacher(2, (1000,), torch.float64)
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    n = a.numel()
    assert abs(float(a.mean())) < 5 / math.sqrt(n)
    for lag in (1, 8, 64):
        assert abs(float((a[:, :-lag] * a[:, lag:]).mean())) < 5 / math.sqrt(n), lag
    assert abs(float((a * b).mean())) < 5 / math.sqrt(n)
    assert abs(float((a[:-1] * a[1:]).mean())) < 5 / math.sqrt(n)  # across samples
    assert abs(float((a * src.normal(1, (1000,), torch.float64).sign()).mean())) < 5 / math.sqrt(n)
    assert torch.equal(NoiseSource.from_seed(3, 2).rademacher(1, (1000,), torch.float64), a[:2])
