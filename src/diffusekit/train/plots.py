"""Pictures written during training: the loss curve and 2-D scatter plots.

Matplotlib is used through its object API with the Agg canvas (no pyplot, no global
backend change). Files are written atomically. (Image grids: :mod:`diffusekit.image_grid`.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write
from .metrics_log import read_metrics


def _save_figure(fig, path: str | os.PathLike[str], dpi: int = 120) -> Path:  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def plot_loss_curve(
    records: Sequence[Mapping] | str | os.PathLike[str], path: str | os.PathLike[str], smoothing: float = 0.9
) -> Path:
    """Loss against step (log scale when positive) with an exponentially smoothed line, as a PNG."""
    from matplotlib.figure import Figure

    if not isinstance(records, Sequence):
        records = read_metrics(records)
    rows = [r for r in records if "loss" in r and "step" in r]
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if len(loss):
        ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss")
        # bias-corrected exponential smoothing, lighter for short logs
        beta = min(smoothing, max(0.0, 1.0 - 10.0 / len(loss)))
        smooth = np.empty_like(loss)
        acc = 0.0
        for i, v in enumerate(loss):  # a few thousand log points at most
            acc = beta * acc + (1 - beta) * v
            smooth[i] = acc / (1 - beta ** (i + 1)) if beta > 0 else v
        ax.plot(steps, smooth, lw=1.5, label=f"smoothed ({beta:.2f})")
        if np.all(loss > 0):
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def scatter_2d(
    points: Tensor | Mapping[str, Tensor],
    path: str | os.PathLike[str],
    lim: float | None = None,
    title: str | None = None,
    size: float = 2.0,
) -> Path:
    """Scatter plot of (N, 2) points, or of several labelled sets side by side, as a PNG."""
    from matplotlib.figure import Figure

    sets = {"": points} if isinstance(points, Tensor) else dict(points)
    fig = Figure(figsize=(3.2 * len(sets), 3.2))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, (name, pts) in zip(axes, sets.items()):
        p = torch.as_tensor(pts).detach().float().cpu().numpy()
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"points must be (N, 2), got {p.shape}")
        ax.scatter(p[:, 0], p[:, 1], s=size, alpha=0.5, linewidths=0)
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)
