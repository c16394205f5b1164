"""From a RunConfig to a trained run folder and back: the edge where names become classes.

A run folder holds ``config.toml``, ``run.json`` (data shape and classes),
``checkpoints/``, ``metrics.jsonl``, ``loss.png`` and sample grids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import RunConfig
from .data import ArrayLoader, load_dataset
from .data.toys import TOY_NAMES
from .denoiser import Denoiser
from .losses import DSMLoss
from .models import mlp_preset, unet_preset
from .sample import Solution, sample
from .schedules import make_grid, make_schedule
from .solvers import make_solver
from .train import TrainConfig, Trainer, atomic_write_text, load_weights, save_image_grid


@dataclass(frozen=True)
class RunInfo:
    """What a run folder needs besides its config to rebuild the network."""

    data_shape: tuple[int, ...]
    num_classes: int | None

    def to_json(self) -> str:
        return json.dumps({"data_shape": list(self.data_shape), "num_classes": self.num_classes}) + "\n"

    @classmethod
    def read(cls, run_dir: Path) -> "RunInfo":
        path = run_dir / "run.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a diffusekit run folder (no run.json)")
        d = json.loads(path.read_text())
        return cls(tuple(d["data_shape"]), d["num_classes"])


def load_training_data(cfg: RunConfig) -> tuple[Tensor, Tensor | None]:
    """The configured data set as a float tensor in [-1, 1] and labels (or None)."""
    d = cfg.data
    if d.name in TOY_NAMES:
        return load_dataset(d.name, n=d.num_samples, seed=cfg.seed)
    kwargs: dict[str, Any] = {}
    if d.image_size is not None:
        kwargs["size"] = d.image_size
    if d.channels is not None:
        kwargs["channels"] = d.channels
    return load_dataset(d.name, **kwargs)


def build_network(cfg: RunConfig, info: RunInfo) -> nn.Module:
    num_classes = info.num_classes if cfg.model.class_conditional else None
    if cfg.model.kind == "unet":
        if len(info.data_shape) != 3:
            raise ValueError(f"the unet model needs image data (C, H, W), got shape {info.data_shape}; use model.kind=mlp")
        c, h, _ = info.data_shape
        return unet_preset(cfg.model.preset, c, h, num_classes=num_classes)
    if cfg.model.kind == "mlp":
        dim = int(torch.tensor(info.data_shape).prod())
        if len(info.data_shape) != 1:
            raise ValueError(f"the mlp model needs vectors (D,), got shape {info.data_shape}; use model.kind=unet")
        return mlp_preset(cfg.model.preset, dim, num_classes=num_classes)
    raise ValueError(f"unknown model kind {cfg.model.kind!r}; allowed: mlp, unet")


def build_denoiser(cfg: RunConfig, info: RunInfo) -> Denoiser:
    return Denoiser(build_network(cfg, info), make_schedule(cfg.diffusion.schedule), cfg.diffusion.parameterization)


def train_run(cfg: RunConfig, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> Trainer:
    """Train (or resume) a run in ``run_dir``; writes config, checkpoints, metrics, loss curve and samples."""
    run = Path(run_dir)
    torch.manual_seed(cfg.seed)
    x, y = load_training_data(cfg)
    info = RunInfo(tuple(x.shape[1:]), int(y.max()) + 1 if y is not None else None)
    existing = run / "config.toml"
    if resume and existing.is_file() and RunConfig.from_toml(existing) != cfg:
        raise ValueError(f"{run} holds a run with a different config; use another folder or --no-resume")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(existing, cfg.to_toml())
    atomic_write_text(run / "run.json", info.to_json())
    denoiser = build_denoiser(cfg, info)
    conditional = cfg.model.class_conditional and y is not None
    loader = ArrayLoader(x, y if conditional else None, batch_size=cfg.data.batch_size, seed=cfg.seed, flip=cfg.data.flip)
    dc = cfg.diffusion
    loss = DSMLoss(
        weighting=dc.weighting,
        time=dc.time_sampling,
        label_dropout=dc.label_dropout,
        null_label=info.num_classes if conditional and dc.label_dropout > 0 else None,
    )
    oc = cfg.optim
    if oc.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown optim.lr_schedule {oc.lr_schedule!r}; allowed: constant, cosine")
    tcfg = TrainConfig(
        lr=oc.lr, weight_decay=oc.weight_decay, warmup_steps=oc.warmup_steps, grad_clip=oc.grad_clip,
        decay_steps=cfg.steps if oc.lr_schedule == "cosine" and cfg.steps > oc.warmup_steps else None,
        ema_half_life=oc.ema_half_life, bf16=oc.bf16, seed=cfg.seed, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, sample_every=cfg.sample_every, progress=progress,
    )

    def grid_fn(den: Denoiser, step: int, folder: Path | None) -> None:
        if folder is None or len(info.data_shape) != 3:
            return
        sol = sample_denoiser(den, info, cfg.sampling.solver, cfg.sampling.nfe, 64, seed=0)
        save_image_grid(sol.x, folder / "samples" / f"step-{step:08d}.png", nrow=8, scale=4)

    trainer = Trainer(denoiser, loader, loss, tcfg, run_dir=run, sample_fn=grid_fn if cfg.sample_every else None)
    if resume:
        trainer.resume()
    trainer.fit(cfg.steps)
    return trainer


@dataclass(frozen=True)
class LoadedRun:
    denoiser: Denoiser
    config: RunConfig
    info: RunInfo
    meta: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "ema") -> LoadedRun:
    """Rebuild the denoiser of a run folder from its config and latest checkpoint."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    cfg = RunConfig.from_toml(run / "config.toml")
    info = RunInfo.read(run)
    denoiser = build_denoiser(cfg, info)
    meta = load_weights(run, denoiser.net, which=which)  # type: ignore[arg-type]
    denoiser.eval()
    return LoadedRun(denoiser, cfg, info, meta)


def steps_for_nfe(solver_name: str, nfe: int, **options: Any) -> int:
    """Grid steps so that the solver spends about ``nfe`` model calls.

    Adaptive solvers set their own NFE from their tolerances: they get their ``default_steps``.
    """
    solver = make_solver(solver_name, **options)
    if solver.adaptive:
        return solver.default_steps
    return max(1, round(nfe / float(solver.nfe_per_step)))


def sample_denoiser(
    denoiser: Denoiser,
    info: RunInfo,
    solver_name: str,
    nfe: int,
    n: int,
    *,
    seed: int = 0,
    grid: str | None = None,
    cond: Tensor | None = None,
    save_trajectory: bool = False,
    progress: bool = False,
    **options: Any,
) -> Solution:
    """Sample ``n`` items with a solver by name at about ``nfe`` model calls."""
    solver = make_solver(solver_name, **options)
    steps = steps_for_nfe(solver_name, nfe, **options)
    g = make_grid(grid or solver.default_grid, denoiser.schedule, steps)
    return sample(
        denoiser, solver, shape=info.data_shape, batch=n, grid=g, seed=seed, cond=cond,
        save_trajectory=save_trajectory, progress=progress,
    )
