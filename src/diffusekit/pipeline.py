"""From a RunConfig to a trained run folder and back: the edge where names become classes.

A run folder holds ``config.toml``, ``run.json`` (data shape and classes),
``checkpoints/``, ``metrics.jsonl``, ``loss.png`` and sample grids.

Every input is checked before the folder is touched (:func:`prepare_run`): a refused
command leaves the folder exactly as it was. A checkpoint is used only if it verifies
and was trained with the model, schedule, parameterization and data shape the config names.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import RunConfig, check_config
from .data import ArrayLoader, load_dataset
from .data.images import lattice_levels
from .data.toys import CONDITIONAL_TOY_NAMES, TOY_NAMES
from .denoiser import Denoiser, DenoiserLike
from .files import atomic_write_text, remove_orphan_temp_files
from .image_grid import save_image_grid
from .losses import DSMLoss
from .losses.hybrid import HybridLoss
from .models import mlp_preset, unet_preset
from .noise import sample_keys
from .sample import GRID_POLICIES, Solution, grid_rule, sample, steps_for_nfe
from .schedules import GRIDS, Grid, make_grid, make_schedule
from .solvers import make_solver
from .stepping import Constraint, Solver
from .train import (
    Checkpoint,
    CheckpointMismatchError,
    CorruptCheckpointError,
    TrainConfig,
    Trainer,
    newest_checkpoint,
)
from .train.checkpoint import check_compatible, copy_weights
from .train.distributed import World, gather_rows, per_rank_batch, shard

Report = Callable[[str], None]

#: Settings that may change when a run is continued: they do not change what was trained so far.
CONTINUABLE = ("steps", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "optim.accumulate")


def to_stderr(message: str) -> None:
    """The default ``report``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _silent(message: str) -> None:
    """The ``report`` of ranks other than 0."""


@dataclass(frozen=True)
class RunInfo:
    """What a run folder needs besides its config to rebuild the network."""

    data_shape: tuple[int, ...]
    num_classes: int | None
    cond_dim: int | None = None  # the size of the condition vectors (data.condition = "vector")

    def to_json(self) -> str:
        extra = {} if self.cond_dim is None else {"cond_dim": self.cond_dim}
        return json.dumps({"data_shape": list(self.data_shape), "num_classes": self.num_classes, **extra}) + "\n"

    @classmethod
    def read(cls, run_dir: Path) -> "RunInfo":
        path = run_dir / "run.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a diffusekit run folder (no run.json)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(tuple(int(v) for v in d["data_shape"]), d["num_classes"], d.get("cond_dim"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is unreadable ({e}); allowed: the JSON diffusekit writes") from None


def run_meta(cfg: RunConfig, info: RunInfo) -> dict[str, Any]:
    """What a checkpoint records about the run it belongs to, checked again whenever it is loaded."""
    return {
        "model.kind": cfg.model.kind, "model.preset": cfg.model.preset, "model.learn_variance": cfg.model.learn_variance,
        "data.labels": cfg.data.labels, "data.condition": cfg.data.condition, "diffusion.schedule": cfg.diffusion.schedule,
        "diffusion.parameterization": cfg.diffusion.parameterization, "data_shape": list(info.data_shape),
        "num_classes": info.num_classes,
    }


def check_checkpoint_meta(ckpt: Checkpoint, cfg: RunConfig, info: RunInfo, run: Path) -> None:
    """Refuse a checkpoint whose recorded model, schedule, parameterization or data differ from the run's
    (``config.toml`` and ``run.json`` in the folder ``run``)."""
    expected = run_meta(cfg, info)
    recorded = dict(ckpt.meta)
    if "diffusion.parameterization" not in recorded and "parameterization" in recorded:  # older checkpoints
        recorded["diffusion.parameterization"] = recorded["parameterization"]
    for key, value in expected.items():
        if key in recorded and recorded[key] != value:
            where = run / ("run.json" if key in ("data_shape", "num_classes") else "config.toml")
            raise CheckpointMismatchError(
                f"checkpoint {ckpt.path.name} was trained with {key}={recorded[key]!r} but {where} says {value!r}; "
                f"allowed: set it back to {recorded[key]!r}, or train a new run in another folder"
            )


