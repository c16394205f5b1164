"""``gaussian_pc``, its Gaussian clean end and the ``gaussian_lambda`` grid, against the exact oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.sample import Step
from diffusekit.schedules.grids import gaussian_lam_end
from diffusekit.solvers.exponential import Node
from diffusekit.solvers.gaussian_end import gaussian_end
from diffusekit.tuned import GAUSSIAN_POWER, GAUSSIAN_TABLE
from diffusekit.solvers.gaussian_pc import GaussianPC, c_in_weights
from diffusekit.solvers.unipc import UniPC
from diffusekit.oracle import GaussianMixture

from .conftest import all_schedules
from .test_grids import sharp, spread


def gaussian(schedule: dk.NoiseSchedule, std: float, dim: int = 6) -> GaussianMixture:
    """One isotropic Gaussian N(mu, std^2 I)."""
    mu = torch.linspace(-0.8, 0.9, dim, dtype=torch.float64)[None]
    return GaussianMixture(mu, [std], schedule)


def evaluation(oracle: GaussianMixture, x: torch.Tensor, t: float) -> Node:
    pred = oracle(x, t)
    return Node.of(pred, float(oracle.schedule.log_snr(torch.tensor(t, dtype=torch.float64))))


def step_to_zero(schedule: dk.NoiseSchedule, t0: float) -> Step:
    a, s = (float(v) for v in schedule.alpha_sigma(torch.tensor(t0, dtype=torch.float64)))
    return Step(0, t0, 0.0, a, s, 1.0, 0.0, 1)


@pytest.mark.parametrize("name", ["discrete_linear", "vp", "edm", "flow", "ve"])
def test_gaussian_end_is_exact_for_an_isotropic_gaussian(name: str) -> None:
    """Two evaluations anywhere (not on one trajectory) identify N(mu, s^2 I); the step to sigma = 0
    is then the exact ODE solution, where the x0 jump and the rho-polynomial end are not."""
    schedule = all_schedules()[name]
    oracle = gaussian(schedule, std=0.3)
    t1, t0 = 0.5 * schedule.t_max, 0.2 * schedule.t_max
    x1 = oracle.sample(5, seed=1, t=t1)
    x0 = oracle.sample(5, seed=2, t=t0)
    hist = (evaluation(oracle, x0, t0), evaluation(oracle, x1, t1))
    got = gaussian_end(step_to_zero(schedule, t0), hist)
    want = oracle.ode_solution(x0, t0)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)  # float32 times reach the oracle
    assert (hist[0].x0 - want).abs().max() > 1e-3  # the x0 jump is not exact here


def test_gaussian_end_is_bounded_and_reduces_to_the_jump() -> None:
    """Any evaluations: the result is D0 + w eps0 with 0 <= w <= rho0 / 2, i.e. between the x0
    jump and (y0 + D0) / 2; with one evaluation it is the jump."""
    schedule = dk.VPSchedule()
    step = step_to_zero(schedule, 0.3)
    rho0 = step.sigma0 / step.alpha0
    g = torch.Generator().manual_seed(0)
    newest = Node(math.log(1 / rho0), torch.randn(50, 3, 4, generator=g), torch.randn(50, 3, 4, generator=g))
    older = Node(newest.lam - 1.0, torch.randn(50, 3, 4, generator=g), torch.randn(50, 3, 4, generator=g))
    out = gaussian_end(step, (newest, older))
    w = ((out - newest.x0) / newest.eps).flatten(1)
    assert torch.allclose(w, w[:, :1].expand_as(w), atol=1e-5)  # one weight per sample
    assert bool((w >= -1e-6).all() and (w <= rho0 / 2 + 1e-6).all())
    assert bool((w > 1e-3).any() and (w < 1e-9).any())  # both sides of the clamp occur
    torch.testing.assert_close(gaussian_end(step, (newest,)), newest.x0)


def test_c_in_weights_integrate_polynomials_in_c_in() -> None:
    sigma_data = 0.7
    lams, lam0, lam1 = [-1.0, -2.0, -3.5], -1.0, 0.4

    def v(lam: float) -> float:
        u = math.exp(lam)
        return u / math.sqrt(1 + (sigma_data * u) ** 2)

    # int p(v(u)) du for p(v) = 1, v, v^2 by fine trapezoid quadrature in lambda
    lam_q = np.linspace(lam0, lam1, 200001)
    u_q = np.exp(lam_q)
    v_q = u_q / np.sqrt(1 + (sigma_data * u_q) ** 2)
    beta = c_in_weights(lams, lam0, lam1, sigma_data)
    for k in range(3):
        want = np.trapezoid(v_q**k * u_q, lam_q)
        got = sum(b * v(lam) ** k for b, lam in zip(beta, lams))
        assert got == pytest.approx(want, rel=1e-8)


@pytest.mark.parametrize("name", ["discrete_linear", "edm", "flow"])
def test_one_long_step_is_exact_for_gaussian_data_at_sigma_data(name: str) -> None:
    """D is linear in c_in along a trajectory of N(m, sigma_data^2 I) data: two exact evaluations
    integrate any step exactly (here lambda -4 -> 1.5); UniPC's lambda-polynomial does not."""
    schedule = all_schedules()[name]
    sigma_data = 0.5
    oracle = gaussian(schedule, std=sigma_data)
    lam = torch.tensor([-4.0, -3.0, 1.5], dtype=torch.float64)
    t_a, t_b, t_c = (float(v) for v in schedule.t_of_log_snr(lam))
    x_a = oracle.sample(4, seed=3, t=t_a)
    x_b = oracle.ode_solution(x_a, t_a, t_b)
    want = oracle.ode_solution(x_b, t_b, t_c)
    grid = dk.Grid.from_times(schedule, torch.tensor([t_a, t_b, t_c], dtype=torch.float64), to_zero=False)
    exact_first = _StartExactly(x_b, GaussianPC(order=3, corrector=False, sigma_data=sigma_data))
    got = dk.sample(oracle, exact_first, x_a, grid=grid, progress=False, dtype=torch.float64).x
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)  # float32 times reach the oracle
    lam_poly = dk.sample(oracle, _StartExactly(x_b, UniPC(order=2, corrector=False)), x_a, grid=grid, progress=False, dtype=torch.float64).x
    assert (lam_poly - want).abs().max() > 1e-3


