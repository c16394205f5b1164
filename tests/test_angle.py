"""The PF-ODE in the angle variable (schedules/angle.py): the maps between t and phi, and the velocity."""

from __future__ import annotations

import math

import pytest
import torch

from diffusekit.oracle import GaussianMixture
from diffusekit.schedules.angle import angle_at, angle_of, angle_velocity, frame_at, time_of_angle

from .conftest import all_schedules


@pytest.mark.parametrize("name", list(all_schedules()))
def test_angle_and_time_are_inverse_maps(name: str) -> None:
    schedule = all_schedules()[name]
    t = torch.linspace(schedule.t_min, schedule.t_max, 41, dtype=torch.float64)
    phi = torch.tensor([angle_at(schedule, float(v))[0] for v in t], dtype=torch.float64)
    torch.testing.assert_close(time_of_angle(schedule, phi), t, rtol=1e-9, atol=1e-12)
    r, c, s = frame_at(schedule, t)
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(r * c, alpha, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(r * s, sigma, rtol=1e-14, atol=1e-15)
    # angles at or beyond the schedule's ends map into [t_min, t_max] (cos(pi/2) = 6e-17 in floats)
    ends = time_of_angle(schedule, torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    assert float(ends[0]) == schedule.t_min and abs(float(ends[1]) - schedule.t_max) < 1e-12 * schedule.t_max


def test_angle_of_clean_data_and_pure_noise() -> None:
    assert angle_of(1.0, 0.0) == (0.0, 1.0)
    assert angle_of(0.0, 2.0) == (math.pi / 2, 2.0)


def test_angle_velocity_is_the_derivative_along_the_exact_solution() -> None:
    """dy/dphi = cos eps - sin x0, checked by finite differences of the oracle's reference solution."""
    schedule = all_schedules()["vp"]
    oracle = GaussianMixture(torch.tensor([[1.0, -0.5], [-1.0, 0.5]], dtype=torch.float64), 0.4, schedule)
    x_T = oracle.sample(3, seed=0, t=0.8)
    t0, dt = 0.5, 1e-4
    (phi_a, r_a), (phi_b, r_b) = angle_at(schedule, t0 - dt), angle_at(schedule, t0 + dt)
    y_a = oracle.ode_solution(x_T, 0.8, t0 - dt, rtol=1e-12, atol=1e-12) / r_a
    y_b = oracle.ode_solution(x_T, 0.8, t0 + dt, rtol=1e-12, atol=1e-12) / r_b
    x = oracle.ode_solution(x_T, 0.8, t0, rtol=1e-12, atol=1e-12)
    r, c, s = (float(v) for v in frame_at(schedule, torch.tensor(t0, dtype=torch.float64)))
    pred = oracle(x, t0)
    torch.testing.assert_close(angle_velocity(pred.x0, pred.eps, c, s), (y_b - y_a) / (phi_b - phi_a), rtol=1e-6, atol=1e-7)
