"""Consistency models (Song et al. 2023) trained by distillation or from data alone (Song & Dhariwal 2023).

The consistency function f(x_t, t) maps every point of a PF-ODE trajectory to its clean end; it is the
``x0`` of a Denoiser with the boundary preconditioning ``ConsistencyParam`` (f(x, s_min) = x). With noise
levels t_1 < ... < t_N (Karras et al.'s rho = 7 spacing of s = sigma / alpha), n drawn per sample,
x_{n+1} = alpha_{n+1} x + sigma_{n+1} z and

    loss = lambda(t_n) d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^_n, t_n))                    (eq. 7 / 10)

- distillation (CD, Alg. 2): x^_n is one deterministic ODE-solver step of the teacher from x_{n+1}
  (``teacher_step.SolverStep``: Heun or any solver with per-sample times);
- training (CT, Alg. 3 with the improved techniques): x^_n = alpha_n x + sigma_n z with the same z; N follows
  the doubling curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)),
  n is drawn from the discretised lognormal p(n) ~ erf((log s_{n+1} - P_mean) / (sqrt 2 P_std))
  - erf((log s_n - P_mean) / (sqrt 2 P_std)), lambda = 1 / (s_{n+1} - s_n) and d is the pseudo-Huber
  distance sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(D) (Song & Dhariwal 2023, sec. 3).

theta- is an EMA of theta with decay ``mu`` (0 = the online network without gradient, as improved CT
recommends); the loss owns it as trainer state (``losses.StatefulLoss``): updated after each optimiser
step, saved in every checkpoint, restored on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Cond, Denoiser, DenoiserLike
from ..losses.dsm import LossOutput, batch_normal, batch_rows, drop_labels
from ..parameterization import ConsistencyParam, consistency_name
from ..pipeline import LoadedRun, build_network
from ..schedules.base import NoiseSchedule
from ..train.ema import EMA
from .runs import data_loader, label_dropout, student_config, student_of, train_student
from .teacher_step import SolverStep

TeacherStep = Callable[[Tensor, Tensor, Tensor, Cond], Tensor]
"""(x, t0, t1, cond) -> x at t1 < t0: one deterministic ODE step (``SolverStep``, or an exact flow in tests)."""

DISTANCES = ("l2", "pseudo_huber")
TIME_DRAWS = ("uniform", "lognormal")
S_MAX_CAP = 80.0  # EDM's sigma_max, used where a schedule's sigma / alpha is infinite at t_max (flow)


def consistency_times(schedule: NoiseSchedule, n: int, sigma_min: float, rho: float = 7.0) -> Tensor:
    """t_1 < ... < t_n (float64): s = sigma / alpha spaced as Karras et al. 2022, eq. 5, from ``sigma_min`` to
    s(t_max), where consistency sampling starts (80 where s(t_max) is infinite), the discretisation of Song et al.
    2023, App. C; times clamped to the schedule's range."""
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"a consistency discretisation needs n >= 2 noise levels, got {n!r}")
    a, s = schedule.alpha_sigma(torch.tensor(schedule.t_max, dtype=torch.float64))
    s_max = float(s / a) if float(a) > 0 else S_MAX_CAP  # the top level is where sampling starts (t_max)
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), s_max ** (1 / rho)
    levels = (lo + u * (hi - lo)) ** rho
    t = schedule.t_of_log_snr(-torch.log(levels)).clamp(schedule.t_min, schedule.t_max)
    return t


