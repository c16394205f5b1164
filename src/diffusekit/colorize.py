"""`diffusekit colorize`: colour greyscale images with a trained RGB run (``tasks.colorization``).

The input (an image file, a folder of images, or a .npy/.npz array of (N, C, H, W) in [-1, 1], read by
``tasks.files.read_images``) is reduced to its luminance g; the measurement y = g / |w| of the luminance
channel is kept by ``Replacement`` (or RePaint's resampling) on any solver, so every result has luminance g exactly
(up to float rounding) and colours drawn from the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .denoiser import DenoiserLike
from .files import atomic_write
from .image_grid import save_image_grid
from .sample import grid_rule, sample, steps_for_nfe
from .schedules import make_grid
from .solvers import make_solver
from .tasks.colorization import Greyscale
from .tasks.inpainting import Replacement, repaint_grid


class Colorized(NamedTuple):
    colour: Tensor  # (N, 3, H, W) in the model's range
    grey: Tensor  # (N, 1, H, W) the input's luminance
    nfe: int


def colorize(
    denoiser: DenoiserLike,
    images: Tensor,
    *,
    solver: str = "ddpm",
    nfe: int = 100,
    resamples: int = 1,
    jump_length: int = 10,
    weights: str = "mean",
    seed: int = 0,
    progress: bool = False,
) -> Colorized:
    """Colour ``images`` (N, 1 or 3, H, W): their luminance is the measurement of ``Replacement``;
    ``resamples`` > 1 uses RePaint's grid (model calls: ``nfe`` + (resamples - 1) x jumps)."""
    op = Greyscale(weights)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    grey = images if images.shape[1] == 1 else op.luminance(images)
    s = make_solver(solver)
    steps = steps_for_nfe(s, denoiser.schedule, nfe)
    if resamples > 1:
        g = repaint_grid(denoiser.schedule, steps, jump_length, resamples, rule=grid_rule(s))
    else:
        g = make_grid(grid_rule(s), denoiser.schedule, steps)
    y = op.measurement(grey)
    sol = sample(denoiser, s, shape=(3, *grey.shape[2:]), batch=grey.shape[0], grid=g,
                 constraints=[Replacement(op, y)], seed=seed, progress=progress)
    return Colorized(sol.x, grey, sol.nfe)


def write_colorized(result: Colorized, out_dir: str | os.PathLike[str], truth: Tensor | None = None) -> tuple[Path, Path]:
    """``colorized.npz`` (``x``: (N, 3, H, W) in [-1, 1], ``grey``) and ``grid.png``: one column per
    image, rows grey input / colorized (/ the colour input when there was one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = result.colour.clamp(-1, 1)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, x=x.numpy(), grey=result.grey.numpy())

    npz = atomic_write(out / "colorized.npz", write)
    rows = [result.grey.expand(-1, 3, -1, -1), x] + ([truth.clamp(-1, 1)] if truth is not None else [])
    labels = ["grey", "colour"] + (["input"] if truth is not None else [])
    grid = save_image_grid(torch.cat(rows), out / "grid.png", nrow=x.shape[0], scale=4, row_labels=labels)
    return npz, grid


def colorize_command(run_dir: str, input_path: str, out: str | None, *, solver: str = "ddpm", nfe: int = 100,
                     resamples: int = 1, jump_length: int = 10, weights: str = "mean", seed: int = 0) -> str:
    """The body of `diffusekit colorize`: checks the run, input and output, colours, writes; returns the line to print."""
    from .pipeline import load_run
    from .tasks.files import read_images

    run = load_run(run_dir)
    shape = run.info.data_shape
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise ValueError(f"colorize needs a run trained on square RGB images (3, H, H), this run has data {shape}")
    make_solver(solver)
    images = read_images(input_path, None, shape[1])
    target = Path(out or Path(run_dir) / "colorize")
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} is a file; allowed: a folder")
    result = colorize(run.denoiser, images, solver=solver, nfe=nfe, resamples=resamples, jump_length=jump_length,
                      weights=weights, seed=seed, progress=True)
    npz, grid = write_colorized(result, target, images if images.shape[1] == 3 else None)
    return f"{images.shape[0]} image(s) colorized with {solver} ({result.nfe} NFE) -> {npz}, {grid}"
