"""The bodies of `diffusekit inpaint`, `superres` (zero-shot or SR3), `deblur` and `sdedit` (cli.py registers them).

Each checks the run, the input, the task's settings and the output path before it computes or
writes anything, and returns the one line the command prints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..pipeline import LoadedRun, load_run, lowres_factor, sample_denoiser
from ..sample import grid_rule, steps_for_nfe
from ..schedules.grids import make_grid
from ..solvers import make_solver
from .files import output_paths, read_images, write_result
from .operators import AvgPool, GaussianBlur, LinearOperator, Mask
from .restore import restore
from .sdedit import sdedit

MASKS = "bottom, right, random:P (keep each pixel with probability P) or box:TOP,LEFT,HEIGHT,WIDTH (hidden)"


def parse_mask(spec: str, shape: tuple[int, ...], seed: int = 0) -> Mask:
    """``--mask``: bottom / right (the half that is hidden), random:P, box:T,L,H,W."""
    c, h, w = shape
    kind, _, arg = spec.partition(":")
    try:
        if kind == "bottom" and not arg:
            return Mask.box(shape, h // 2, 0, h - h // 2, w)
        if kind == "right" and not arg:
            return Mask.box(shape, 0, w // 2, h, w - w // 2)
        if kind == "random":
            return Mask.random(shape, float(arg), seed=seed)
        if kind == "box":
            top, left, height, width = (int(v) for v in arg.split(","))
            if min(height, width) < 1 or top < 0 or left < 0 or top + height > h or left + width > w or height * width == h * w:
                raise ValueError
            return Mask.box(shape, top, left, height, width)
    except ValueError:
        pass
    raise ValueError(f"--mask {spec!r} is not a mask for {h}x{w} images; allowed: {MASKS} (a box inside the image "
                     "that leaves some pixels seen)")


def _image_run(run_dir: str) -> tuple[LoadedRun, tuple[int, int, int]]:
    run = load_run(run_dir)
    shape = run.info.data_shape
    if len(shape) != 3:
        raise ValueError(f"{run_dir} was trained on vectors of shape {shape}; these commands need an image run")
    return run, (int(shape[0]), int(shape[1]), int(shape[2]))


def _restore_and_write(run: LoadedRun, shape: tuple[int, int, int], op: LinearOperator, y: Tensor, before: Tensor,
                       paths: tuple[Path, Path], what: str, **settings: object) -> str:
    sol = restore(run.denoiser, op, y, shape, progress=True, **settings)  # type: ignore[arg-type]
    write_result(*paths, before, sol.x)
    return f"{what} {y.shape[0]} images with {settings['method']} ({sol.nfe} NFE) -> {paths[0]} (grid {paths[1]})"


def inpaint(run_dir: str, input_path: str, out: str | None, *, mask: str = "bottom", method: str = "repaint",
            steps: int = 50, jump_length: int = 5, resamples: int = 5, seed: int = 0) -> str:
    """Fill the hidden pixels of each input image (``mask``) with ``method``."""
    run, shape = _image_run(run_dir)
    op = parse_mask(mask, shape, seed)
    x = read_images(input_path, shape[0], shape[1])
    paths = output_paths(out or Path(run_dir) / "inpaint.npy")
    y = op(x)
    return _restore_and_write(run, shape, op, y, op.T(y), paths, "inpainted", method=method, steps=steps,
                              jump_length=jump_length, resamples=resamples, seed=seed)


def superres(run_dir: str, input_path: str, out: str | None, *, factor: int | None = None, method: str = "pigdm",
             steps: int = 50, seed: int = 0) -> str:
    """Upsample low-resolution inputs (the run's size / ``factor``, default 2): with an SR3 run
    (``data.condition = "lowres:K"``) by its conditional model at the run's sampling solver and NFE (``method``
    and ``steps`` unused), else as the average-pooling inverse problem."""
    run, shape = _image_run(run_dir)
    sr3 = lowres_factor(run.config)
    if sr3 is not None and factor not in (None, sr3):
        raise ValueError(f"--factor {factor}: {run_dir} is an SR3 run trained for factor {sr3}; allowed: {sr3}")
    factor = factor or sr3 or 2
    if factor < 2 or shape[1] % factor or shape[2] % factor:
        raise ValueError(f"--factor {factor} must be at least 2 and divide the run's image size {shape[1]}x{shape[2]}")
    op = AvgPool(factor)
    y = read_images(input_path, shape[0], shape[1] // factor)
    paths = output_paths(out or Path(run_dir) / "superres.npy")
    if sr3 is None:
        return _restore_and_write(run, shape, op, y, op.pinv(y), paths, f"{factor}x upsampled", method=method,
                                  steps=steps, seed=seed)
    cond = op.pinv(y)  # the training condition: pooled, then upsampled (pipeline.lowres_condition)
    sol = sample_denoiser(run.denoiser, run.info, run.config.sampling.solver, run.config.sampling.nfe, y.shape[0],
                          seed=seed, cond=cond, progress=True)
    write_result(*paths, cond, sol.x)
    return (f"{factor}x upsampled {y.shape[0]} images with the SR3 model ({run.config.sampling.solver}, {sol.nfe} NFE) "
            f"-> {paths[0]} (grid {paths[1]})")


def deblur(run_dir: str, input_path: str, out: str | None, *, blur: float = 1.0, noise: float = 0.0,
           method: str = "pigdm", steps: int = 50, seed: int = 0) -> str:
    """Deblur inputs blurred by a Gaussian of ``blur`` pixels (circular), with measurement noise ``noise``."""
    run, shape = _image_run(run_dir)
    op = GaussianBlur(blur, shape[1:])
    if noise < 0:
        raise ValueError(f"--noise must be >= 0 (the blurred images' noise std, in [-1, 1] units), got {noise!r}")
    y = read_images(input_path, shape[0], shape[1])
    paths = output_paths(out or Path(run_dir) / "deblur.npy")
    return _restore_and_write(run, shape, op, y, y, paths, "deblurred", method=method, steps=steps,
                              noise_std=noise, seed=seed)


def default_t0(run: LoadedRun) -> float:
    """SDEdit's default strength: the time where the noise equals the signal (log-SNR 0)."""
    return float(run.denoiser.schedule.t_of_log_snr(torch.tensor(0.0, dtype=torch.float64)))


def edit(run_dir: str, input_path: str, out: str | None, *, t0: float | None = None, solver: str | None = None,
         nfe: int | None = None, seed: int = 0) -> str:
    """SDEdit: noise each input to ``t0`` and denoise it with ``solver`` (default: the run's)."""
    run, shape = _image_run(run_dir)
    schedule = run.denoiser.schedule
    t0 = default_t0(run) if t0 is None else t0
    schedule.validate_t(t0)
    name = solver or run.config.sampling.solver
    s = make_solver(name)
    rule = grid_rule(s, None)
    steps = steps_for_nfe(s, schedule, nfe or run.config.sampling.nfe, None)
    make_grid(rule, schedule, steps, t_start=t0)
    x = read_images(input_path, shape[0], shape[1])
    paths = output_paths(out or Path(run_dir) / "sdedit.npy")
    sol = sdedit(run.denoiser, s, x, t0, steps, grid=rule, seed=seed, progress=True)
    write_result(*paths, x, sol.x)
    return f"edited {x.shape[0]} images at t0={t0:g} with {name} ({sol.nfe} NFE) -> {paths[0]} (grid {paths[1]})"