def curriculum(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of improved consistency training (Song & Dhariwal 2023, eq. 5): the number of noise levels at step k."""
    k_prime = max(1, math.floor(total_steps / (math.floor(math.log2(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_index_probs(levels: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """p(n), n = 0..N-2, of the discretised lognormal over intervals [s_n, s_{n+1}] (Song & Dhariwal 2023, sec. 3.5)."""
    c = torch.erf((levels.log() - p_mean) / (math.sqrt(2) * p_std))
    p = c[1:] - c[:-1]
    return p / p.sum()


@dataclass
class ConsistencyLoss:
    """Consistency distillation (``teacher`` given) or consistency training (``teacher=None``).

    ``target``: the network whose EMA (decay ``mu``) is theta- (None with mu = 0: the online network without
    gradient). ``n``: levels for distillation (Song et al. 2023 use 18); training follows the curriculum up
    to ``total_steps``. ``distance``: l2 (mean square) or pseudo_huber; ``time``: uniform or lognormal
    (index draws); ``ict_weighting``: lambda = 1 / (s_{n+1} - s_n), else 1.
    """

    schedule: NoiseSchedule
    teacher: TeacherStep | None = None
    target: torch.nn.Module | None = None
    mu: float = 0.95
    n: int = 18
    total_steps: int = 1000
    distance: str = "l2"
    time: str = "uniform"
    ict_weighting: bool = False
    sigma_min: float = 0.002
    label_dropout: float = 0.0
    null_label: int | None = None
    step: int = 0
    _ema: EMA | None = field(init=False, repr=False, default=None)
    _cache: tuple[int, Tensor, Tensor] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown consistency distance {self.distance!r}; allowed: {', '.join(DISTANCES)}")
        if self.time not in TIME_DRAWS:
            raise ValueError(f"unknown consistency time draw {self.time!r}; allowed: {', '.join(TIME_DRAWS)}")
        if not 0 <= self.mu < 1:
            raise ValueError(f"mu (the target network's EMA decay) must be in [0, 1), got {self.mu!r}")
        if self.mu > 0:
            if self.target is None:
                raise ValueError("mu > 0 needs the target network to average (target=student.net)")
            self._ema = EMA(self.target, half_life=EMA.half_life_of(self.mu))

    def levels(self) -> Tensor:
        """The times t_1 < ... < t_N in use at the current step."""
        return self._levels()[0]

    def _levels(self) -> tuple[Tensor, Tensor]:
        """(t_1 < ... < t_N, s = sigma / alpha at them), recomputed only when N changes (the curriculum)."""
        n = self.n if self.teacher is not None else curriculum(self.step, self.total_steps)
        if self._cache is None or self._cache[0] != n:
            t = consistency_times(self.schedule, n, self.sigma_min)
            a, s = self.schedule.alpha_sigma(t)
            self._cache = (n, t, s / a)
        return self._cache[1], self._cache[2]

    # ---- StatefulLoss: the EMA target and the step --------------------------------------------
    def after_step(self, net: torch.nn.Module, step: int) -> None:
        self.step = step
        if self._ema is not None:
            self._ema.update(net, step)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "target": None if self._ema is None else self._ema.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if (state["target"] is None) != (self._ema is None):
            raise ValueError("the checkpoint's consistency target does not match this loss's mu "
                             f"({self.mu}); allowed: resume with the mu it was trained with")
        if self._ema is not None:
            self._ema.module.load_state_dict(state["target"])

    # ---- the loss -------------------------------------------------------------------------------
    def target_model(self, denoiser: DenoiserLike) -> DenoiserLike:
        """f_theta-: the EMA target network under the student's schedule and parameterization, or the student."""
        if self._ema is None:
            return denoiser
        return Denoiser(self._ema.module, denoiser.schedule, denoiser.parameterization)  # type: ignore[attr-defined]

    def __call__(self, denoiser: DenoiserLike, x0: Tensor, cond: Cond = None, generator: torch.Generator | None = None,
                 offset: int = 0, global_batch: int | None = None) -> LossOutput:
        """The loss of a batch; ``offset``/``global_batch``: these rows of a larger batch whose draws (dropout,
        level index, noise, in that order) are made whole, as ``DSMLoss`` (data-parallel ranks, micro-batches)."""
        device = generator.device if generator is not None else x0.device
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        cond = drop_labels(cond, self.label_dropout, self.null_label, generator, rows, n)
        t, s = self._levels()
        if self.time == "uniform":
            idx = torch.randint(0, t.numel() - 1, (n,), generator=generator, device=device)[rows].cpu()
        else:
            probs = lognormal_index_probs(s).to(device)
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)[rows].cpu()
        t_lo, t_hi = t[idx], t[idx + 1]
        z = batch_normal(x0, n, rows, generator, device)
        x_hi = self.schedule.add_noise(x0, t_hi.to(x0.device), z)
        with torch.no_grad():
            if self.teacher is not None:
                x_lo = self.teacher(x_hi, t_hi, t_lo, cond)
            else:
                x_lo = self.schedule.add_noise(x0, t_lo.to(x0.device), z)
            goal = self.target_model(denoiser)(x_lo, t_lo, cond).x0
        online = denoiser(x_hi, t_hi, cond).x0
        diff = (online - goal).flatten(1)
        if self.distance == "l2":
            per_sample = diff.pow(2).mean(1)
        else:
            c = 0.00054 * math.sqrt(diff.shape[1])
            per_sample = (diff.pow(2).sum(1) + c**2).sqrt() - c
        if self.ict_weighting:
            per_sample = per_sample / (s[idx + 1] - s[idx]).to(per_sample)
        return LossOutput(per_sample.mean(), per_sample, t_hi)