def check_names(cfg: RunConfig) -> None:
    """Every name in the config (schedule, parameterization, loss, model preset, solver, grid) is registered."""
    from .losses.time_sampling import TIME_SAMPLERS
    from .losses.weighting import WEIGHTINGS
    from .models import PRESET_NAMES
    from .parameterization import PARAMETERIZATIONS
    from .schedules import SCHEDULES
    from .solvers import SOLVERS

    if cfg.model.preset not in PRESET_NAMES:
        raise ValueError(f"model.preset must be one of {', '.join(PRESET_NAMES)}, got {cfg.model.preset!r}")
    check_variance_training(cfg)
    for key, registry, name in [
        ("diffusion.schedule", SCHEDULES, cfg.diffusion.schedule),
        ("diffusion.parameterization", PARAMETERIZATIONS, cfg.diffusion.parameterization),
        ("diffusion.time_sampling", TIME_SAMPLERS, None if cfg.diffusion.time_sampling == "importance"
         else cfg.diffusion.time_sampling),
        ("diffusion.weighting", WEIGHTINGS, cfg.diffusion.weighting),
        ("sampling.solver", SOLVERS, cfg.sampling.solver),
    ]:
        if name is not None and name not in registry:
            raise ValueError(f"{key} must be one of {', '.join(registry.names())}, got {name!r}")
    if cfg.sampling.grid is not None and cfg.sampling.grid not in (*GRID_POLICIES, *GRIDS.names()):
        raise ValueError(f"sampling.grid must be one of {', '.join([*GRID_POLICIES, *GRIDS.names()])}, got {cfg.sampling.grid!r}")


def check_variance_training(cfg: RunConfig) -> None:
    """The learned-variance settings agree: a variance head is trained by the hybrid or vlb loss, which
    sample the N steps of the discrete schedule uniformly or by importance (Nichol & Dhariwal 2021)."""
    dc = cfg.diffusion
    if cfg.model.learn_variance and dc.loss == "simple":
        raise ValueError("model.learn_variance = true needs diffusion.loss = 'hybrid' or 'vlb' (L_vlb trains the "
                         "variance head), got 'simple'")
    if dc.loss != "simple" and not cfg.model.learn_variance:
        raise ValueError(f"diffusion.loss = {dc.loss!r} needs model.learn_variance = true; allowed without it: 'simple'")
    if dc.loss != "simple" and dc.schedule != "discrete":
        raise ValueError(f"diffusion.loss = {dc.loss!r} needs diffusion.schedule = 'discrete' (the bound's N steps), "
                         f"got {dc.schedule!r}")
    if dc.loss != "simple" and dc.time_sampling not in ("uniform", "importance"):
        raise ValueError(f"diffusion.loss = {dc.loss!r} samples the schedule's steps: diffusion.time_sampling must be "
                         f"uniform or importance, got {dc.time_sampling!r}")
    if dc.time_sampling == "importance" and dc.schedule != "discrete":
        raise ValueError(f"diffusion.time_sampling = 'importance' needs diffusion.schedule = 'discrete', got {dc.schedule!r}")


def make_loss(cfg: RunConfig, info: RunInfo, x: Tensor) -> DSMLoss | HybridLoss:
    """The training loss of a config: ``DSMLoss``, or ``HybridLoss`` for the hybrid / vlb losses and for
    importance-sampled t; the decoder of L_vlb is discretised on the data's lattice (17 or 256 levels)
    or a Gaussian density for other data."""
    dc = cfg.diffusion
    conditional = cfg.data.labels or cfg.data.condition == "vector"
    labels = {"label_dropout": dc.p_uncond if conditional else 0.0,
              "null_label": info.num_classes if cfg.data.labels else None}
    if dc.loss == "simple" and dc.time_sampling != "importance":
        return DSMLoss(weighting=dc.weighting, time=dc.time_sampling, **labels)
    levels = lattice_levels(x) if x.ndim == 4 else None
    lattice = {"decoder": "gaussian"} if levels is None else {"decoder": "discretized", "n_bits": math.log2(levels)}
    time = "importance" if dc.time_sampling == "importance" else "uniform"
    return HybridLoss(dc.loss, vlb_weight=dc.vlb_weight, weighting=dc.weighting, time=time, **lattice, **labels)


def load_training_data(cfg: RunConfig) -> tuple[Tensor, Tensor | None]:
    """The configured data set as a float tensor in [-1, 1] and labels (or None)."""
    d = cfg.data
    if d.name in TOY_NAMES or d.name in CONDITIONAL_TOY_NAMES:
        return load_dataset(d.name, n=d.num_samples, seed=cfg.seed)
    kwargs: dict[str, Any] = {}
    if d.image_size is not None:
        kwargs["size"] = d.image_size
    if d.channels is not None:
        kwargs["channels"] = d.channels
    return load_dataset(d.name, **kwargs)


