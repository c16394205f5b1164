"""A conditional network over multivariate time-series windows (channels x time) for imputation.

CSDI's conditioning (Tashiro et al. 2021, sec. 4 and Fig. 2): the network sees the noisy target
entries x_t (1 - m), the observed values x_obs m and the observed mask m, concatenated along the
channels, and predicts on every entry (the loss and the sampler use the unobserved ones). The
backbone here is a residual stack of dilated 1-D convolutions over time (WaveNet / DiffWave,
Kong et al. 2021), mixing all channels at every layer, with the noise level added to every block;
CSDI's two transformers (time and feature) are replaced by it to stay small on a CPU.

``forward(x, c_noise, cond)`` maps x (B, K, L) to (B, K, L); ``cond`` is (B, 2K, L):
the mask (1 = observed) then the observed values (0 elsewhere).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .embeddings import NoiseEmbedding, prepare_c_noise


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.emb = nn.Linear(width, width)
        self.norm = nn.GroupNorm(8 if width % 8 == 0 else 1, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = F.silu(self.conv1(F.silu(self.norm(h))) + self.emb(emb)[:, :, None])
        return h + self.conv2(z)


class SeriesNet(nn.Module):
    """Imputation network for windows of ``channels`` series (see the module docstring)."""

    def __init__(self, channels: int, width: int = 64, depth: int = 6) -> None:
        super().__init__()
        if channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"channels, width and depth must be >= 1, got {channels}, {width}, {depth}")
        self.channels = channels
        self.inp = nn.Conv1d(3 * channels, width, 3, padding=1)
        self.time_embed = NoiseEmbedding(width, freq_dim=64)
        self.blocks = nn.ModuleList(_Block(width, 2 ** (i % 4)) for i in range(depth))
        self.out = nn.Conv1d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None or cond.shape != (x.shape[0], 2 * self.channels, x.shape[2]):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"SeriesNet needs cond (B, 2K, L) = {(x.shape[0], 2 * self.channels, x.shape[2])} "
                             f"(observed mask, observed values), got {got}")
        mask, values = cond[:, : self.channels], cond[:, self.channels :]
        emb = self.time_embed(prepare_c_noise(c_noise, x.shape[0], x.device))
        h = self.inp(torch.cat([x * (1 - mask), values * mask, mask], 1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h))

