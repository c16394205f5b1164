"""Training: the Trainer loop, EMA, atomic safetensors checkpoints and training plots."""

from .checkpoint import (
    CheckpointMismatchError,
    atomic_write,
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .ema import EMA
from .plots import (
    image_grid,
    plot_loss_curve,
    read_metrics,
    save_image_grid,
    scatter_2d,
)
from .trainer import TrainConfig, Trainer, TrainStep

__all__ = [
    "EMA",
    "CheckpointMismatchError",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "atomic_write",
    "atomic_write_text",
    "image_grid",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "plot_loss_curve",
    "read_metrics",
    "save_checkpoint",
    "save_image_grid",
    "scatter_2d",
]