def lowres_factor(cfg: RunConfig) -> int | None:
    """K of ``data.condition = "lowres:K"`` (an SR3 super-resolution run), else None."""
    return int(cfg.data.condition.split(":")[1]) if cfg.data.condition.startswith("lowres:") else None


def lowres_condition(x: Tensor, factor: int) -> Tensor:
    """SR3's conditioning image: x average-pooled by ``factor`` and upsampled back (nearest)."""
    from .tasks.operators import AvgPool

    pool = AvgPool(factor)
    return pool.pinv(pool(x))


def build_network(cfg: RunConfig, info: RunInfo) -> nn.Module:
    num_classes = info.num_classes if cfg.data.labels else None
    if cfg.model.kind == "unet":
        if cfg.data.condition == "vector":
            raise ValueError("data.condition = vector needs model.kind = mlp (the unet takes class labels)")
        if len(info.data_shape) != 3:
            raise ValueError(f"the unet model needs image data (C, H, W), got shape {info.data_shape}; use model.kind=mlp")
        c, h, _ = info.data_shape
        cond_channels = c if lowres_factor(cfg) else 0
        return unet_preset(cfg.model.preset, c, h, num_classes=num_classes, learn_variance=cfg.model.learn_variance,
                           cond_channels=cond_channels)
    if cfg.model.kind == "mlp":
        dim = int(torch.tensor(info.data_shape).prod())
        if len(info.data_shape) != 1:
            raise ValueError(f"the mlp model needs vectors (D,), got shape {info.data_shape}; use model.kind=unet")
        cond_dim = info.cond_dim if cfg.data.condition == "vector" else None
        return mlp_preset(cfg.model.preset, dim, num_classes=num_classes, cond_dim=cond_dim,
                          learn_variance=cfg.model.learn_variance)
    raise ValueError(f"unknown model kind {cfg.model.kind!r}; allowed: mlp, unet")


def build_denoiser(cfg: RunConfig, info: RunInfo) -> Denoiser:
    return Denoiser(build_network(cfg, info), make_schedule(cfg.diffusion.schedule), cfg.diffusion.parameterization)


@dataclass
class PreparedRun:
    """A training run checked end to end and ready to start; nothing has been written yet."""

    config: RunConfig
    run_dir: Path
    info: RunInfo
    denoiser: Denoiser
    loader: ArrayLoader
    loss: DSMLoss | HybridLoss
    train_config: TrainConfig
    resume_step: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _existing_run(run: Path) -> tuple[RunConfig | None, RunInfo | None, bool]:
    """The config and data info of a run folder (None where absent) and whether it has checkpoints."""
    has_ckpt = any((run / "checkpoints").glob("step-*.safetensors"))
    cfg = RunConfig.from_toml(run / "config.toml") if (run / "config.toml").is_file() else None
    info = RunInfo.read(run) if (run / "run.json").is_file() else None
    return cfg, info, has_ckpt


