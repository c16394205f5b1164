"""Training a noise-aware classifier p(y | x_t, t) on a run's schedule (Dhariwal & Nichol 2021, sec. 4.1).

The loss draws t ~ p(t) and x_t = alpha x0 + sigma eps exactly as the denoiser's DSM loss does
(the same time distribution by default) and scores the classifier's cross-entropy on the clean
label; the ``Trainer`` runs it unchanged (AdamW, warm-up, EMA, checkpoints, exact resume), so
there is no second training loop. ``train_classifier`` writes the classifier into the run folder
(``RUN/classifier/``: ``classifier.json``, ``checkpoints/``, ``metrics.jsonl``, ``loss.png``) and
``load_classifier`` rebuilds it on the run's schedule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser import Cond
from ..files import atomic_write_text
from ..losses.dsm import LossOutput, batch_normal, batch_rows
from ..losses.time_sampling import TimeSampler, make_time_sampler
from ..models.noisy_classifier import NoisyClassifier, TimeClassifier
from ..schedules.base import NoiseSchedule
from .checkpoint import load_weights
from .trainer import TrainConfig, Trainer

#: The classifier's sub-folder of a run folder.
CLASSIFIER_DIR = "classifier"
_SETTINGS = "classifier.json"


@dataclass(frozen=True)
class ClassifierLoss:
    """Cross-entropy -log p_theta(y | x_t, t) with t ~ p(t) (``time``) and x_t ~ q(x_t | x0).

    Random draws, in order: t (B variates), then eps (like x0), from ``generator``; ``x0`` may be rows
    ``offset`` to ``offset + B`` of a global batch of ``global_batch`` rows (a data-parallel shard, a micro-batch),
    whose draws are made whole and cut, as ``DSMLoss``'s.
    """

    time: str | TimeSampler = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", make_time_sampler(self.time))

    def __call__(self, model: TimeClassifier, x0: Tensor, cond: Cond = None,
                 generator: torch.Generator | None = None, offset: int = 0,
                 global_batch: int | None = None) -> LossOutput:
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.shape != (x0.shape[0],):
            raise ValueError(f"the classifier loss needs ({x0.shape[0]},) integer labels, got {cond!r:.60}")
        schedule = model.schedule
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        t = self.time(n, schedule, generator, x0.device, torch.float64)[rows]  # type: ignore[operator]
        noise = batch_normal(x0, n, rows, generator)
        per_sample = F.cross_entropy(model(schedule.add_noise(x0, t, noise), t), cond, reduction="none")
        return LossOutput(per_sample.mean(), per_sample, t)


@dataclass(frozen=True)
class ClassifierSettings:
    """What rebuilds a trained classifier: data shape, classes, network size, time distribution."""

    data_shape: tuple[int, ...]
    num_classes: int
    width: int = 64
    depth: int = 2
    time: str = "uniform"

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "data_shape": list(self.data_shape)}, indent=1) + "\n"

    @classmethod
    def read(cls, folder: Path) -> "ClassifierSettings":
        path = folder / _SETTINGS
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no trained classifier (no {_SETTINGS}); "
                                    "train one with: diffusekit train-classifier RUN")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(tuple(int(v) for v in d.pop("data_shape")), **d)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); allowed: the JSON diffusekit writes") from None

    def build(self, schedule: NoiseSchedule) -> TimeClassifier:
        return TimeClassifier(NoisyClassifier(self.data_shape, self.num_classes, self.width, self.depth), schedule)


def fit_classifier(
    model: TimeClassifier,
    x: Tensor,
    y: Tensor,
    steps: int,
    *,
    time: str = "uniform",
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    flip: bool = False,
    folder: Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> Trainer:
    """Train ``model`` on data ``x`` with labels ``y`` for ``steps`` steps with the ``Trainer``
    (continuing the newest checkpoint in ``folder`` if there is one); returns the trainer."""
    from ..data import ArrayLoader

    config = TrainConfig(lr=lr, warmup_steps=min(100, steps // 10), ema_half_life=max(steps / 10, 1.0), seed=seed,
                         log_every=max(1, min(50, steps)), checkpoint_every=None if folder is None else max(steps // 2, 1),
                         keep_checkpoints=1, progress=progress, use_labels=True)
    loader = ArrayLoader(x, y, batch_size=min(batch_size, x.shape[0]), seed=seed, flip=flip)
    trainer = Trainer(model, loader, ClassifierLoss(time), config, run_dir=folder, meta=meta)
    if folder is not None:
        trainer.resume()
    trainer.fit(steps)
    if trainer.ema is not None:  # the EMA weights are the ones kept
        model.net.load_state_dict(trainer.ema.module.state_dict())
    return trainer


def train_classifier(
    run_dir: str | Path,
    *,
    steps: int = 2000,
    width: int = 64,
    depth: int = 2,
    batch_size: int | None = None,
    lr: float = 1e-3,
    time: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[TimeClassifier, Trainer, Path]:
    """Train a noise-aware classifier on a run's data, labels and schedule into ``out`` (default
    ``RUN/classifier``); ``time`` defaults to the run's ``diffusion.time_sampling``, ``batch_size`` to
    its ``data.batch_size``. A folder holding a classifier of the same settings is continued."""
    from ..pipeline import load_run, load_training_data

    run = load_run(run_dir)
    cfg = run.config
    if steps < 1 or width < 1 or depth < 1:
        raise ValueError(f"steps, width and depth must be >= 1, got {steps}, {width}, {depth}")
    if not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    time = time or cfg.diffusion.time_sampling
    make_time_sampler(time)
    x, y = load_training_data(cfg)
    if y is None:
        raise ValueError(f"a classifier needs class labels, but {cfg.data.name} has none; allowed: data with labels "
                         "(digits, fashion, mnist5k, mnist, a folder of class sub-folders, .npz with \"y\")")
    settings = ClassifierSettings(tuple(x.shape[1:]), int(y.max()) + 1, width, depth, time)
    folder = Path(out) if out is not None else Path(run_dir) / CLASSIFIER_DIR
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; allowed: a folder")
    if (folder / _SETTINGS).is_file() and ClassifierSettings.read(folder) != settings:
        raise ValueError(f"{folder} holds a classifier with other settings ({ClassifierSettings.read(folder)}); "
                         "choose another --out")
    model = settings.build(run.denoiser.schedule)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / _SETTINGS, settings.to_json())
    meta = {"kind": "noisy_classifier", "diffusion.schedule": cfg.diffusion.schedule, **settings.__dict__}
    trainer = fit_classifier(model, x, y, steps, time=time, batch_size=batch_size or cfg.data.batch_size, lr=lr,
                             seed=cfg.seed, flip=cfg.data.flip, folder=folder, meta=meta, progress=progress)
    return model, trainer, folder


def load_classifier(path: str | Path, schedule: NoiseSchedule) -> TimeClassifier:
    """The trained classifier in ``path`` (a folder written by ``train_classifier``) on ``schedule``, EMA weights."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"classifier folder not found: {folder}")
    model = ClassifierSettings.read(folder).build(schedule)
    load_weights(folder, model.net, "ema")
    return model.eval()


@torch.no_grad()
def accuracy_at(model: TimeClassifier, x: Tensor, y: Tensor, t: float, seed: int = 0, batch: int = 1024) -> float:
    """The fraction of ``x`` noised to time ``t`` (seeded noise) that ``model`` classifies as ``y``
    (``batch`` items per network call)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    x_t = model.schedule.add_noise(x, torch.full((x.shape[0],), t, dtype=torch.float64),
                                   torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
    device = next(model.parameters()).device
    hits = [(model(part.to(device), t).argmax(1).cpu() == labels.cpu()).sum() for part, labels in
            zip(x_t.split(batch), y.split(batch))]
    return float(torch.stack(hits).sum()) / x.shape[0]
