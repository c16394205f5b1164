"""Defects seen in the anchors (diffusers, k-diffusion) that must not exist here (issue 4), and the
registry-wide robustness sweep. No diffusers needed: every check is against the exact oracle.

Already covered elsewhere (not repeated): finite output of the exponential solvers on Karras
grids at 15-25 steps and at 1,000 default-grid steps (test_solvers_exponential
``test_no_zero_length_steps_or_nan_on_long_and_karras_grids``), Heun at 3-4 steps on smooth
mixtures and PLMS below 13 NFE (test_solvers_rk_sde), noise counts of the solvers' own lists.
Here: the anchors' exact configurations on the sharp benchmark mixture, and every *registered*
solver (so a new one cannot slip past).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.solvers import DDIM, DEIS, PLMS, SOLVERS, DPMSolver, Heun, UniPC, make_solver
from diffusekit.oracle import GaussianMixture
from .conftest import count_noise

from .conftest import all_schedules

from .anchor_helpers import sharp_mixture, start_points


@pytest.fixture(scope="module")
def sharp() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    """The benchmark's sharp-mode mixture in 8-d, 32 starts and their exact ODE solutions."""
    oracle = sharp_mixture(dim=8, components=4)
    x_T = start_points(oracle, 32)
    return oracle, x_T, oracle.ode_solution(x_T, oracle.schedule.t_max)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


# ---- zero-length final step ------------------------------------------------------------------


@pytest.mark.parametrize("grid_name", ["karras", "uniform_lambda", "quadratic_t", "uniform_t"])
def test_grids_are_strictly_decreasing_at_every_step_count(grid_name: str) -> None:
    """diffusers' DPM-Solver with Karras sigmas ends [..., sigma_min, sigma_min]: a zero-length step
    (h = 0) that returns NaN from 15 steps on. Every diffusekit grid is strictly decreasing in sigma."""
    schedule = dk.DiscreteSchedule()
    for n in range(1, 201):
        for to_zero in (True, False):
            g = dk.make_grid(grid_name, schedule, n, to_zero=to_zero)
            assert g.n_steps == n
            assert bool((g.sigma[1:] < g.sigma[:-1]).all()), (n, to_zero)
            assert bool((g.lam[1:] > g.lam[:-1]).all()), (n, to_zero)


@pytest.mark.parametrize("solver", [DPMSolver(order=3), DPMSolver(order=3, form="noise"), UniPC(), DEIS()], ids=repr)
def test_order_3_on_karras_grids_ending_at_sigma_min(sharp, solver: dk.Solver) -> None:
    """The anchors' failing configuration (order 3, Karras, final sigma = sigma_min, 15+ steps)
    gives finite output converging to the exact ODE solution at sigma_min."""
    oracle, x_T, _ = sharp
    schedule = oracle.schedule
    ref = oracle.ode_solution(x_T, schedule.t_max, schedule.t_min)
    errors = []
    for n in (15, 16, 21, 60):
        x = dk.sample(oracle, solver, x_T, grid=dk.make_grid("karras", schedule, n, to_zero=False), progress=False).x
        assert torch.isfinite(x).all()
        errors.append(rmse(x, ref))
    assert max(errors) < 0.2 and errors[-1] < 0.5 * errors[0], errors


# ---- "trailing" spacing when N does not divide the training steps ------------------------------


def test_trailing_steps_go_to_the_next_grid_point(sharp) -> None:
    """diffusers' DDIM steps from timestep k to k - 1000 // N, not to its next timestep, when N does
    not divide 1000 ('trailing'). Here each step ends exactly at the next grid point: the run equals
    the chain of one-step runs between consecutive points, and the points are diffusers' indices."""
    oracle, x_T, _ = sharp
    schedule = oracle.schedule
    for n in (3, 7, 17, 30, 33, 333):
        grid = dk.make_grid("trailing", schedule, n)
        idx = np.round(np.arange(1000, 0, -1000 / n))[:n] - 1  # diffusers' trailing indices
        assert np.allclose(grid.t[:-1].numpy(), (idx + 1) / 1000) and grid.ends_at_zero
        if n > 33:
            continue
        sol = dk.sample(oracle, DDIM(), x_T, grid=grid, save_trajectory=True, progress=False)
        for i in range(n):
            one = dk.Grid(grid.t[i : i + 2], grid.alpha[i : i + 2], grid.sigma[i : i + 2])
            x1 = dk.sample(oracle, DDIM(), sol.trajectory[i], grid=one, progress=False).x
            assert torch.equal(x1, sol.trajectory[i + 1]), (n, i)


# ---- 1,000 steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver",
    [
        DPMSolver(order=3, form="noise"),
        DPMSolver(order=2, method="singlestep"),
        UniPC(order=3, variant="bh1"),
        UniPC(order=4, form="noise"),
        DEIS(order=3, variable="rho"),
    ],
    ids=repr,
)
def test_no_nan_or_singular_system_at_1000_steps_of_every_training_index(solver: dk.Solver) -> None:
    """diffusers' DPMSolverMultistep, UniPC and DEIS return NaN / hit singular matrices at 1,000 steps.
    Here a 1,000-step grid through every training index ('trailing' = all knots) stays accurate."""
    schedule = dk.DiscreteSchedule()
    oracle = sharp_mixture(dim=4, components=3)
    x_T = start_points(oracle, 4)
    ref = oracle.ode_solution(x_T, schedule.t_max)
    x = dk.sample(oracle, solver, x_T, grid=dk.make_grid("trailing", schedule, 1000), progress=False).x
    assert torch.isfinite(x).all() and rmse(x, ref) < 1e-3