class _StartExactly(dk.Solver):
    """Runs ``inner`` but replaces the result of the first step by the exact ``x_next``."""

    def __init__(self, x_next: torch.Tensor, inner: dk.Solver) -> None:
        self.x_next, self.inner = x_next, inner

    def init_state(self, grid: dk.Grid, schedule: dk.NoiseSchedule):  # type: ignore[no-untyped-def]
        return self.inner.init_state(grid, schedule)

    def step(self, ctx, x, step, state):  # type: ignore[no-untyped-def]
        x_next, state = self.inner.step(ctx, x, step, state)
        return (self.x_next if step.i == 0 else x_next), state


def test_gaussian_lambda_grid() -> None:
    s = dk.DiscreteSchedule("linear", 1000)
    g = dk.make_grid("gaussian_lambda", s, 8, power=GAUSSIAN_POWER)
    lam = g.lam[:-1]
    assert g.ends_at_zero and math.isinf(float(g.lam[-1]))
    assert float(lam[-1]) == pytest.approx(gaussian_lam_end(8), abs=1e-9)
    u = torch.linspace(0, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(lam, lam[0] + (lam[-1] - lam[0]) * u**GAUSSIAN_POWER, rtol=1e-9, atol=1e-9)
    # more steps stop later: the grid reaches t_end, so the sampler converges for any data
    assert gaussian_lam_end(20) > gaussian_lam_end(10) and gaussian_lam_end(200) > float(s.log_snr(torch.tensor(s.t_min)))
    # a schedule ending below lam_end stops at its own end; zero terminal SNR keeps t_max
    low = dk.make_grid("gaussian_lambda", s, 6, lam_end=50.0)
    assert float(low.t[-2]) == pytest.approx(s.t_min)
    z = dk.make_grid("gaussian_lambda", dk.DiscreteSchedule("linear", zero_terminal_snr=True), 6)
    assert math.isinf(float(z.lam[0])) and bool((z.lam[1:] > z.lam[:-1]).all())
    with pytest.raises(ValueError, match="power must be a positive finite number, got -1"):
        dk.make_grid("gaussian_lambda", s, 6, power=-1)
    torch.testing.assert_close(dk.make_grid("gaussian_lambda", s, 6, lam_end=-9.0).t, dk.make_grid("gaussian_lambda", s, 6, lam_end=99.0).t)


@pytest.mark.parametrize("n", sorted(GAUSSIAN_TABLE))
def test_gaussian_lambda_uses_the_fitted_rows(n: int) -> None:
    s = dk.DiscreteSchedule("linear", 1000)
    g = dk.make_grid("gaussian_lambda", s, n)
    assert float(g.t[0]) == s.t_max and g.ends_at_zero
    torch.testing.assert_close(g.lam[1:-1], torch.tensor(GAUSSIAN_TABLE[n], dtype=torch.float64), rtol=1e-9, atol=1e-9)
    # a span the row does not fit (t_end above the row's last point) falls back to the power law
    t_end = float(s.t_of_log_snr(torch.tensor(GAUSSIAN_TABLE[n][-1] - 0.1, dtype=torch.float64)))
    fallback = dk.make_grid("gaussian_lambda", s, n, t_end=t_end)
    torch.testing.assert_close(fallback.t, dk.make_grid("gaussian_lambda", s, n, t_end=t_end, power=GAUSSIAN_POWER).t)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="sigma_data must be a positive finite number, got 0"):
        GaussianPC(sigma_data=0)
    with pytest.raises(ValueError, match=r"order must be an integer in 2\.\.8, got 1"):
        GaussianPC(order=1)
    GaussianPC(order=1, corrector=False)


