"""Distilled and reflowed models as ordinary run folders.

A student is written like any trained run -- ``config.toml``, ``run.json``, ``checkpoints/``,
``metrics.jsonl``, ``loss.png`` -- so ``sample``, ``eval``, guidance and the tasks load it with
``pipeline.load_run``. Its config records its own sampler (``sampling.solver``, ``sampling.nfe`` =
its step count, ``sampling.grid``) and, for consistency models, its parameterization. A student has no
reverse-variance head: a teacher's head (Nichol & Dhariwal 2021) belongs to the teacher's one-step
posterior, which no distillation loss trains, so the student keeps only the mean output; ``distill.json``
records where it came from (method, teacher, settings, CPU seconds). Training a student is the library's
``Trainer`` with a distillation loss; an interrupted student resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import RunConfig
from ..data import ArrayLoader
from ..denoiser import Denoiser
from ..files import atomic_write_text
from ..denoiser import device_of
from ..pipeline import LoadedRun, RunInfo, build_network, load_training_data, run_meta
from ..train import TrainConfig, Trainer


def student_config(teacher: RunConfig, *, name: str, steps: int, solver: str, nfe: int, grid: str | None,
                   lr: float, parameterization: str | None = None, schedule: str | None = None) -> RunConfig:
    """The teacher's config with the student's name, training length, learning rate (constant, no warm-up),
    sampler, no variance head (so the plain loss) and, where it changes, parameterization and schedule."""
    d = teacher.to_dict()
    d.update(name=name, steps=steps)
    d["model"]["learn_variance"] = False
    d["diffusion"]["loss"] = "simple"
    d["optim"].update(lr=lr, warmup_steps=0, lr_schedule="constant")
    d["sampling"] = {"solver": solver, "nfe": nfe} | ({"grid": grid} if grid is not None else {})
    if parameterization is not None:
        d["diffusion"]["parameterization"] = parameterization
    if schedule is not None:
        d["diffusion"]["schedule"] = schedule
    return RunConfig.from_dict(d)


def student_of(teacher: Denoiser, cfg: RunConfig, info: RunInfo, parameterization: str | None = None) -> Denoiser:
    """A student (the network of ``cfg``) initialised with the teacher's weights (Salimans & Ho 2022; Song et al.
    2023, sec. 4); of a variance head's output layer (2C outputs) it keeps the mean half, the first C."""
    net = build_network(cfg, info)
    own = net.state_dict()
    weights = {k: v[: own[k].shape[0]] if v.shape[1:] == own[k].shape[1:] and v.shape[0] == 2 * own[k].shape[0] else v
               for k, v in teacher.net.state_dict().items()}  # type: ignore[union-attr]
    net.load_state_dict(weights)
    net.to(device_of(teacher)).requires_grad_(True).train()  # the teacher may be a frozen EMA copy
    return Denoiser(net, teacher.schedule, parameterization or teacher.parameterization)


def label_dropout(run: LoadedRun) -> tuple[float, int | None]:
    """(p_uncond, null label) of a class-conditional run, so its student keeps an unconditional model for guidance."""
    if run.config.data.labels and run.info.num_classes is not None:
        return run.config.diffusion.p_uncond, run.info.num_classes
    return 0.0, None


def data_loader(cfg: RunConfig, data: Tensor | None = None, labels: Tensor | None = None) -> ArrayLoader:
    """Batches of the run's training data (or of ``data``, e.g. reflow couplings), as in ``pipeline``."""
    if data is None:
        data, labels = load_training_data(cfg)
    return ArrayLoader(data, labels if cfg.data.labels else None, batch_size=cfg.data.batch_size, seed=cfg.seed,
                       flip=cfg.data.flip)


def train_student(cfg: RunConfig, info: RunInfo, student: Denoiser, loader: ArrayLoader, loss: Any, out: str | Path,
                  provenance: dict[str, Any], *, progress: bool = True) -> Trainer:
    """Train ``student`` with ``loss`` into the run folder ``out`` (continued if it holds checkpoints);
    writes config.toml, run.json and distill.json (``provenance`` plus the CPU seconds spent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", cfg.to_toml())
    atomic_write_text(out / "run.json", info.to_json())
    oc = cfg.optim
    tcfg = TrainConfig(lr=oc.lr, weight_decay=oc.weight_decay, warmup_steps=oc.warmup_steps, grad_clip=oc.grad_clip,
                       ema_half_life=oc.ema_half_life, seed=cfg.seed, log_every=min(cfg.log_every, cfg.steps),
                       checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, progress=progress)
    trainer = Trainer(student, loader, loss, tcfg, run_dir=out, meta=run_meta(cfg, info))
    record_path = out / "distill.json"
    resumed = trainer.resume()
    spent = json.loads(record_path.read_text())["cpu_seconds"] if resumed and record_path.is_file() else 0.0
    start = time.process_time()
    trainer.fit(cfg.steps)
    record = {**provenance, "steps": cfg.steps, "cpu_seconds": round(spent + time.process_time() - start, 2)}
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return trainer


def cpu_seconds(run_dir: str | Path) -> float:
    """CPU seconds spent on a student folder: training it and the stages inside it (``distill.json``) and
    generating reflow couplings (``couplings.json``)."""
    records = [*Path(run_dir).rglob("distill.json"), *Path(run_dir).rglob("couplings.json")]
    return sum(json.loads(p.read_text()).get("cpu_seconds", 0.0) for p in records)