# ---- few-step stability --------------------------------------------------------------------------


def test_heun_and_dpm_solver_2_do_not_diverge_at_nfe_5(sharp) -> None:
    """k-diffusion's heun / dpm_2 at NFE 5 on Karras sigmas: RMSE 3.5 / 8.7 on the benchmark problem.
    diffusekit's defaults stay below 0.5 on every grid; Alg. 1 without the step-ratio guard does not."""
    oracle, x_T, ref = sharp
    schedule = oracle.schedule
    for grid_name in ("karras", "uniform_lambda", "quadratic_t"):
        heun = dk.sample(oracle, Heun(), x_T, grid=dk.make_grid(grid_name, schedule, 3), progress=False)
        assert heun.nfe <= 5 and rmse(heun.x, ref) < 0.5, grid_name
        for form in ("data", "noise"):
            dpm2 = dk.sample(
                oracle, DPMSolver(order=2, method="singlestep", form=form), x_T,
                grid=dk.make_grid(grid_name, schedule, 5), progress=False,
            )
            assert dpm2.nfe == 5 and rmse(dpm2.x, ref) < 0.5, (grid_name, form)
    raw = dk.sample(oracle, Heun(max_ratio=math.inf), x_T, grid=dk.make_grid("karras", schedule, 3), progress=False)
    assert rmse(raw.x, ref) > 1.0


def test_pndm_runs_below_13_nfe(sharp) -> None:
    """diffusers' PNDM needs its 3 PRK steps (13 calls) first. PLMS here runs every NFE from 1 with
    NFE = steps, and its error falls with the budget."""
    oracle, x_T, ref = sharp
    errors = []
    for n in range(1, 13):
        sol = dk.sample(oracle, PLMS(), x_T, steps=n, progress=False)
        assert sol.nfe == n and torch.isfinite(sol.x).all()
        errors.append(rmse(sol.x, ref))
    assert errors[-1] < 0.5 * errors[0] and errors[-1] < 0.3


# ---- noise -------------------------------------------------------------------------------------


def test_registered_solvers_draw_noise_only_when_stochastic() -> None:
    """k-diffusion builds a Brownian tree / draws per step even when unused; here every registered
    fixed-step solver with its defaults (and the eta = 0 forms of the stochastic ones) draws no
    noise when deterministic, and at least one draw per step when stochastic. (The adaptive
    dopri5 / dpm_solver_adaptive are checked in test_solvers_rk_sde / test_solvers_exponential.)"""
    oracle = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]]), 0.3, dk.VPSchedule())
    for name in SOLVERS.names():
        solver = make_solver(name)
        if solver.adaptive:
            continue
        steps = 5
        draws = count_noise(solver, oracle, steps)[0]
        assert (draws == 0) == (not solver.stochastic), (name, draws)
        if solver.stochastic:
            assert draws >= steps - 1, (name, draws)
    for solver in (make_solver("ddim", eta=0.0), make_solver("euler_ancestral", eta=0.0), make_solver("dpm_solver_sde", eta=0.0)):
        assert not solver.stochastic and count_noise(solver, oracle, 6)[0] == 0


# ---- robustness: every registered solver x NFE x schedule ---------------------------------------


@pytest.mark.parametrize("schedule_name", list(all_schedules()))
def test_every_registered_solver_is_finite_or_refuses_at_any_nfe(schedule_name: str) -> None:
    """Every registered fixed-step solver with its defaults and default grid at every NFE budget 1..10:
    finite output with NFE within budget, or a ValueError that names the problem; steps = budget /
    calls per step. Extends test_solvers_exponential / test_solvers_rk_sde (which sample NFE 1, 2, 3,
    5, 10, 50 and random ones in 4..50 per solver list) to the whole registry and every NFE <= 10.
    The adaptive solvers have no NFE budget; their schedules are covered in those files."""
    schedule = all_schedules()[schedule_name]
    oracle = GaussianMixture(
        torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]]), torch.tensor([0.05, 0.1, 0.3]), schedule
    )
    x_T = oracle.sample(4, seed=1, t=schedule.t_max).float()
    for name in SOLVERS.names():
        solver = make_solver(name)
        if solver.adaptive:
            continue
        for budget in range(1, 11):
            steps = max(1, budget // int(solver.nfe_per_step))
            try:
                sol = dk.sample(oracle, solver, x_T, steps=steps, progress=False)
            except ValueError as e:  # a refusal must say what is wrong
                assert str(steps) in str(e) or name in str(e), (name, budget, str(e))
                continue
            assert torch.isfinite(sol.x).all(), (name, schedule_name, budget)
            extra = {"plms": 9, "annealed_langevin": 1}.get(name, 0)  # PRK warm start; final denoising call
            assert sol.nfe <= steps * solver.nfe_per_step + extra, (name, budget, sol.nfe)
