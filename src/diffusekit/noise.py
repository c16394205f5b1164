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


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64 finaliser; int64 multiplication wraps like uint64."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _wrap(x: int) -> int:
    """A Python int reduced to the int64 range with two's-complement wrap-around."""
    return (x + 2**63) % 2**64 - 2**63


def _scalar_mix(x: int) -> int:
    z = torch.tensor([_wrap(x + _GOLDEN)], dtype=torch.int64)
    return int(_mix(z)[0])


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
            base = _scalar_mix(seed)
            seeds = _mix(torch.arange(batch, dtype=torch.int64, device=device) * _GOLDEN + base)
        else:
            seeds = torch.as_tensor(seed, dtype=torch.int64, device=device).flatten()
            if seeds.numel() != batch:
                raise ValueError(f"got {seeds.numel()} seeds for a batch of {batch}")
        return cls(seeds)

    @property
    def batch(self) -> int:
        return self.seeds.numel()

    def normal(self, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal noise of ``(batch, *shape)`` for stream number ``stream``."""
        n = math.prod(shape)
        pairs = (n + 1) // 2
        key = _mix(self.seeds + _wrap((stream + 1) * _GOLDEN))[:, None]
        z = _mix(key + torch.arange(pairs, device=key.device, dtype=torch.int64)[None] * _GOLDEN)
        hi = _shr(z, 40).double()  # 24 random bits each half
        lo = (z & 0xFFFFFF).double()
        u1 = (hi + 0.5) / 2**24
        u2 = lo / 2**24
        r = torch.sqrt(-2 * torch.log(u1))
        theta = 2 * math.pi * u2
        out = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], 1)[:, :n]
        return out.to(dtype).reshape(self.batch, *shape)