def prepare_run(cfg: RunConfig, run_dir: str | Path, *, resume: bool = True, progress: bool = True,
                world: World | None = None) -> PreparedRun:
    """Check everything a training run needs -- config, names, data, the folder, its checkpoints -- without writing.

    A folder with checkpoints is continued if its config differs at most in :data:`CONTINUABLE` settings and
    its newest good checkpoint is at most ``cfg.steps`` (``resume=False`` refuses it instead). With a ``world``
    of several processes, the network goes to ``world.device`` and the loader gives this rank's shard of each
    global batch of ``data.batch_size`` rows.
    """
    world = world or World()
    check_config(cfg)
    check_names(cfg)
    per_rank_batch(cfg.data.batch_size, world.size, cfg.optim.accumulate)
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ValueError(f"run folder {run} is a file; allowed: a folder (new or holding a run)")
    old_cfg, old_info, has_ckpt = _existing_run(run) if run.is_dir() else (None, None, False)
    if has_ckpt and not resume:
        raise ValueError(f"{run} already holds a trained run; drop --no-resume to continue it, or choose another --out")
    if has_ckpt and old_cfg is not None:
        changed = [c for c in old_cfg.changed_fields(cfg) if c[0] not in CONTINUABLE and not c[0].startswith("sampling.")]
        if changed:
            key, was, now = changed[0]
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise ValueError(
                f"{run} holds a run with {key}={was!r}, not {now!r}{more}; a run continues with the same settings "
                f"except {', '.join(CONTINUABLE)} and sampling.*; choose another --out for a new run"
            )
    torch.manual_seed(cfg.seed)
    x, y = load_training_data(cfg)
    vector = cfg.data.condition == "vector"
    factor = lowres_factor(cfg)
    if vector and (cfg.data.labels or y is None or not y.is_floating_point() or y.ndim != 2):
        raise ValueError("data.condition = vector needs condition vectors, one float row per item, and data.labels = "
                         f"false; got {cfg.data.name} with data.labels = {str(cfg.data.labels).lower()}; allowed data: "
                         f"{', '.join(CONDITIONAL_TOY_NAMES)}")
    if factor is not None and (cfg.data.labels or cfg.data.flip or cfg.model.kind != "unet" or x.ndim != 4
                               or x.shape[-1] % factor or x.shape[-2] % factor):
        raise ValueError(f"data.condition = {cfg.data.condition!r} needs a unet on images whose size is divisible by "
                         f"{factor}, data.labels = false and data.flip = false; got data of shape {tuple(x.shape[1:])}")
    if y is not None and ((y.is_floating_point() and not vector) or factor is not None):
        y = None  # condition vectors, unused; an SR3 run's condition is computed from x below
    if cfg.data.labels and y is None:
        raise ValueError(f"data.labels = true needs class labels, but {cfg.data.name} has none; allowed: digits, fashion, "
                         "mnist5k, mnist, a folder of class sub-folders, an .npz with \"y\", a .csv with a \"label\" column")
    info = RunInfo(tuple(x.shape[1:]), int(y.max()) + 1 if y is not None and not vector else None,
                   int(y.shape[1]) if vector and y is not None else None)
    if has_ckpt and old_info is not None and old_info != info:
        raise ValueError(f"{run} was trained on data of shape {old_info.data_shape} with {old_info.num_classes} classes; "
                         f"{cfg.data.name} gives {info.data_shape} with {info.num_classes}; choose another --out")
    denoiser = build_denoiser(cfg, info).to(world.device)
    cond = lowres_condition(x, factor) if factor is not None else (y if cfg.data.labels or vector else None)
    loader = ArrayLoader(x, cond, batch_size=cfg.data.batch_size, seed=cfg.seed,
                         flip=cfg.data.flip, rank=world.rank, world_size=world.size)
    loss = make_loss(cfg, info, x)  # label dropout with the null label num_classes (Ho & Salimans 2022, Algorithm 1)
    oc = cfg.optim
    tcfg = TrainConfig(
        lr=oc.lr, weight_decay=oc.weight_decay, warmup_steps=oc.warmup_steps, grad_clip=oc.grad_clip,
        decay_steps=cfg.steps if oc.lr_schedule == "cosine" and cfg.steps > oc.warmup_steps else None,
        ema_half_life=oc.ema_half_life, precision=oc.precision, accumulate=oc.accumulate, seed=cfg.seed, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
        sample_every=cfg.sample_every, progress=progress,
    )
    prepared = PreparedRun(cfg, run, info, denoiser, loader, loss, tcfg)
    if has_ckpt:
        ckpt, prepared.skipped = newest_checkpoint(run / "checkpoints")
        if ckpt is not None:
            check_checkpoint_meta(ckpt, cfg, info, run)
            check_compatible(ckpt.path, denoiser.net, ckpt.tensors, "model")  # type: ignore[arg-type]
            if ckpt.step > cfg.steps:
                raise ValueError(f"steps must be at least {ckpt.step} to continue {run} (it is at step {ckpt.step}), "
                                 f"got {cfg.steps}")
            prepared.resume_step = ckpt.step
    return prepared


