"""Few-step generation by training (issue 16), checked on the exact oracle."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.distill import ProgressiveLoss, SolverStep, stage_counts, teacher_times

from .conftest import all_schedules, smooth_mixture


@pytest.mark.parametrize("name", ["edm", "vp", "flow", "discrete_linear"])
def test_the_kth_progressive_target_equals_two_exact_teacher_steps(name: str) -> None:
    """Stage k (n = 8, 4, 2, 1 student steps): one student DDIM step with the target (x~, eps~) lands exactly
    where two DDIM steps of the exact teacher land, on every interval of the student's grid."""
    schedule = all_schedules()[name]
    oracle = smooth_mixture(schedule, dim=3)
    ddim = dk.make_solver("ddim")
    for n in stage_counts(16, 1):
        loss = ProgressiveLoss(oracle, n)
        student, teacher = (dk.make_grid("uniform_angle", schedule, m) for m in (n, 2 * n))
        i = torch.arange(n)
        z = schedule.add_noise(oracle.sample(n, seed=n), student.t[:-1], torch.randn(n, 3, dtype=torch.float64))
        x, eps, t = loss.target(z, i)
        torch.testing.assert_close(t, student.t[:-1])
        one = student.alpha[1:, None] * x + student.sigma[1:, None] * eps
        two = torch.cat([dk.sample(oracle, ddim, z[j : j + 1], grid=teacher.slice(2 * j, 2 * j + 2), progress=False).x
                         for j in range(n)])
        torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-9)


def test_progressive_stages_halve_on_a_nested_grid() -> None:
    assert stage_counts(64, 4) == [32, 16, 8, 4]
    schedule = dk.EDMSchedule()
    t, mid, nxt = teacher_times("uniform_angle", schedule, 4)
    torch.testing.assert_close(t, dk.make_grid("uniform_angle", schedule, 4).t[:-1])
    assert bool((t > mid).all() and (mid > nxt).all()) and float(nxt[-1]) == 0.0
    with pytest.raises(ValueError, match="grid rule 'karras' is not nested.*allowed: uniform_angle"):
        teacher_times("karras", schedule, 4)
    with pytest.raises(ValueError, match="must be 4 times a power of 2 above 4"):
        stage_counts(24, 4)


def test_a_teacher_step_refuses_a_stochastic_solver() -> None:
    oracle = smooth_mixture(dk.EDMSchedule())
    with pytest.raises(ValueError, match="deterministic fixed-step solver with per-sample times, got 'ddpm'"):
        SolverStep(oracle, "ddpm")
    with pytest.raises(ValueError, match="got 'unipc'"):
        SolverStep(oracle, "unipc")
