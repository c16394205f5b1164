"""Residual MLP denoiser for vector data of shape (B, D) (2-D toys, tabular data)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusekit.models.embeddings import ClassEmbedding, EmbeddingKind, NoiseEmbedding, VectorEmbedding, prepare_c_noise

__all__ = ["MLP", "MLPBlock"]


class MLPBlock(nn.Module):
    """Pre-activation residual block ``x + W2 silu(W1 norm(x) + E emb)``.

    The embedding projection ``E`` adds the time (+class) embedding per block,
    as in the time-conditioned MLPs used for toy diffusion experiments.
    """

    def __init__(self, width: int, emb_dim: int, layer_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block to x (B, width) with embedding (B, emb_dim)."""
        h = self.act(self.fc1(self.norm(x)) + self.emb(emb))
        return x + self.fc2(self.drop(h))


class MLP(nn.Module):
    """Time- (and optionally class-) conditioned residual MLP.

    ``forward(x, c_noise, cond=None)`` maps x (B, dim) to (B, dim). ``c_noise``
    (B,) is embedded with a sinusoidal (``max_period``, ``time_scale``) or
    Gaussian-Fourier (``fourier_scale``, Song et al. 2021) embedding; when
    ``num_classes`` is set, labels in ``[0, num_classes]`` are embedded with an
    extra null label ``num_classes`` for classifier-free guidance
    (Ho & Salimans 2022) and ``cond=None`` means "unconditional"; when ``cond_dim`` is
    set instead, a condition vector (B, cond_dim) is embedded (``VectorEmbedding``, NaN rows
    and ``cond=None`` = the null token); either embedding is added to the time embedding.
    The output layer is zero-initialised (``zero_init=True``). With ``learn_variance`` the
    output has 2 * dim columns: the mean output, then the reverse-variance interpolation
    (Nichol & Dhariwal 2021, eq. 15), which ``Denoiser.outputs`` splits.
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        layer_norm: bool = False,
        dropout: float = 0.0,
        emb_dim: int | None = None,
        embedding: EmbeddingKind = "sinusoidal",
        max_period: float = 10000.0,
        time_scale: float = 1.0,
        fourier_scale: float = 16.0,
        zero_init: bool = True,
        learn_variance: bool = False,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"dim, width and depth must be >= 1, got dim={dim}, width={width}, depth={depth}")
        if num_classes is not None and cond_dim is not None:
            raise ValueError(f"give num_classes (class labels) or cond_dim (condition vectors), not both; got "
                             f"{num_classes} and {cond_dim}")
        emb_dim = emb_dim or width
        self.dim = dim
        self.learn_variance = learn_variance
        self.num_classes = num_classes
        freq_dim = max(16, 2 * ((min(width, 128) + 1) // 2))
        self.time_embed = NoiseEmbedding(
            emb_dim, freq_dim, kind=embedding, max_period=max_period, scale=time_scale, fourier_scale=fourier_scale
        )
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.cond_dim = cond_dim
        self.cond_embed = VectorEmbedding(cond_dim, emb_dim) if cond_dim is not None else None
        self.emb_act = nn.SiLU()
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, emb_dim, layer_norm, dropout) for _ in range(depth))
        self.out_norm: nn.Module = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.out = nn.Linear(width, 2 * dim if learn_variance else dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """Return (B, dim), or (B, 2 dim) with ``learn_variance``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        emb = self.time_embed(prepare_c_noise(c_noise, b, x.device))
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond, b, x.device)
        elif self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, b, x.device)
        elif cond is not None:
            raise ValueError("cond was given but this MLP has num_classes=None and cond_dim=None")
        emb = self.emb_act(emb).to(x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))
