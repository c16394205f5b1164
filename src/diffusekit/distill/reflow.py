"""Rectified flow and reflow (Liu, Gong & Liu 2022, "Flow straight and fast").

A rectified flow is a velocity model on the linear path x_t = (1 - t) x + t z (the ``flow`` schedule, the
``velocity`` parameterization; the ``rectified`` preset). Reflow (their Alg. 1) draws noise z, follows
the model's ODE to x = ODE(z), and trains a new model on the couplings (x, z) instead of independent
pairs: the DSM loss with the coupled z as its noise. Each round makes the flow straighter, so few Euler
steps suffice; optionally the last flow is distilled to one step (sec. 2.3: t = 1 only, so one Euler step
x = z - v(z, 1) reproduces the coupling).

Couplings are written in shards (``shard-00000.safetensors``, each with its own per-sample noise seeds),
so an interrupted generation resumes with the first missing shard and gives the same couplings.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..denoiser import Cond, Denoiser, DenoiserLike
from ..files import atomic_write, atomic_write_text
from ..losses.dsm import LossOutput, batch_rows, drop_labels, dsm_loss
from ..losses.time_sampling import TimeSampler, make_time_sampler
from ..losses.weighting import Weighting, make_weighting
from ..noise import NoiseSource
from ..pipeline import LoadedRun
from ..progress import progress_bar
from ..sample import sample, steps_for_nfe
from ..schedules.continuous import FlowSchedule
from ..schedules.grids import make_grid
from ..solvers import DEFAULT_SOLVER, make_solver
from ..utils import check_positive_int
from .runs import data_loader, label_dropout, student_config, student_of, train_student


def generate_couplings(denoiser: DenoiserLike, folder: str | Path, n: int, shape: Sequence[int], *,
                       solver: str = DEFAULT_SOLVER, nfe: int = 20, shard_size: int = 1000, seed: int = 0,
                       num_classes: int | None = None, progress: bool = True) -> Path:
    """Write n couplings (noise z, ODE(z)) of ``denoiser`` into ``folder`` in shards; existing shards are kept
    (resume). Class-conditional models get labels i mod ``num_classes``. Refuses a folder made with other settings."""
    check_positive_int("n", n)
    check_positive_int("shard_size", shard_size)
    folder = Path(folder)
    settings = {"n": n, "shape": list(shape), "solver": solver, "nfe": nfe, "shard_size": shard_size, "seed": seed,
                "num_classes": num_classes}
    record = folder / "couplings.json"
    spent = 0.0
    if record.is_file():
        old = json.loads(record.read_text())
        spent = old.pop("cpu_seconds", 0.0)
        if old != settings:
            raise ValueError(f"{folder} holds couplings made with {json.dumps(old)}; allowed: the same settings, "
                             "or another folder")
    folder.mkdir(parents=True, exist_ok=True)
    run_solver = make_solver(solver)
    grid = make_grid(run_solver.default_grid, denoiser.schedule, steps_for_nfe(run_solver, denoiser.schedule, nfe))
    shards = math.ceil(n / shard_size)
    bar = progress_bar(total=shards, desc="couplings", unit="shard", enabled=progress)
    for k in range(shards):
        path = folder / f"shard-{k:05d}.safetensors"
        if not path.is_file():
            start = time.process_time()
            ids = torch.arange(k * shard_size, min(n, (k + 1) * shard_size), dtype=torch.int64)
            z = NoiseSource.from_seed(ids + seed * n, ids.numel()).normal(0, tuple(shape))
            cond = ids % num_classes if num_classes else None
            x = sample(denoiser, run_solver, denoiser.schedule.prior_sample(z), grid=grid, cond=cond, progress=False).x
            tensors = {"noise": z.contiguous(), "data": x.contiguous()} | ({"labels": cond} if cond is not None else {})
            atomic_write(path, lambda tmp: save_file(tensors, tmp))
            spent += time.process_time() - start
            atomic_write_text(record, json.dumps(settings | {"cpu_seconds": round(spent, 2)}) + "\n")
        bar.update()
    bar.close()
    return folder


def load_couplings(folder: str | Path) -> tuple[Tensor, Tensor | None]:
    """(pairs (M, 2, ...) with data at [:, 0] and noise at [:, 1], labels or None) from a couplings folder."""
    paths = sorted(Path(folder).glob("shard-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no couplings in {folder} (shard-*.safetensors)")
    shards = [load_file(str(p)) for p in paths]
    pairs = torch.cat([torch.stack([s["data"], s["noise"]], 1) for s in shards])
    labels = torch.cat([s["labels"] for s in shards]) if "labels" in shards[0] else None
    return pairs, labels


@dataclass(frozen=True)
class ReflowLoss:
    """DSM on coupled pairs: batches are (B, 2, ...) with data at [:, 0] and its coupled noise at [:, 1].
    ``one_step``: train at t = t_max only (one-step distillation of a reflowed model)."""

    weighting: str | Weighting = "velocity"
    time: str | TimeSampler = "uniform"
    one_step: bool = False
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weighting", make_weighting(self.weighting))
        object.__setattr__(self, "time", make_time_sampler(self.time))

    def __call__(self, denoiser: Denoiser, pairs: Tensor, cond: Cond = None, generator: torch.Generator | None = None,
                 offset: int = 0, global_batch: int | None = None) -> LossOutput:
        """The loss of a batch; ``offset``/``global_batch``: these rows of a larger batch whose draws (t, dropout)
        are made whole, as ``DSMLoss`` (data-parallel ranks, micro-batches)."""
        x0, z = pairs[:, 0], pairs[:, 1]
        schedule = denoiser.schedule
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        if self.one_step:
            t = torch.full((x0.shape[0],), schedule.t_max, dtype=torch.float64, device=x0.device)
        else:
            t = self.time(n, schedule, generator, x0.device, torch.float64)[rows]  # type: ignore[operator]
        cond = drop_labels(cond, self.label_dropout, self.null_label, generator, rows, n)
        per_sample = dsm_loss(denoiser, x0, t, z, self.weighting, cond)
        return LossOutput(per_sample.mean(), per_sample, t)


def straightness(trajectory: Tensor, times: Tensor) -> Tensor:
    """Per-sample straightness error of ODE trajectories (N + 1, B, ...) at decreasing ``times`` (N + 1,):
    int ||(x_end - x_start) / (t_end - t_start) - dx/dt||^2 dt / (|t_end - t_start| D) with dx/dt the
    piecewise-constant slope between saved points (Liu et al. 2022, eq. 7 as a discrete mean); 0 iff straight."""
    dt = (times[1:] - times[:-1]).to(trajectory)
    x = trajectory.flatten(2)
    slope = (x[1:] - x[:-1]) / dt[:, None, None]
    chord = (x[-1] - x[0]) / (times[-1] - times[0]).to(trajectory)
    err = (slope - chord).pow(2).mean(2)  # (N, B)
    return (err * dt.abs()[:, None]).sum(0) / (times[-1] - times[0]).abs().to(trajectory)


def trajectory_straightness(denoiser: DenoiserLike, x_T: Tensor, steps: int = 64, cond: Cond = None) -> Tensor:
    """Per-sample straightness error of ``denoiser``'s Euler trajectories from x_T on ``steps`` uniform-t steps."""
    grid = make_grid("uniform_t", denoiser.schedule, steps)
    sol = sample(denoiser, make_solver("euler"), x_T, grid=grid, cond=cond, save_trajectory=True, progress=False)
    return straightness(sol.trajectory, grid.t)  # type: ignore[arg-type]


