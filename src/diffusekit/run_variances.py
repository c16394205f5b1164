"""Reverse variances and trajectories of a run folder: what `diffusekit sample --variance/--trajectory`,
`eval --vlb` and `train RUN --head` do.

A run folder keeps Analytic-DPM's noise moments (``analytic_moments.json``, estimated on first use
over the run's training data) and the SN/NPR heads (``head_sn.safetensors``, ``head_npr.safetensors``,
trained by ``train RUN --head``) next to its checkpoints, so each is made once and reused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_write
from .likelihood.analytic import NoiseMoments, run_moments
from .likelihood.trajectory import make_trajectory, trajectory_grid, trajectory_times
from .likelihood.vlb import LN2, discrete_vlb
from .pipeline import LoadedRun, load_run, load_training_data
from .sample import Solution, sample
from .schedules.discrete import DiscreteSchedule
from .solvers import make_solver
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
    x, labels = load_training_data(run.config)
    return run_moments(run_dir, run.denoiser, x, samples=samples, seed=seed, cond=labels if run.config.data.labels else None)


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
    from .evaluate import real_data

    levels = real_data(run, 256).levels
    return None if levels is None else 2.0 / (levels - 1)


def sample_with_variance(run: LoadedRun, run_dir: str | Path, solver: str, variance: str, trajectory: str, k: int,
                         n: int, *, seed: int = 0, cond: Any = None, progress: bool = True,
                         denoiser: Any = None, constraints: Any = (), **options: Any) -> Solution:
    """``n`` samples by DDPM or DDIM(eta) with ``variance`` on a K-step ``trajectory`` (K model calls), from
    ``denoiser`` (a guided wrapper of the run's; default the run's own), with the loop's ``constraints``."""
    if solver not in ANCESTRAL:
        raise ValueError(f"--variance and --trajectory apply to the ancestral samplers ({', '.join(ANCESTRAL)}), got {solver!r}")
    eta = float(options.get("eta", 0.0 if solver == "ddim" else 1.0))
    rule = run_variance(run, run_dir, variance, eta=eta, first_step_clip=_bin_width(run))
    idx = run_trajectory(run, run_dir, trajectory, k, eta=eta)
    grid = trajectory_grid(run.denoiser.schedule, idx)
    made = make_solver(solver, **{**options, "variance": rule})
    return sample(denoiser or run.denoiser, made, shape=run.info.data_shape, batch=n, grid=grid, seed=seed, cond=cond,
                  progress=progress, constraints=constraints)


def vlb_with_variance(run: LoadedRun, run_dir: str | Path, variance: str, trajectory: str, k: int, n: int, *,
                      seed: int = 0, batch: int = 64, eta: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """The bound (Ho et al. 2020, eq. 5) of the sampler with ``variance`` on a K-step ``trajectory``, over
    ``n`` real items: bits/dim (lattice data, discretised decoder) or nats/dim, with its standard error."""
    from .evaluate import real_data
    from .progress import progress_bar

    rule = run_variance(run, run_dir, variance, eta=eta)
    idx = run_trajectory(run, run_dir, trajectory, k, eta=eta)
    times = trajectory_times(run.denoiser.schedule, idx)
    data = real_data(run, n, seed=seed)
    lattice = {"decoder": "gaussian"} if data.levels is None else {"decoder": "discretized", "n_bits": math.log2(data.levels)}
    d = data.x[0].numel()
    per = []
    for j in progress_bar(range(0, data.x.shape[0], batch), desc="vlb", enabled=progress):
        xb = data.x[j : j + batch]
        labels = None if data.labels is None or not run.config.data.labels else data.labels[j : j + batch]
        per.append(discrete_vlb(run.denoiser, xb, cond=labels, times=times, variance=rule, seed=seed + j, **lattice).total / d)
    nats = torch.cat(per)
    values = nats / LN2 if data.levels is not None else nats
    return {"variance": variance, "trajectory": trajectory, "K": k, "eta": eta, "n": int(values.numel()),
            "bound": float(values.mean()), "std_error": float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else None,
            "unit": "bits/dim" if data.levels is not None else "nats/dim", "data": f"{data.dataset} {data.source}",
            "steps": idx.tolist()}


def train_run_head(run_dir: str | Path, kind: str, *, steps: int = 2000, batch: int = 256, lr: float = 1e-3,
                   seed: int = 0, progress: bool = True) -> Path:
    """Train an SN or NPR head on the run's frozen (EMA) model over its training data; stored in the run."""
    run = load_run(run_dir)
    _discrete(run)
    if run.config.data.labels:
        raise ValueError("heads for class-conditional runs are not supported; allowed: an unconditional run")
    x, _ = load_training_data(run.config)
    for p in run.denoiser.parameters():
        p.requires_grad_(False)
    head = train_head(run.denoiser, x, kind, steps=steps, batch=batch, lr=lr, seed=seed, progress=progress)
    return save_head(run_dir, head)


def vlb_command(run_dir: str, variance: str, trajectory: str, k: int | None, n: int, seed: int, batch: int,
                out: str | None, progress: bool = True) -> str:
    """The body of `diffusekit eval RUN --vlb`: write the bound as JSON (default RUN_DIR/vlb.json), return a line."""
    from .files import atomic_write_text

    path = Path(out or Path(run_dir) / "vlb.json")
    if path.suffix.lower() != ".json" or path.is_dir():
        raise ValueError(f"--out {path}: allowed a file name ending in .json")
    run = load_run(run_dir)
    steps = k or run.config.sampling.nfe
    result = vlb_with_variance(run, run_dir, variance, trajectory, steps, n, seed=seed, batch=batch, progress=progress)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    se = f" +- {result['std_error']:.4f}" if result["std_error"] is not None else ""
    return (f"bound {result['bound']:.4f}{se} {result['unit']} ({variance} variance, {trajectory} trajectory, "
            f"K = {steps}, {result['n']} items of {result['data']}) -> {path}")
