"""Progressive distillation (Salimans & Ho 2022): a student learns two deterministic teacher steps in one.

Stage with N student steps on a nested grid (``nested_grid``): for a student interval t -> t'' with the
teacher's midpoint t', z_t = alpha_t x + sigma_t eps, two teacher DDIM steps give z_t'', and the student's
x-target is the x0 whose one DDIM step from z_t lands on z_t'' (Alg. 2):

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

with eps~ = (z_t - alpha_t x~) / sigma_t. The student regresses on the pair (x~, eps~) at the same z_t,
which is the DSM loss (``losses.dsm_loss``) with data x~ and noise eps~, in the run's own
parameterization (x0, v, edm, ...), weighted by truncated SNR, max(SNR, 1) on the x0 error (sec. 4).
Stages halve N; each stage's student (its EMA) teaches the next (``distill_progressive``; each stage is a run
folder written by ``runs.train_student``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..denoiser import Cond, Denoiser, DenoiserLike
from ..losses.dsm import LossOutput, batch_normal, batch_rows, drop_labels, dsm_loss
from ..losses.weighting import Weighting, make_weighting
from ..schedules.base import NoiseSchedule
from ..stepping import Solver
from ..utils import append_dims
from ..pipeline import LoadedRun
from .nested_grid import teacher_times
from .runs import data_loader, label_dropout, student_config, student_of, train_student
from .teacher_step import SolverStep, alpha_sigma_to_zero


def progressive_target(schedule: NoiseSchedule, z_t: Tensor, t: Tensor, z_next: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """(x~, eps~): the data and noise estimate whose DDIM step from (z_t, t) reaches (z_next, t_next)
    (Salimans & Ho 2022, Alg. 2; t_next = 0 is the clean end, where x~ = z_next)."""
    a, s = (append_dims(v.to(z_t), z_t.ndim) for v in schedule.alpha_sigma(t))
    a2, s2 = (append_dims(v.to(z_t), z_t.ndim) for v in alpha_sigma_to_zero(schedule, t_next))
    ratio = s2 / s
    x = (z_next - ratio * z_t) / (a2 - ratio * a)
    return x, (z_t - a * x) / s


def stage_counts(start: int, to: int) -> list[int]:
    """The student step counts of the stages from a ``start``-step teacher down to ``to`` steps: start/2, ..., to."""
    if not (isinstance(to, int) and to >= 1):
        raise ValueError(f"--to must be a positive integer, got {to!r}")
    if not (isinstance(start, int) and start > to and math.log2(start / to).is_integer()):
        raise ValueError(f"progressive distillation halves the steps: the teacher's step count must be {to} times a "
                         f"power of 2 above {to} (e.g. {to * 64}), got {start!r}")
    out, n = [], start
    while n > to:
        n //= 2
        out.append(n)
    return out


@dataclass
class ProgressiveLoss:
    """The loss of one stage: the student (the trainer's denoiser) takes in one step of its ``n_student``-step
    grid what ``teacher`` takes in two (``solver``, deterministic, on the 2N-step grid of ``grid``)."""

    teacher: DenoiserLike
    n_student: int
    solver: Solver | str = "ddim"
    grid: str = "uniform_angle"
    weighting: str | Weighting = "truncated_snr"
    label_dropout: float = 0.0
    null_label: int | None = None
    _step: SolverStep = field(init=False, repr=False)
    _times: tuple[Tensor, Tensor, Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.weighting = make_weighting(self.weighting)
        self._step = SolverStep(self.teacher, self.solver)
        self._times = teacher_times(self.grid, self.teacher.schedule, self.n_student)

    def target(self, z_t: Tensor, i: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x~, eps~, t) for states z_t at the start of student intervals ``i`` (B,)."""
        t, t_mid, t_next = (v[i.cpu()] for v in self._times)
        z_next = self._step(self._step(z_t, t, t_mid, cond), t_mid, t_next, cond)
        x, eps = progressive_target(self.teacher.schedule, z_t, t, z_next, t_next)
        return x, eps, t

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Cond = None, generator: torch.Generator | None = None,
                 offset: int = 0, global_batch: int | None = None) -> LossOutput:
        """The loss of a batch; ``offset``/``global_batch``: these rows of a larger batch whose draws (dropout,
        interval, noise, in that order) are made whole, as ``DSMLoss`` (data-parallel ranks, micro-batches)."""
        device = generator.device if generator is not None else x0.device
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        cond = drop_labels(cond, self.label_dropout, self.null_label, generator, rows, n)
        i = torch.randint(0, self.n_student, (n,), generator=generator, device=device)[rows].cpu()
        noise = batch_normal(x0, n, rows, generator, device)
        t = self._times[0][i]
        z_t = self.teacher.schedule.add_noise(x0, t.to(x0.device), noise)
        x, eps, _ = self.target(z_t, i, cond)
        per_sample = dsm_loss(denoiser, x, t.to(x0.device), eps, self.weighting, cond)
        return LossOutput(per_sample.mean(), per_sample, t)


def distill_progressive(teacher: LoadedRun, out: str | Path, *, to: int, start: int = 64, steps: int = 500,
                        lr: float = 5e-4, grid: str = "uniform_angle", progress: bool = True) -> Path:
    """Halve the teacher's DDIM steps from ``start`` down to ``to``, ``steps`` optimiser steps per stage.

    Stage k trains a student initialised from its teacher (Salimans & Ho 2022, Alg. 2); its EMA network
    teaches stage k + 1. Intermediate students are run folders under ``out/stages/``; the last is ``out``,
    which samples with DDIM on ``to`` steps of ``grid``. Returns ``out``.
    """
    counts = stage_counts(start, to)
    out = Path(out)
    p, null = label_dropout(teacher)
    current: Denoiser = teacher.denoiser
    for n in counts:
        folder = out if n == to else out / "stages" / f"{2 * n}-to-{n}"
        cfg = student_config(teacher.config, name=f"{teacher.config.name}-progressive-{n}", steps=steps, solver="ddim",
                             nfe=n, grid=grid, lr=lr)
        loss = ProgressiveLoss(current, n, grid=grid, label_dropout=p, null_label=null)
        trainer = train_student(cfg, teacher.info, student_of(current, cfg, teacher.info), data_loader(cfg), loss, folder,
                                {"method": "progressive", "teacher_steps": 2 * n, "student_steps": n, "grid": grid},
                                progress=progress)
        current = trainer.ema_denoiser.eval()
    return out