def train_run(cfg: RunConfig, run_dir: str | Path, *, resume: bool = True, progress: bool = True,
              report: Report = to_stderr, world: World | None = None) -> Trainer:
    """Train (or continue) a run in ``run_dir``; writes config, checkpoints, metrics, loss curve and samples.

    Everything is checked first (:func:`prepare_run`); ``report`` gets one line per notable event
    (orphan temporary files removed, bad checkpoints skipped, where training resumes). With a ``world``
    of several processes (torchrun), every rank calls this; rank 0 writes and reports.
    """
    world = world or World()
    p = prepare_run(cfg, run_dir, resume=resume, progress=progress and world.is_main, world=world)
    run, info = p.run_dir, p.info
    if not world.is_main:
        report = _silent
    else:
        for f in remove_orphan_temp_files(run, run / "checkpoints", run / "samples"):
            report(f"removed {f} (a temporary file left by an interrupted write)")
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.toml", cfg.to_toml())
        atomic_write_text(run / "run.json", info.to_json())

    def grid_fn(den: Denoiser, step: int, folder: Path | None) -> None:
        if folder is None or len(info.data_shape) != 3:
            return
        sol = sample_denoiser(den, info, cfg.sampling.solver, cfg.sampling.nfe, 64, seed=0)
        save_image_grid(sol.x, folder / "samples" / f"step-{step:08d}.png", nrow=8, scale=4)

    trainer = Trainer(p.denoiser, p.loader, p.loss, p.train_config, run_dir=run,
                      sample_fn=grid_fn if cfg.sample_every else None, meta=run_meta(cfg, info), world=world)
    resumed = trainer.resume()
    for path, reason in trainer.skipped_checkpoints:
        report(f"skipped checkpoint {path.name}: {reason}; renamed to {path.name}.corrupt")
    if resumed:
        report(f"resuming {run} at step {trainer.step} of {cfg.steps}")
    elif trainer.skipped_checkpoints:
        report(f"no good checkpoint left in {run}: training starts again at step 0")
    trainer.fit(cfg.steps)
    return trainer


