"""``diffusekit distill RUN --method progressive|consistency|consistency-training|reflow --to K``: the checks and
the dispatch behind the command (registered in ``cli``). Every input is checked before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..parameterization import consistency_name
from ..pipeline import LoadedRun, load_run
from .consistency import distill_consistency, train_consistency
from .progressive import distill_progressive, stage_counts
from .reflow import check_rectified, distill_reflow
from .teacher_step import SolverStep

METHODS = ("progressive", "consistency", "consistency-training", "reflow")
#: Options that only one method takes (command-line flag -> method).
METHOD_OPTIONS = {"start": ("--from", "progressive"), "solver": ("--solver", "consistency"),
                  "rounds": ("--rounds", "reflow"), "couplings": ("--couplings", "reflow"), "one_step": ("--one-step", "reflow")}
DEFAULT_STEPS = {"progressive": 500, "consistency": 1000, "consistency-training": 2000, "reflow": 1000}


def prepare_distill(run_dir: str | Path, method: str, out: str | Path | None, to: int,
                    **options: Any) -> tuple[LoadedRun, Path, Callable[[bool], Path]]:
    """(teacher run, output folder, action(progress) -> output folder) after checking every input; writes nothing."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; allowed: {', '.join(METHODS)}")
    for key, value in options.items():
        if key in METHOD_OPTIONS and value not in (None, False) and METHOD_OPTIONS[key][1] != method:
            flag, owner = METHOD_OPTIONS[key]
            raise ValueError(f"{flag} applies to --method {owner} only, not {method}")
    teacher = load_run(run_dir)
    target = Path(out) if out is not None else Path(f"{Path(run_dir)}-{method}-{to}")
    if target.resolve() == Path(run_dir).resolve():
        raise ValueError(f"--out {target} is the teacher's own run folder; allowed: a new folder")
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} is a file; allowed: a folder")
    steps = options.get("steps") or DEFAULT_STEPS[method]
    lr = options.get("lr")
    common: dict[str, Any] = {"steps": steps, "to": to} | ({"lr": lr} if lr is not None else {})
    if method == "progressive":
        start = options.get("start") or 64 * to
        stage_counts(start, to)
        return teacher, target, lambda progress: distill_progressive(teacher, target, start=start, progress=progress, **common)
    if method == "consistency":
        solver = options.get("solver") or "heun"
        SolverStep(teacher.denoiser, solver)
        consistency_name(teacher.config.diffusion.parameterization)
        _check_finite_start(teacher, method)
        return teacher, target, lambda progress: distill_consistency(teacher, target, solver=solver, progress=progress,
                                                                     **common)
    if method == "consistency-training":
        _check_finite_start(teacher, method)
        return teacher, target, lambda progress: train_consistency(teacher, target, progress=progress, **common)
    check_rectified(teacher)
    extra = {k: options[k] for k in ("rounds", "couplings") if options.get(k) is not None}
    batch = teacher.config.data.batch_size
    if extra.get("couplings", batch) < batch:
        raise ValueError(f"--couplings must be at least the run's data.batch_size ({batch}), got {extra['couplings']}")
    return teacher, target, lambda progress: distill_reflow(teacher, target, one_step=bool(options.get("one_step")),
                                                            progress=progress, **extra, **common)


def _check_finite_start(teacher: LoadedRun, method: str) -> None:
    """Consistency models use EDM's scaled coordinates x / alpha, so alpha must stay positive at t_max."""
    schedule = teacher.denoiser.schedule
    alpha, _ = schedule.alpha_sigma(torch.tensor(schedule.t_max, dtype=torch.float64))
    if float(alpha) <= 0:
        raise ValueError(f"--method {method} needs a schedule with alpha > 0 at t_max (not {teacher.config.diffusion.schedule}, "
                         "which has zero terminal SNR); allowed: edm, vp, ve, ... or --method reflow for flows")
