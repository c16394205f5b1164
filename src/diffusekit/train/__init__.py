"""Training: the Trainer loop, EMA, verified safetensors checkpoints, the metrics log, clean stops, plots."""

from .checkpoint import (
    Checkpoint,
    CheckpointMismatchError,
    CorruptCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    newest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .ema import EMA
from .metrics_log import cut_metrics, read_metrics
from .plots import plot_loss_curve, scatter_2d
from .stop import NonFiniteLossError, TrainingStopped
from .trainer import TrainConfig, Trainer, TrainStep

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "TrainingStopped",
    "cut_metrics",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "newest_checkpoint",
    "plot_loss_curve",
    "read_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "scatter_2d",
]