@dataclass(frozen=True)
class LoadedRun:
    denoiser: Denoiser
    config: RunConfig
    info: RunInfo
    meta: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "ema", report: Report = to_stderr) -> LoadedRun:
    """Rebuild the denoiser of a run folder from its config and newest good checkpoint.

    Newer checkpoints that fail to verify are skipped with a ``report`` line; a checkpoint trained
    with another model, schedule, parameterization or data shape than the config names is refused.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run} is not a diffusekit run folder (no config.toml)")
    cfg = RunConfig.from_toml(run / "config.toml")
    check_names(cfg)
    info = RunInfo.read(run)
    denoiser = build_denoiser(cfg, info)
    ckpt, skipped = newest_checkpoint(run / "checkpoints", with_state=False)
    if ckpt is None:
        if skipped:
            raise CorruptCheckpointError(f"no readable checkpoint in {run / 'checkpoints'}: "
                                         + "; ".join(reason for _, reason in skipped))
        raise FileNotFoundError(f"{run} has no checkpoint yet; train it first (diffusekit train ... --out {run})")
    for path, reason in skipped:
        report(f"skipped checkpoint {path.name}: {reason}")
    check_checkpoint_meta(ckpt, cfg, info, run)
    copy_weights(ckpt, denoiser.net, which)  # type: ignore[arg-type]
    denoiser.eval()
    return LoadedRun(denoiser, cfg, info, ckpt.meta)


def class_count(run: LoadedRun, option: str) -> int:
    """The number of classes of a class-conditional run (trained with ``data.labels = true``); ``option``
    names what needs it in the error for any other run."""
    if not run.config.data.labels or run.info.num_classes is None:
        raise ValueError(f"{option} needs a class-conditional run (trained with data.labels = true); this run is "
                         "unconditional")
    return run.info.num_classes


def guided_denoiser(run: LoadedRun, scale: float, *, interval: tuple[float, float] | None = None,
                    rescale: float = 0.0) -> DenoiserLike:
    """Classifier-free guidance with scale ``scale`` (0 unconditional, 1 conditional; Ho & Salimans 2022)
    of a class-conditional run, its null label being ``num_classes``. ``scale`` = 1 without an interval
    or rescaling is the conditional denoiser itself (one network call per step instead of two)."""
    from .guidance import ClassifierFreeGuidance

    if run.config.data.condition != "vector":
        class_count(run, "classifier-free guidance")
    if run.config.diffusion.p_uncond == 0 and scale != 1:
        raise ValueError(f"this run was trained with diffusion.p_uncond = 0, so it has no unconditional model; "
                         f"allowed: guidance scale 1 (the conditional model), got {scale!r}")
    if scale == 1 and interval is None and not rescale:
        return run.denoiser
    return ClassifierFreeGuidance(run.denoiser, scale, interval=interval, rescale=rescale)


def classifier_guided_denoiser(run: LoadedRun, classifier: Callable[[Tensor, Any], Tensor], scale: float, *,
                               cfg: float | None = None, mean_shift: bool = False) -> DenoiserLike:
    """Classifier guidance with scale ``scale`` through the score (Dhariwal & Nichol 2021, sec. 4, Algorithm 2) of
    a run's unconditional model (a class-conditional run's null label), or with ``cfg`` = w of its CFG-guided
    conditional model (w = 1: the conditional model); ``classifier(x_t, t)`` gives logits. ``mean_shift``: their
    Algorithm 1 for an ancestral solver instead, a ``MeanShiftClassifierGuidance`` that also goes in ``constraints``."""
    from .guidance import ClassifierGuidance, MeanShiftClassifierGuidance

    inner = run.denoiser if cfg is None else guided_denoiser(run, cfg)
    kind = MeanShiftClassifierGuidance if mean_shift else ClassifierGuidance
    return kind(inner, classifier, scale, inner_cond=cfg is not None)


def low_density_denoiser(run: LoadedRun, classifier: Any, scale: float, *, cfg: float = 1.0,
                         max_items: int = 10_000) -> DenoiserLike:
    """Low-density guidance (Sehwag et al. 2022) of a class-conditional run: the conditional model (CFG ``cfg``)
    pushed away from the class-mean embedding, the features being a noise-aware ``classifier``'s penultimate
    layer at the clean end on the denoised estimate; class means over at most ``max_items`` training items."""
    from .guidance import EnergyGuidance, LowDensityEnergy

    class_count(run, "low-density guidance")
    x, y = load_training_data(run.config)
    if y is None:
        raise ValueError(f"low-density guidance needs class labels, but {run.config.data.name} has none")
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_items]
    t_clean = run.denoiser.schedule.t_min
    device = next(classifier.parameters()).device
    energy = LowDensityEnergy.from_data(lambda v: classifier.features(v, t_clean), x[keep].to(device), y[keep])
    return EnergyGuidance(guided_denoiser(run, cfg), energy, scale, denoised=True)


def sample_denoiser(
    denoiser: DenoiserLike,
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
    world: World | None = None,
    constraints: Sequence[Constraint] = (),
    **options: Any,
) -> Solution:
    """Sample ``n`` items with a solver by name at no more than ``nfe`` model calls; DDPM on a model
    with a variance head uses its learned variance unless ``variance`` is given. ``constraints``: the
    loop's hooks (e.g. a ``MeanShiftClassifierGuidance`` that is also the denoiser). Sharded over a
    ``world`` of several processes as :func:`sample_sharded`.
    """
    if solver_name == "ddpm" and getattr(denoiser, "learns_variance", False):
        options.setdefault("variance", "learned")
    solver = make_solver(solver_name, **options)
    steps = steps_for_nfe(solver, denoiser.schedule, nfe, grid)
    g = make_grid(grid_rule(solver, grid), denoiser.schedule, steps)
    return sample_sharded(denoiser, solver, g, info.data_shape, n, seed=seed, cond=cond,
                          save_trajectory=save_trajectory, progress=progress, world=world, constraints=constraints)


def sample_sharded(
    denoiser: DenoiserLike,
    solver: Solver,
    grid: Grid,
    shape: tuple[int, ...],
    n: int,
    *,
    seed: int = 0,
    cond: Tensor | None = None,
    save_trajectory: bool = False,
    progress: bool = False,
    world: World | None = None,
    constraints: Sequence[Constraint] = (),
) -> Solution:
    """``n`` samples of ``shape`` by ``solver`` on ``grid``, ``cond`` (n, ...) or None, with the loop's ``constraints``.

    With a ``world`` of several processes each rank samples its :func:`shard` of the ``n`` indices
    with those indices' own noise streams (``noise.sample_keys``) and the samples are gathered on
    every rank in index order: the same items as one process (a fixed-step solver's samples do not
    depend on the batch; an adaptive solver's steps follow each shard's own error estimate).
    The trajectory, if saved, is this rank's shard's.
    """
    world = world or World()
    if n < world.size:
        raise ValueError(f"cannot share {n} samples among {world.size} processes; allowed: at least {world.size} samples")
    rows = shard(n, world)
    index = torch.arange(n)[rows]
    sol = sample(
        denoiser, solver, shape=shape, batch=index.numel(), grid=grid,
        seed=sample_keys(seed, index) if world.distributed else seed, cond=None if cond is None else cond[rows],
        save_trajectory=save_trajectory, progress=progress and world.is_main, constraints=constraints,
    )
    return replace(sol, x=gather_rows(sol.x, world)) if world.distributed else sol
