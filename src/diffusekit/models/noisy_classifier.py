"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, sec. 4.1).

``NoisyClassifier`` is the network ``(x_in, c_noise) -> logits (B, C)``: for images the
U-Net's AdaGN residual blocks with average-pool downsampling and a global-mean-pool head (the
"half U-Net" of Dhariwal & Nichol, sec. 4.1, much smaller), for vectors the MLP's residual
blocks; its ``features`` are the penultimate layer (the encoder of low-density guidance).
``TimeClassifier`` puts it on a noise schedule: ``(x_t, t) -> logits`` with the input scaled
to unit variance, x_t / sqrt(alpha^2 + sigma^2), and the noise level c_noise = ln(sigma/alpha)/4
(EDM's c_in and c_noise in EDM's coordinates, Karras et al. 2022 Table 1), so one network
serves every schedule.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffusekit.models.embeddings import NoiseEmbedding, prepare_c_noise
from diffusekit.models.mlp import MLPBlock
from diffusekit.models.unet import Downsample, ResBlock, num_groups_for
from diffusekit.schedules.base import NoiseSchedule
from diffusekit.utils import append_dims, as_time

__all__ = ["NoisyClassifier", "TimeClassifier"]

#: |ln(sigma/alpha)| is clamped here (a zero-SNR end has alpha = 0).
_MAX_LOG_RATIO = 20.0


class NoisyClassifier(nn.Module):
    """Logits of p(y | x_t) from the scaled input ``x_in`` (B, *data_shape) and ``c_noise`` (B,).

    Images (C, H, W): a 3x3 convolution to ``width`` channels, ``depth`` AdaGN residual blocks
    (the U-Net's ``ResBlock``), each followed by 2x average pooling while the side stays >= 4,
    then group norm, SiLU and a global mean. Vectors (D,): ``depth`` residual MLP blocks. The
    time embedding enters every block; ``features`` (B, width) feed one linear layer to the logits.
    """

    def __init__(self, data_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 2) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or depth < 1:
            raise ValueError(f"num_classes must be >= 2 and width, depth >= 1, got {num_classes}, {width}, {depth}")
        if len(data_shape) not in (1, 3):
            raise ValueError(f"data_shape must be (D,) or (C, H, W), got {data_shape}")
        self.data_shape = tuple(int(v) for v in data_shape)
        self.num_classes = num_classes
        self.width, self.depth = width, depth
        self.time_embed = NoiseEmbedding(width, 32, kind="fourier", fourier_scale=1.0)
        self.images = len(data_shape) == 3
        blocks: list[nn.Module] = []
        if self.images:
            self.inp: nn.Module = nn.Conv2d(data_shape[0], width, 3, padding=1)
            side = data_shape[1]
            for _ in range(depth):
                blocks.append(ResBlock(width, width, width))
                if side // 2 >= 4:
                    blocks.append(Downsample(width))
                    side //= 2
            self.out_norm: nn.Module = nn.GroupNorm(num_groups_for(width), width)
        else:
            self.inp = nn.Linear(data_shape[0], width)
            blocks = [MLPBlock(width, width) for _ in range(depth)]
            self.out_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes)

    def features(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        """The penultimate layer (B, width)."""
        if tuple(x_in.shape[1:]) != self.data_shape:
            raise ValueError(f"the classifier expects inputs of shape (B, {', '.join(map(str, self.data_shape))}), "
                             f"got {tuple(x_in.shape)}")
        emb = F.silu(self.time_embed(prepare_c_noise(c_noise, x_in.shape[0], x_in.device))).to(x_in.dtype)
        h = self.inp(x_in)
        for block in self.blocks:
            h = block(h, emb)
        h = F.silu(self.out_norm(h))
        return h.mean((2, 3)) if self.images else h

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x_in, c_noise))


class TimeClassifier(nn.Module):
    """A ``NoisyClassifier`` on a schedule: ``(x_t, t) -> logits``, ``t`` a number or (B,) times.

    The call signature is the one ``ClassifierGuidance`` takes; ``features(x, t)`` is the
    encoder for ``LowDensityEnergy``.
    """

    def __init__(self, net: NoisyClassifier, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def inputs(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(x_t / sqrt(alpha^2 + sigma^2), ln(sigma/alpha) / 4) in x's dtype, from float64 coefficients."""
        tt = as_time(t, x.shape[0], x)
        alpha, sigma = self.schedule.alpha_sigma(tt)
        scale = (alpha**2 + sigma**2).rsqrt()
        ratio = (sigma.log() - alpha.log()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return x * append_dims(scale.to(x), x.ndim), (ratio / 4).to(device=x.device, dtype=x.dtype)

    def features(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The network's penultimate features (B, width) of x_t at time t."""
        return self.net.features(*self.inputs(x, t))

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Logits of p(y | x_t) (B, num_classes)."""
        return self.net(*self.inputs(x, t))

