"""File input and output of the task commands: images from a PNG, a folder of PNGs, .npz or .npy;
results as .npy plus a before/after grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.images import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, load_array, load_image_file, load_image_folder
from ..files import atomic_write
from ..image_grid import save_image_grid

INPUT_KINDS = ", ".join([*IMAGE_EXTENSIONS, *(e for e in ARRAY_EXTENSIONS if e != ".csv")]) + " or a folder of images"


def read_images(path: str | Path, channels: int | None, size: int) -> Tensor:
    """Images (N, channels, size, size) in [-1, 1] from ``path``. Image files are converted and resized
    (shorter side to ``size``, centre crop); arrays must already have that shape (uint8 or floats in [-1, 1]).
    ``channels`` None takes 1 or 3, as the input holds (greyscale image modes: 1)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        return load_image_folder(p, size, channels)[0]
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}; allowed: {INPUT_KINDS}")
    if suffix in IMAGE_EXTENSIONS:
        return load_image_file(p, size, channels)
    if suffix in ARRAY_EXTENSIONS and suffix != ".csv":
        x = load_array(p)[0]
        allowed = (1, 3) if channels is None else (channels,)
        if x.ndim != 4 or x.shape[1] not in allowed or tuple(x.shape[2:]) != (size, size):
            c = " or ".join(map(str, allowed))
            raise ValueError(f"{p} holds items of shape {tuple(x.shape[1:])}; allowed: ({c}, {size}, {size}) "
                             f"for this run and task")
        return x
    raise ValueError(f"input {p}: unsupported file type {suffix or '(none)'!r}; allowed: {INPUT_KINDS}")


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """The result file (.npy) and its before/after grid (same name + ``_grid.png``); refuses anything else."""
    p = Path(out)
    if p.suffix.lower() != ".npy" or p.is_dir():
        raise ValueError(f"--out {p}: allowed a file name ending in .npy (the grid goes beside it as *_grid.png)")
    return p, p.with_name(p.stem + "_grid.png")


def write_result(out: Path, grid: Path, before: Tensor, after: Tensor, max_items: int = 16) -> None:
    """Save ``after`` (N, C, H, W) to ``out`` and the first ``max_items`` of ``before`` over ``after`` as a grid."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, after.cpu().numpy())

    atomic_write(out, write)
    k = min(max_items, after.shape[0])
    save_image_grid(torch.cat([before[:k].cpu(), after[:k].cpu()]).clamp(-1, 1), grid, nrow=k, scale=4,
                    row_labels=["before", "after"])
