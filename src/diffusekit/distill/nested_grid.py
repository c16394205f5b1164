"""Nested step grids for progressive distillation: the student's N-step grid is every other point of
the teacher's 2N-step grid, so two teacher steps span one student step (Salimans & Ho 2022, Alg. 2).

``uniform_angle`` (uniform t of the cosine schedule, the paper's grid) is nested for any N; a rule
that is not (Karras, uniform log-SNR with a t_min end) is refused rather than silently misaligned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules.base import NoiseSchedule
from ..schedules.grids import make_grid
from ..utils import check_positive_int


def teacher_times(rule: str, schedule: NoiseSchedule, n_student: int) -> tuple[Tensor, Tensor, Tensor]:
    """(t, t_mid, t_next), each (n_student,) float64: student interval i runs from t[i] to t_next[i], and the
    teacher takes it in two steps through t_mid[i] (t_next = 0 is the clean end)."""
    check_positive_int("n_student", n_student)
    student = make_grid(rule, schedule, n_student)
    teacher = make_grid(rule, schedule, 2 * n_student)
    if not torch.allclose(teacher.t[::2], student.t, rtol=1e-9, atol=0.0):
        raise ValueError(f"grid rule {rule!r} is not nested (its {n_student}-step grid is not every other point of its "
                         f"{2 * n_student}-step grid); allowed: uniform_angle")
    return teacher.t[0:-1:2], teacher.t[1::2], teacher.t[2::2]