@pytest.mark.parametrize("nfe", [8, 10, 20])
def test_defaults_keep_the_spread_and_likelihood(nfe: int) -> None:
    """Issue 4's sample-quality target on a sharp mixture other than the benchmark's."""
    mix = sharp()
    n = 600
    exact = mix.sample(n, seed=2)
    x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(3))
    x = dk.sample(mix, dk.make_solver("gaussian_pc"), x_T, steps=nfe, progress=False).x
    ll, ll_exact = mix.log_prob(x), mix.log_prob(exact)
    assert 0.95 < spread(mix, x) < 1.05
    assert abs(float(ll.mean() - ll_exact.mean())) < 4 * math.sqrt((ll.var() + ll_exact.var()) / n)


# ---------------------------------------------------------------------------
# the Gaussian clean end for any deterministic solver
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "heun", "deis", "ipndm", "dpmpp_2m"])
def test_gaussian_end_of_any_solver_is_exact_from_its_last_state(name: str) -> None:
    """On an isotropic Gaussian the wrapped solver's last step is the exact ODE solution from
    wherever the solver's own steps left x, whatever they cost."""
    schedule = dk.DiscreteSchedule("linear", 1000)
    oracle = gaussian(schedule, std=0.2)
    solver = dk.make_solver(name, end="gaussian")
    x_T = oracle.sample(6, seed=4, t=schedule.t_max)
    grid = dk.make_grid(solver.default_grid, schedule, 4)
    sol = dk.sample(oracle, solver, x_T, grid=grid, progress=False, dtype=torch.float64, save_trajectory=True)
    want = oracle.ode_solution(sol.trajectory[-2], float(grid.t[-2]))
    torch.testing.assert_close(sol.x, want, rtol=1e-7, atol=1e-7)
    own = dk.sample(oracle, dk.make_solver(name), x_T, grid=grid, progress=False, dtype=torch.float64)
    assert sol.nfe == own.nfe and (own.x - want).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["ddim", "deis", "lms", "heun"])
def test_gaussian_end_gives_every_solver_the_true_spread_at_10_calls(name: str) -> None:
    """Their own defaults collapse the within-mode spread at 10 calls (0.3-0.9, RESULTS.md)."""
    mix = sharp()
    n = 600
    exact = mix.sample(n, seed=2)
    x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(3))
    solver = dk.make_solver(name, end="gaussian")
    steps = 10 if solver.nfe_per_step == 1 else 5
    sol = dk.sample(mix, solver, x_T, steps=steps, progress=False)
    ll, ll_exact = mix.log_prob(sol.x), mix.log_prob(exact)
    assert sol.nfe <= 10 and 0.95 < spread(mix, sol.x) < 1.05
    assert abs(float(ll.mean() - ll_exact.mean())) < 4 * math.sqrt((ll.var() + ll_exact.var()) / n)


def test_gaussian_end_refusals() -> None:
    with pytest.raises(ValueError, match="end must be 'gaussian'.*got 'jump'"):
        dk.make_solver("ddim", end="jump")
    for name in ("euler_ancestral", "dpm_solver_adaptive"):
        with pytest.raises(ValueError, match=f"end='gaussian' needs a fixed-step deterministic solver.*'{name}'"):
            dk.make_solver(name, end="gaussian")
