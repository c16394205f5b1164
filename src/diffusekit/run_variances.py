"""Reverse variances and trajectories of a run folder: what `diffusekit sample --variance/--trajectory`
and `train RUN --head` do, and the variance and trajectory of `eval`'s bound (``evaluate.run_vlb_metric``).

A run folder keeps Analytic-DPM's noise moments (``analytic_moments.json``, estimated on first use
over the run's training data) and the SN/NPR heads (``head_sn.safetensors``, ``head_npr.safetensors``,
trained by ``train RUN --head``) next to its checkpoints, so each is made once and reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .data.images import lattice_levels
from .files import atomic_write
from .likelihood.analytic import MOMENTS_FILE, NoiseMoments, run_moments
from .likelihood.trajectory import TRAJECTORIES, make_trajectory, trajectory_grid
from .pipeline import LoadedRun, load_run, load_training_data, sample_sharded
from .sample import Solution
from .schedules.discrete import DiscreteSchedule
from .solvers import make_solver
from .train.distributed import World, barrier
from .variance_heads import HEAD_KINDS, MomentHead, check_kind, train_head
from .variances import ReverseVariance, make_variance

VARIANCE_NAMES = ("small", "large", "analytic", "sn", "npr", "learned")
ANCESTRAL = ("ddpm", "ddim")


def head_path(run_dir: str | Path, kind: str) -> Path:
    return Path(run_dir) / f"head_{check_kind(kind)}.safetensors"


def save_head(run_dir: str | Path, head: MomentHead) -> Path:
    """Write a head's weights and config (safetensors metadata) into the run folder, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"config": json.dumps(head.config)}
    return atomic_write(head_path(run_dir, head.kind), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_head(run_dir: str | Path, kind: str) -> MomentHead:
    path = head_path(run_dir, kind)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {kind} head; train one: diffusekit train {run_dir} --head {kind}")
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    head = MomentHead(cfg.pop("data_shape"), **cfg)
    head.load_state_dict(state)
    return head.eval()


def _discrete(run: LoadedRun) -> None:
    if not isinstance(run.denoiser.schedule, DiscreteSchedule):
        raise ValueError("reverse variances and trajectories need a discrete (DDPM) schedule; this run's is "
                         f"{type(run.denoiser.schedule).__name__}")


def moments_of(run: LoadedRun, run_dir: str | Path, samples: int = 100, seed: int = 0) -> NoiseMoments:
    """The run's Analytic-DPM moments: stored, or estimated over its training data and stored."""
    _discrete(run)
    if (Path(run_dir) / MOMENTS_FILE).is_file():  # stored: do not load the training data (tens of seconds for images)
        return NoiseMoments.load(Path(run_dir) / MOMENTS_FILE)
    x, labels = load_training_data(run.config)
    return run_moments(run_dir, run.denoiser, x, samples=samples, seed=seed, cond=labels if run.config.data.labels else None)


def default_variance(run: LoadedRun) -> str:
    """The reverse variance a run samples and is bounded with unless told: its learned variance when it has a
    variance head (Nichol & Dhariwal 2021), else 'small' (beta tilde)."""
    return "learned" if run.denoiser.learns_variance else "small"


def check_bound_setting(variance: str | None, trajectory: str | None) -> None:
    """Refuse an unknown variance or trajectory name (None: the default) before any work is done."""
    if variance is not None and variance not in VARIANCE_NAMES:
        raise ValueError(f"--variance must be one of {', '.join(VARIANCE_NAMES)}, got {variance!r}")
    if trajectory is not None and trajectory not in TRAJECTORIES:
        raise ValueError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")


def run_variance(run: LoadedRun, run_dir: str | Path, name: str, *, eta: float = 1.0,
                 first_step_clip: float | None = None, samples: int = 100) -> ReverseVariance:
    """A reverse variance by name for a run: small, large, analytic (moments), sn / npr (heads), learned."""
    if name not in VARIANCE_NAMES:
        raise ValueError(f"--variance must be one of {', '.join(VARIANCE_NAMES)}, got {name!r}")
    if name == "analytic":
        return make_variance(name, moments=moments_of(run, run_dir, samples), eta=eta, first_step_clip=first_step_clip)
    if name in HEAD_KINDS:
        return make_variance(name, head=load_head(run_dir, name), eta=eta, first_step_clip=first_step_clip)
    return make_variance(name)  # small, large, learned (read from the model's variance head): nothing to build


def run_trajectory(run: LoadedRun, run_dir: str | Path, name: str, k: int, *, eta: float = 1.0,
                   samples: int = 100) -> torch.Tensor:
    """1-based indices of a K-step trajectory (even, quadratic, dp) over the run's training steps."""
    _discrete(run)
    moments = moments_of(run, run_dir, samples) if name == "dp" else None
    return make_trajectory(name, run.denoiser.schedule, k, moments=moments, eta=eta)


def _bin_width(run: LoadedRun) -> float | None:
    """The data's lattice spacing for image runs (the first-step clip), None for other data."""
    if len(run.info.data_shape) != 3:
        return None
    levels = lattice_levels(load_training_data(run.config)[0][:256], (17, 256))
    return None if levels is None else 2.0 / (levels - 1)


def sample_with_variance(run: LoadedRun, run_dir: str | Path, solver: str, variance: str | None, trajectory: str | None, k: int,
                         n: int, *, seed: int = 0, cond: Any = None, progress: bool = True,
                         denoiser: Any = None, constraints: Any = (), world: World | None = None,
                         **options: Any) -> Solution:
    """``n`` samples by DDPM or DDIM(eta) with ``variance`` on a K-step ``trajectory`` (K model calls), from
    ``denoiser`` (a guided wrapper of the run's; default the run's own), with the loop's ``constraints``.
    ``variance`` defaults to :func:`default_variance`, ``trajectory`` to even. Sharded over a ``world`` of
    several processes as ``pipeline.sample_sharded`` (rank 0 estimates and stores missing Analytic-DPM moments first)."""
    if solver not in ANCESTRAL:
        raise ValueError(f"--variance and --trajectory apply to the ancestral samplers ({', '.join(ANCESTRAL)}), got {solver!r}")
    eta = float(options.get("eta", 0.0 if solver == "ddim" else 1.0))
    world = world or World()
    if world.distributed and (variance == "analytic" or trajectory == "dp"):
        _discrete(run)  # refused on every rank, before any waits for rank 0
        if world.is_main:
            moments_of(run, run_dir)  # estimated once and stored; the other ranks read the file
        barrier(world)
    rule = run_variance(run, run_dir, variance or default_variance(run), eta=eta, first_step_clip=_bin_width(run))
    idx = run_trajectory(run, run_dir, trajectory or "even", k, eta=eta)
    grid = trajectory_grid(run.denoiser.schedule, idx)
    made = make_solver(solver, **{**options, "variance": rule})
    return sample_sharded(denoiser or run.denoiser, made, grid, run.info.data_shape, n, seed=seed, cond=cond,
                          progress=progress, world=world, constraints=constraints)


def train_run_head(run_dir: str | Path, kind: str, *, steps: int = 2000, batch: int = 256, lr: float = 1e-3,
                   seed: int = 0, progress: bool = True) -> Path:
    """Train an SN or NPR head on the run's frozen (EMA) model over its training data (a class-conditional
    run: each item with its own label, as ``moments_of``); stored in the run."""
    run = load_run(run_dir)
    _discrete(run)
    x, labels = load_training_data(run.config)
    for p in run.denoiser.parameters():
        p.requires_grad_(False)
    head = train_head(run.denoiser, x, kind, steps=steps, batch=batch, lr=lr, seed=seed,
                      cond=labels if run.config.data.labels else None, progress=progress)
    return save_head(run_dir, head)
