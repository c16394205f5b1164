"""Noise-level and class embeddings shared by the networks.

The noise-level input ``c_noise`` may live on any real range (a DDPM index in
[0, 999], a continuous time in [0, 1], EDM's ``log(sigma) / 4``, ...), so both
embeddings here are defined for arbitrary real inputs:

* :class:`SinusoidalEmbedding` -- the transformer position encoding of
  Vaswani et al. 2017 as used for timesteps by Ho et al. 2020, with a
  configurable ``max_period`` and an input ``scale``.
* :class:`GaussianFourierEmbedding` -- random Fourier features of
  Tancik et al. 2020 as used by Song et al. 2021 (score SDEs, NCSN++).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..utils import check_on_device

__all__ = [
    "EmbeddingKind",
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "NoiseEmbedding",
    "ClassEmbedding",
    "VectorEmbedding",
    "prepare_c_noise",
]

EmbeddingKind = Literal["sinusoidal", "fourier"]


def prepare_c_noise(c_noise: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Return ``c_noise`` as a float32 tensor of shape (batch,).

    A Python number, 0-d tensor or 1-element tensor is broadcast to the batch;
    integer tensors (e.g. DDPM indices) are converted to float.
    """
    t = torch.as_tensor(c_noise, device=device)
    if not torch.is_floating_point(t):
        t = t.float()
    t = t.reshape(-1)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(
            f"c_noise must have shape ({batch},) to match the batch, got {tuple(torch.as_tensor(c_noise).shape)}"
        )
    return t.to(torch.float32)


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020).

    ``emb(t) = [cos(s t w_i), sin(s t w_i)]`` with frequencies
    ``w_i = max_period ** (-i / half)`` for ``i = 0 .. half-1``; ``s`` is ``scale``.
    Frequencies span ``[1/max_period, 1]``, so for inputs in [0, 1] use a large
    ``scale`` (e.g. 1000) or a small ``max_period``.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim}")
        if max_period <= 1.0:
            raise ValueError(f"max_period must be > 1, got {max_period}")
        self.dim = dim
        self.max_period = float(max_period)
        self.scale = float(scale)
        self.freqs: Tensor
        half = dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed (B,) real values into (B, dim)."""
        args = (self.scale * t.float())[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GaussianFourierEmbedding(nn.Module):
    """Gaussian random Fourier features (Tancik et al. 2020; Song et al. 2021).

    ``emb(t) = [sin(2 pi t W), cos(2 pi t W)]`` with fixed ``W ~ N(0, scale^2)``
    drawn from a generator seeded with ``seed`` (stored as a buffer).
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.W: Tensor
        self.register_buffer("W", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """Embed (B,) real values into (B, dim)."""
        args = 2.0 * math.pi * t.float()[:, None] * self.W[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class NoiseEmbedding(nn.Module):
    """Noise-level embedding followed by a two-layer SiLU MLP (Ho et al. 2020).

    Maps ``c_noise`` of shape (B,) to (B, out_dim).
    """

    def __init__(
        self,
        out_dim: int,
        freq_dim: int = 128,
        kind: EmbeddingKind = "sinusoidal",
        max_period: float = 10000.0,
        scale: float = 1.0,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.base: nn.Module
        if kind == "sinusoidal":
            self.base = SinusoidalEmbedding(freq_dim, max_period=max_period, scale=scale)
        elif kind == "fourier":
            self.base = GaussianFourierEmbedding(freq_dim, scale=fourier_scale)
        else:
            raise ValueError(f"unknown embedding kind {kind!r}; allowed: 'sinusoidal', 'fourier'")
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        """Return the (B, out_dim) embedding of ``c_noise`` (B,)."""
        return self.mlp(self.base(c_noise))


class ClassEmbedding(nn.Module):
    """Class-label embedding with an extra "null" label for classifier-free guidance.

    The table has ``num_classes + 1`` rows; index ``num_classes`` is the null
    (unconditional) label of Ho & Salimans 2022. ``cond=None`` means all-null.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        """Index of the null (unconditional) label."""
        return self.num_classes

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Embed labels (B,) in ``[0, num_classes]`` into (B, dim). Labels out of range are refused without a
        host sync (``utils.check_on_device``): at once on the CPU, at the next synchronisation on a GPU."""
        if cond is None:
            cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            if torch.is_floating_point(cond) or torch.is_complex(cond):
                raise ValueError(f"cond must be an integer tensor of class labels, got dtype {cond.dtype}")
            cond = cond.reshape(-1).long()
            if cond.numel() != batch:
                raise ValueError(f"cond must have shape ({batch},), got {tuple(cond.shape)}")
            check_on_device(((cond >= 0) & (cond <= self.num_classes)).all(), lambda: (
                f"class labels must be in [0, {self.num_classes}] ({self.num_classes} = null label), "
                f"got range [{int(cond.min())}, {int(cond.max())}]"))
        return self.table(cond)


class VectorEmbedding(nn.Module):
    """Embedding of a condition vector (B, cond_dim) with a learned null token for classifier-free guidance.

    ``c -> W2 silu(W1 c)``; a row that is all NaN (``null_value``) or ``cond=None`` gets the null
    token instead, so condition dropout (Ho & Salimans 2022, sec. 3.2) marks dropped rows with NaN
    and one network is conditional and unconditional. A row with some but not all NaN is refused.
    """

    #: What marks a dropped condition (the "unconditional" input).
    null_value = math.nan

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1, got {cond_dim}")
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Embed conditions (B, cond_dim) (NaN rows: null) into (B, dim); a partly-NaN row is refused without a
        host sync (``utils.check_on_device``)."""
        if cond is None:
            return self.null.expand(batch, -1)
        if not torch.is_floating_point(cond) or cond.shape != (batch, self.cond_dim):
            raise ValueError(f"cond must be a floating tensor of shape ({batch}, {self.cond_dim}), "
                             f"got {cond.dtype} {tuple(cond.shape)}")
        nan = cond.isnan()
        null = nan.all(1)
        check_on_device(~(nan.any(1) & ~null).any(),
                        lambda: "a condition row is either all NaN (the null condition) or has no NaN")
        emb = self.mlp(torch.where(null[:, None], torch.zeros_like(cond), cond).to(self.null.dtype))
        return torch.where(null[:, None], self.null.to(emb.dtype), emb)