def distill_consistency(teacher: LoadedRun, out: str | Path, *, to: int = 1, steps: int = 500, solver: str = "heun",
                        n: int = 18, mu: float = 0.95, lr: float = 2e-4, progress: bool = True) -> Path:
    """Consistency distillation of a run (Song et al. 2023, Alg. 2) into the run folder ``out``: a student
    initialised with the teacher's weights, the boundary preconditioning, one ``solver`` step of the teacher
    as the ODE step; it samples with the consistency solver on ``to`` steps. The boundary preconditioning wraps
    the teacher's own parameterization (``consistency_<teacher's>``), so the student starts as the teacher's
    denoiser."""
    p, null = label_dropout(teacher)
    param = consistency_name(teacher.config.diffusion.parameterization)
    cfg = student_config(teacher.config, name=f"{teacher.config.name}-consistency", steps=steps, solver="consistency",
                         nfe=to, grid="uniform_angle", lr=lr, parameterization=param)
    student = student_of(teacher.denoiser, cfg, teacher.info, param)
    loss = ConsistencyLoss(student.schedule, SolverStep(teacher.denoiser, solver), student.net, mu=mu, n=n,
                           label_dropout=p, null_label=null)
    train_student(cfg, teacher.info, student, data_loader(cfg), loss, out,
                  {"method": "consistency", "teacher_solver": solver, "n": n, "mu": mu}, progress=progress)
    return Path(out)


def train_consistency(run: LoadedRun, out: str | Path, *, to: int = 1, steps: int = 1000, mu: float = 0.0,
                      lr: float = 2e-4, progress: bool = True) -> Path:
    """Consistency training from data alone with the improved techniques (Song & Dhariwal 2023): a fresh
    network of ``run``'s architecture on its data, curriculum over ``steps``, lognormal levels, pseudo-Huber,
    lambda = 1 / (s_{n+1} - s_n); samples with the consistency solver on ``to`` steps."""
    p, null = label_dropout(run)
    cfg = student_config(run.config, name=f"{run.config.name}-consistency-training", steps=steps, solver="consistency",
                         nfe=to, grid="uniform_angle", lr=lr, parameterization="consistency")
    torch.manual_seed(cfg.seed)
    student = Denoiser(build_network(cfg, run.info), run.denoiser.schedule, ConsistencyParam())
    loss = ConsistencyLoss(student.schedule, None, student.net, mu=mu, total_steps=steps, distance="pseudo_huber",
                           time="lognormal", ict_weighting=True, label_dropout=p, null_label=null)
    train_student(cfg, run.info, student, data_loader(cfg), loss, out,
                  {"method": "consistency-training", "mu": mu, "curriculum": [10, 1280]}, progress=progress)
    return Path(out)