def check_rectified(run: LoadedRun) -> None:
    """Refuse a run that is not a rectified flow (reflow retrains on the linear path)."""
    if not isinstance(run.denoiser.schedule, FlowSchedule) or run.config.diffusion.parameterization != "velocity":
        raise ValueError(f"reflow needs a rectified-flow run (diffusion.schedule = flow, parameterization = velocity), got "
                         f"{run.config.diffusion.schedule} / {run.config.diffusion.parameterization}; allowed: a run "
                         "trained from the rectified preset")


def distill_reflow(teacher: LoadedRun, out: str | Path, *, rounds: int = 1, to: int = 1, couplings: int = 4000,
                   steps: int = 1000, lr: float = 2e-4, nfe: int = 20, shard_size: int = 1000, one_step: bool = False,
                   progress: bool = True) -> Path:
    """``rounds`` reflows of a rectified-flow run, each on ``couplings`` fresh couplings of the previous flow
    (``nfe`` calls of the default sampler), the student initialised from it; with ``one_step`` the last flow
    is then distilled to one step. Intermediate flows live under ``out/stages/``; ``out`` samples with Euler
    on ``to`` uniform-t steps."""
    check_rectified(teacher)
    check_positive_int("rounds", rounds)
    out = Path(out)
    p, null = label_dropout(teacher)
    num_classes = teacher.info.num_classes if teacher.config.data.labels else None
    current: Denoiser = teacher.denoiser
    stages: list[tuple[str, bool]] = [(f"reflow-{r}", False) for r in range(1, rounds + 1)]
    if one_step:
        stages.append(("one-step", True))
    for k, (label, distill) in enumerate(stages):
        last = k == len(stages) - 1
        folder = out if last else out / "stages" / label
        pairs_dir = out / "stages" / f"couplings-{k + 1}"  # fresh couplings of the current flow
        generate_couplings(current, pairs_dir, couplings, teacher.info.data_shape, nfe=nfe, shard_size=shard_size,
                           seed=k, num_classes=num_classes, progress=progress)
        pairs, labels = load_couplings(pairs_dir)
        cfg = student_config(teacher.config, name=f"{teacher.config.name}-{label}", steps=steps, solver="euler",
                             nfe=1 if distill else to, grid="uniform_t", lr=lr)
        trainer = train_student(cfg, teacher.info, student_of(current, cfg, teacher.info), data_loader(cfg, pairs, labels),
                                ReflowLoss(one_step=distill, label_dropout=p, null_label=null), folder,
                                {"method": "reflow", "stage": label, "couplings": couplings, "coupling_nfe": nfe},
                                progress=progress)
        current = trainer.ema_denoiser.eval()
    return out
