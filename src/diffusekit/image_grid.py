"""Tiling a batch of images into one picture, and writing it as a PNG (Pillow, atomically)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .files import atomic_write


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one uint8 array (H', W', C) with C in {1, 3}."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = max(1, min(nrow, n))
    ncol = math.ceil(n / nrow)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = torch.cat([x, x.new_zeros(nrow * ncol - n, c, h, w)])  # blank cells
    x = torch.nn.functional.pad(x, (padding, 0, padding, 0))  # gap above and left of each cell
    hp, wp = h + padding, w + padding
    grid = x.reshape(ncol, nrow, c, hp, wp).permute(2, 0, 3, 1, 4).reshape(c, ncol * hp, nrow * wp)
    grid = torch.nn.functional.pad(grid, (0, padding, 0, padding))
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: Tensor, path: str | os.PathLike[str], nrow: int = 8, padding: int = 2, scale: int = 1,
                    row_labels: Sequence[str] | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as a PNG grid with ``nrow`` images per row (``scale``: pixel repeat);
    ``row_labels``: a text per row, written in a margin left of it (e.g. the class of each row)."""
    from PIL import Image, ImageDraw

    arr = image_grid(images, nrow, padding)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)  # uint8: mode L or RGB
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if row_labels:
        row_height = (img.height - padding * scale) / math.ceil(images.shape[0] / max(1, min(nrow, images.shape[0])))
        margin = 8 + 7 * max(len(text) for text in row_labels)
        labelled = Image.new(img.mode, (img.width + margin, img.height))
        labelled.paste(img, (margin, 0))
        draw = ImageDraw.Draw(labelled)
        for i, text in enumerate(row_labels):
            draw.text((4, padding * scale + (i + 0.5) * row_height - 6), text, fill=255 if img.mode == "L" else (255,) * 3)
        img = labelled
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


__all__ = ["image_grid", "save_image_grid"]
