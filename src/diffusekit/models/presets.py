"""Named network sizes ``tiny``, ``small`` and ``base`` and parameter counting.

UNet presets (Ho et al. 2020 / Dhariwal & Nichol 2021 U-Net with AdaGN):

======  ====  ============  ========  =======
name    ch    channel_mult  res/lvl   dropout
======  ====  ============  ========  =======
tiny    32    (1, 2)        1         0.0
small   64    (1, 2, 2)     2         0.1
base    128   (1, 2, 2, 2)  2         0.1
======  ====  ============  ========  =======

The number of levels is reduced for small images: a preset keeps the largest
prefix of its ``channel_mult`` for which ``image_size`` is divisible by
``2**(levels-1)`` and the lowest resolution is at least 4 (so 28x28 uses 3
levels: 28, 14, 7). Self-attention is used at every level except level 0
whose resolution is at most 16, plus in the middle block (e.g. 4x4 for the
tiny preset on 8x8 digits). ``base`` at 32x32 is the DDPM CIFAR-10 width.

MLP presets (residual MLP, sinusoidal time embedding): tiny = width 128,
depth 3; small = width 256, depth 4; base = width 512, depth 6.

Parameter counts (computed with :func:`count_parameters`, unconditional;
``num_classes=10`` adds ``11 * emb_dim`` = 1408 / 2816 / 5632 for the tiny /
small / base nets). Levels used: tiny 2 everywhere; small 2 / 3 / 3 and base
2 / 3 / 4 at 8 / 28 / 32 pixels.

=========  ============  =============  =============  ==========
preset     UNet 8x8x1    UNet 28x28x1   UNet 32x32x3   MLP dim=2
=========  ============  =============  =============  ==========
tiny       754,177       754,177        755,331        182,274
small      4,300,097     7,274,689      7,276,995      889,602
base       17,169,025    29,049,217     40,934,019     5,059,074
=========  ============  =============  =============  ==========
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusekit.models.mlp import MLP
from diffusekit.models.unet import UNet

__all__ = [
    "PRESET_NAMES",
    "UNET_PRESETS",
    "MLP_PRESETS",
    "unet_preset",
    "mlp_preset",
    "count_parameters",
    "levels_for_image_size",
    "levels_for_resolutions",
]

PRESET_NAMES: tuple[str, ...] = ("tiny", "small", "base")

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"base_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "dropout": 0.0},
    "small": {"base_channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "dropout": 0.1},
    "base": {"base_channels": 128, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2, "dropout": 0.1},
}

MLP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 128, "depth": 3},
    "small": {"width": 256, "depth": 4},
    "base": {"width": 512, "depth": 6},
}

_MAX_ATTENTION_RES = 16
_MIN_RES = 4


def _check_name(name: str, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(sorted(table, key=PRESET_NAMES.index))}")
    return dict(table[name])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def levels_for_image_size(image_size: int, max_levels: int, min_res: int = _MIN_RES) -> int:
    """Largest level count <= ``max_levels`` with ``image_size % 2**(L-1) == 0``
    and lowest resolution ``image_size / 2**(L-1) >= min_res`` (at least 1)."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    levels = 1
    for n in range(2, max_levels + 1):
        div = 2 ** (n - 1)
        if image_size % div == 0 and image_size // div >= min_res:
            levels = n
        else:
            break
    return levels


def levels_for_resolutions(image_size: int, resolutions: tuple[int, ...], num_levels: int) -> tuple[int, ...]:
    """Convert attention *resolutions* (e.g. (16, 8)) to UNet attention *levels* for ``image_size``."""
    levels = tuple(i for i in range(num_levels) if image_size // 2**i in set(resolutions))
    return levels


def unet_preset(name: str, in_channels: int, image_size: int, num_classes: int | None = None, **overrides: Any) -> UNet:
    """Build the named UNet preset for square ``image_size`` inputs with ``in_channels`` channels.

    ``overrides`` are passed to :class:`UNet` and take precedence over the preset.
    """
    cfg = _check_name(name, UNET_PRESETS)
    mult = tuple(cfg.pop("channel_mult"))
    n = levels_for_image_size(image_size, len(mult))
    cfg["channel_mult"] = mult[:n]
    cfg["attention_levels"] = tuple(i for i in range(1, n) if image_size // 2**i <= _MAX_ATTENTION_RES)
    cfg.update(overrides)
    return UNet(in_channels=in_channels, num_classes=num_classes, **cfg)


def mlp_preset(name: str, dim: int, num_classes: int | None = None, cond_dim: int | None = None,
               **overrides: Any) -> MLP:
    """Build the named MLP preset for vectors of size ``dim`` (class labels ``num_classes`` or condition
    vectors of size ``cond_dim``); ``overrides`` go to :class:`MLP`."""
    cfg = _check_name(name, MLP_PRESETS)
    cfg.update(overrides)
    return MLP(dim=dim, num_classes=num_classes, cond_dim=cond_dim, **cfg)
