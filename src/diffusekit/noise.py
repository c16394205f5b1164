"""Counter-based Gaussian noise, one independent stream per sample.

A sample's noise depends only on its own seed, the stream (step) index and the
element index, never on the batch it is drawn in: sample 3 of a batch of 10 is
sample 3 of a batch of 10,000 with the same seeds. The generator is SplitMix64
(Steele et al. 2014) on int64 tensors with Box-Muller, so it is vectorised on
any device and draws nothing until asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


_BLOCK = 1 << 15
"""Pairs of normals per block in ``NoiseSource.normal``: the int64 work arrays stay in cache."""


def _mix_(z: Tensor, tmp: Tensor) -> Tensor:
    """SplitMix64 finaliser in place (``tmp``: scratch of z's shape); int64 products wrap like uint64."""
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)  # logical, not arithmetic, shift
        z.bitwise_xor_(tmp)
        if mult is not None:
            z.mul_(mult)
    return z


def _mix(z: Tensor) -> Tensor:
    """SplitMix64 finaliser of a copy of z."""
    return _mix_(z.clone(), torch.empty_like(z))


def _wrap(x: int) -> int:
    """A Python int reduced to the int64 range with two's-complement wrap-around."""
    return (x + 2**63) % 2**64 - 2**63


def _scalar_mix(x: int) -> int:
    z = torch.tensor([_wrap(x + _GOLDEN)], dtype=torch.int64)
    return int(_mix(z)[0])


def sample_keys(seed: int, index: Tensor) -> Tensor:
    """The keys of samples ``index`` (int64) under one global ``seed``: what ``NoiseSource.from_seed(seed, n)``
    gives row ``index`` of a batch, so any subset of a batch (a process's shard) draws exactly its rows' noise."""
    return _mix(index.to(torch.int64) * _GOLDEN + _scalar_mix(seed))


class NoiseSource:
    """Per-sample standard normal streams keyed by int64 seeds (one per batch row)."""

    def __init__(self, seeds: Tensor) -> None:
        if seeds.ndim != 1 or seeds.dtype != torch.int64:
            raise ValueError("seeds must be a 1-d int64 tensor, one per sample")
        self.seeds = _mix(seeds + _GOLDEN)

    @classmethod
    def from_seed(cls, seed: int | Sequence[int] | Tensor, batch: int, device: torch.device | str = "cpu") -> "NoiseSource":
        """One global seed gives sample b the key (seed, b); a sequence or tensor gives each sample's own."""
        if isinstance(seed, int):
            seeds = sample_keys(seed, torch.arange(batch, dtype=torch.int64, device=device))
        else:
            seeds = torch.as_tensor(seed, dtype=torch.int64, device=device).flatten()
            if seeds.numel() != batch:
                raise ValueError(f"got {seeds.numel()} seeds for a batch of {batch}")
        return cls(seeds)

    @property
    def batch(self) -> int:
        return self.seeds.numel()

    def _stream_keys(self, stream: int) -> Tensor:
        return _mix_(self.seeds + _wrap((stream + 1) * _GOLDEN), torch.empty_like(self.seeds))

    def rademacher(self, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Random signs (+1 / -1, each with probability 1/2) of ``(batch, *shape)`` for stream ``stream``.

        Element j of sample b is a bit (j % 64) of the 64-bit hash of (key'_b, j // 64), where key' is the
        stream key hashed once more (so signs and ``normal`` never share a hash): one hash per 64 signs,
        ~20x cheaper than taking the signs of normals (Hutchinson probes, Hutchinson 1990).
        """
        n = math.prod(shape)
        words = (n + 63) // 64
        key = _mix(self._stream_keys(stream))
        z = torch.arange(words, device=self.seeds.device, dtype=torch.int64).mul_(_GOLDEN) + key[:, None]
        _mix_(z, torch.empty_like(z))
        shifts = torch.arange(8, device=z.device, dtype=torch.uint8)
        octets = z.view(torch.uint8)  # (batch, 8 words): the hash's bytes
        bits = torch.bitwise_right_shift(octets[:, :, None], shifts).bitwise_and_(1).reshape(self.batch, words * 64)[:, :n]
        return bits.to(dtype).mul_(-2).add_(1).reshape(self.batch, *shape)

    def normal(self, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal noise of ``(batch, *shape)`` for stream number ``stream``.

        Element pair j of sample b comes from the 64-bit hash of (key_b, j): its two
        24-bit halves are the uniforms of one Box-Muller pair (computed in float32,
        or float64 for float64 output). Rows are processed in blocks of ~``_BLOCK``
        pairs with in-place integer ops, which keeps the cost within ~2x of torch.randn.
        """
        n = math.prod(shape)
        pairs = (n + 1) // 2
        device = self.seeds.device
        key = self._stream_keys(stream)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        out = torch.empty(self.batch, 2 * pairs, dtype=work, device=device)
        counter = torch.arange(pairs, device=device, dtype=torch.int64).mul_(_GOLDEN)
        rows = max(1, _BLOCK // max(pairs, 1))
        z = torch.empty(min(rows, self.batch), pairs, dtype=torch.int64, device=device)
        tmp = torch.empty_like(z)
        for r0 in range(0, self.batch, rows):
            r1 = min(self.batch, r0 + rows)
            zb, tb = z[: r1 - r0], tmp[: r1 - r0]
            _mix_(torch.add(counter, key[r0:r1, None], out=zb), tb)
            torch.bitwise_right_shift(zb, 40, out=tb)
            u1 = tb.bitwise_and_(0xFFFFFF).to(work).mul_(-(2.0**-24)).add_(1.0)  # in (0, 1]
            radius = u1.log_().mul_(-2.0).sqrt_()
            theta = zb.bitwise_and_(0xFFFFFF).to(work).mul_(2 * math.pi * 2.0**-24)
            block = out[r0:r1]
            torch.cos(theta, out=block[:, :pairs]).mul_(radius)
            torch.sin(theta, out=block[:, pairs:]).mul_(radius)
        return out[:, :n].to(dtype).reshape(self.batch, *shape)
