"""U-Net denoiser of Ho et al. 2020 with the improvements of Dhariwal & Nichol 2021.

Architecture (per downsampling *level* ``i = 0 .. len(channel_mult) - 1``, level 0
being full resolution and level ``i`` having resolution ``H / 2**i``):

* ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, dropout) with
  adaptive group normalisation ("AdaGN": ``GroupNorm(h) * (1 + s) + b`` where
  ``(s, b)`` is a linear function of the time+class embedding,
  Dhariwal & Nichol 2021), each optionally followed by multi-head
  self-attention (``attention_levels``), then a stride-2 conv downsample
  (except at the last level);
* a middle block ResBlock-Attention-ResBlock at the lowest resolution;
* a mirrored decoder with ``num_res_blocks + 1`` blocks per level fed by skip
  connections, nearest-neighbour upsampling + 3x3 conv;
* GroupNorm, SiLU and a zero-initialised 3x3 output conv (so the network
  outputs exactly zero at initialisation).

Inputs of any channel count are accepted (the in/out convolutions handle odd
counts; GroupNorm group counts are chosen as the largest divisor of the channel
count not above ``max_groups``) and any H, W divisible by ``2**(levels - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusekit.models.embeddings import ClassEmbedding, EmbeddingKind, NoiseEmbedding, prepare_c_noise

__all__ = ["UNet", "ResBlock", "AttentionBlock", "Downsample", "Upsample", "num_groups_for"]


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups`` (>= 1).

    Makes GroupNorm valid for any channel count (e.g. 48 -> 24 groups, 5 -> 5).
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _group_norm(channels: int, max_groups: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups_for(channels, max_groups), channels, eps=1e-6, affine=affine)


_M = TypeVar("_M", bound=nn.Module)


def _zero(module: _M) -> _M:
    """Zero-initialise every parameter of ``module`` (returns it)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with adaptive group norm (Dhariwal & Nichol 2021, "scale-shift norm").

    ``h = conv1(silu(GN(x)))``; ``h = conv2(dropout(silu(GN(h) * (1 + s) + b)))``;
    returns ``skip(x) + h`` with ``conv2`` zero-initialised.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, max_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch, max_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _group_norm(out_ch, max_groups, affine=False)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, in_ch, H, W); emb: (B, emb_dim) already passed through SiLU."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions (Ho et al. 2020), residual, zero-init output.

    Uses :func:`torch.nn.functional.scaled_dot_product_attention`. ``num_heads`` is
    ``channels // head_channels`` when that divides evenly, else 1.
    """

    def __init__(self, channels: int, head_channels: int = 32, max_groups: int = 32) -> None:
        super().__init__()
        heads = channels // head_channels if head_channels > 0 and channels % head_channels == 0 else 1
        self.num_heads = max(1, heads)
        self.norm = _group_norm(channels, max_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); ``emb`` is ignored."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Downsample x by 2."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Upsample x by 2."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """A ResBlock optionally followed by attention (one U-Net "layer")."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """Image denoiser ``forward(x, c_noise, cond=None) -> Tensor`` of x's shape (B, C, H, W).

    U-Net of Ho et al. 2020 / Dhariwal & Nichol 2021 with adaptive group norm.

    Args:
        in_channels: image channels C (any positive count, e.g. 1, 3, 5).
        out_channels: output channels (defaults to ``in_channels``).
        base_channels: channels at level 0.
        channel_mult: per-level channel multipliers; ``len(channel_mult)`` is the
            number of levels, so H and W must be divisible by ``2**(len - 1)``.
        num_res_blocks: residual blocks per level in the encoder (decoder has one more).
        attention_levels: **downsampling levels** (0 = full resolution, level i has
            resolution H / 2**i) at which self-attention follows each ResBlock.
            Levels, not resolutions, so the same network works at any image size;
            :func:`diffusekit.models.presets.levels_for_resolutions` converts.
            Default ``None``: the lowest-resolution level only (none if one level).
        mid_attention: self-attention in the middle block.
        dropout: dropout rate inside ResBlocks.
        num_classes: if set, class-conditional with a null label ``num_classes``
            for classifier-free guidance (``cond=None`` -> null label).
        cond_channels: if > 0, ``cond`` is an image (B, cond_channels, H, W) concatenated to the
            input channels (SR3, Saharia et al. 2022, sec. 2.3: x_t next to the upsampled low-res image).
        emb_dim: embedding width (default ``4 * base_channels``).
        embedding: ``"sinusoidal"`` (``max_period``, ``time_scale``) or
            ``"fourier"`` (Gaussian Fourier features, ``fourier_scale``; Song et al. 2021).
        head_channels: channels per attention head.
        max_groups: upper bound on GroupNorm groups (32 as in the papers).
        learn_variance: 2 * out_channels outputs, the second half the reverse-variance
            interpolation (Nichol & Dhariwal 2021, eq. 15), split by ``Denoiser.outputs``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        mid_attention: bool = True,
        dropout: float = 0.0,
        num_classes: int | None = None,
        cond_channels: int = 0,
        emb_dim: int | None = None,
        embedding: EmbeddingKind = "sinusoidal",
        max_period: float = 10000.0,
        time_scale: float = 1.0,
        fourier_scale: float = 16.0,
        head_channels: int = 32,
        max_groups: int = 32,
        learn_variance: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult}")
        if num_res_blocks < 1 or base_channels < 1:
            raise ValueError(f"num_res_blocks and base_channels must be >= 1, got {num_res_blocks}, {base_channels}")
        levels = len(channel_mult)
        if attention_levels is None:
            attention_levels = (levels - 1,) if levels > 1 else ()
        attention_levels = tuple(int(a) for a in attention_levels)
        bad = [a for a in attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range: levels are 0..{levels - 1}")
        self.in_channels = in_channels
        self.out_channels = (out_channels or in_channels) * (2 if learn_variance else 1)
        self.learn_variance = learn_variance
        self.num_levels = levels
        self.num_classes = num_classes
        self.attention_levels = attention_levels
        emb_dim = emb_dim or 4 * base_channels

        self.time_embed = NoiseEmbedding(
            emb_dim,
            freq_dim=base_channels if base_channels % 2 == 0 else base_channels + 1,
            kind=embedding,
            max_period=max_period,
            scale=time_scale,
            fourier_scale=fourier_scale,
        )
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, dropout, max_groups)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, head_channels, max_groups)

        if cond_channels < 0 or (cond_channels and num_classes is not None):
            raise ValueError(f"cond_channels must be >= 0 and needs num_classes=None, got {cond_channels} with "
                             f"num_classes={num_classes}")
        self.cond_channels = cond_channels
        self.conv_in = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                self.down.append(_Level(res(ch, out), attn(out) if level in attention_levels else None))
                ch = out
                skip_chs.append(ch)
            if level != levels - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        self.mid = nn.ModuleList([_Level(res(ch, ch), attn(ch) if mid_attention else None), _Level(res(ch, ch), None)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            out = base_channels * mult
            for _ in range(num_res_blocks + 1):
                self.up.append(_Level(res(ch + skip_chs.pop(), out), attn(out) if level in attention_levels else None))
                ch = out
            if level != 0:
                self.up.append(Upsample(ch))

        self.norm_out = _group_norm(ch, max_groups)
        self.conv_out = _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @property
    def size_divisor(self) -> int:
        """H and W must be multiples of this (``2**(levels - 1)``)."""
        return 2 ** (self.num_levels - 1)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """Return a tensor with the shape of x (B, C, H, W) (C = out_channels)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"image size {h}x{w} is not supported: H and W must be divisible by {d} "
                f"(2**(levels-1) for {self.num_levels} levels)"
            )
        emb = self.time_embed(prepare_c_noise(c_noise, b, x.device))
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond, b, x.device)
        elif self.cond_channels:
            if not isinstance(cond, Tensor) or cond.shape != (b, self.cond_channels, h, w):
                got = tuple(cond.shape) if isinstance(cond, Tensor) else cond
                raise ValueError(f"this UNet is conditioned on an image of shape ({b}, {self.cond_channels}, {h}, {w}) "
                                 f"(e.g. the upsampled low-resolution input), got {got}")
            x = torch.cat([x, cond.to(x.dtype)], 1)
        elif cond is not None:
            raise ValueError("cond was given but this UNet has num_classes=None")
        emb = F.silu(emb).to(x.dtype)

        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(layer(hs[-1], emb))
        h_ = hs[-1]
        for layer in self.mid:
            h_ = layer(h_, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h_ = layer(h_)
            else:
                h_ = layer(torch.cat([h_, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h_)))
