"""The loop's contracts that guidance, inverse problems and distillation build on.

A denoiser protocol that wrappers satisfy, gradients on request, a per-step callback,
grids that start anywhere or jump back up (SDEdit, RePaint), and ``after_step``
projections that every solver honours. Each test checks against a closed form of a
single Gaussian (the ODE map and the posterior mean are linear in x).
"""

from __future__ import annotations

import math

import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.sample import StepInfo, forward_jump, steps_for_nfe
from diffusekit.solvers import SOLVERS

from .conftest import all_schedules, smooth_mixture

MU = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
S = 0.6


def gaussian(schedule: dk.NoiseSchedule | None = None) -> GaussianMixture:
    return GaussianMixture(MU, S, schedule or dk.DiscreteSchedule("linear"))


def alpha_sigma(schedule: dk.NoiseSchedule, t: float) -> tuple[float, float]:
    a, s = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(a), float(s)


def ode_map(schedule: dk.NoiseSchedule, x: torch.Tensor, t: float) -> torch.Tensor:
    """The exact probability-flow ODE map from time t to data for N(MU, S^2 I)."""
    a, s = alpha_sigma(schedule, t)
    return MU + (x - a * MU) * S / math.sqrt(a**2 * S**2 + s**2)


def posterior_slope(schedule: dk.NoiseSchedule, t: float) -> float:
    """d E[x0 | x_t] / d x_t: how an exact reverse SDE carries a shift made at t."""
    a, s = alpha_sigma(schedule, t)
    return a * S**2 / (a**2 * S**2 + s**2)


class Wrapped:
    """A plain object (not a Module, no cache) that satisfies the denoiser protocol."""

    def __init__(self, inner: dk.Denoiser) -> None:
        self.inner = inner
        self.schedule = inner.schedule
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, cond: object = None) -> dk.Prediction:
        self.calls += 1
        return self.inner(x, t, cond)


def test_any_object_with_a_schedule_and_a_call_can_be_sampled() -> None:
    den = gaussian()
    wrapped = Wrapped(den)
    assert isinstance(wrapped, dk.DenoiserLike)
    a = dk.sample(den, dk.make_solver("dpmpp_2m"), shape=(3,), batch=5, steps=8, progress=False)
    b = dk.sample(wrapped, dk.make_solver("dpmpp_2m"), shape=(3,), batch=5, steps=8, progress=False)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert wrapped.calls == b.nfe == 8
    c = dk.sample(dk.DenoiserWrapper(den), dk.make_solver("dpmpp_2m"), shape=(3,), batch=5, steps=8, progress=False)
    torch.testing.assert_close(a.x, c.x, rtol=0, atol=0)


def test_gradients_flow_through_the_loop_on_request() -> None:
    den = gaussian()
    x_T = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    solver = dk.make_solver("ddim")
    off = dk.sample(den, solver, x_T.clone().requires_grad_(), steps=6, dtype=torch.float64, progress=False)
    assert not off.x.requires_grad
    x_in = x_T.clone().requires_grad_()
    on = dk.sample(den, solver, x_in, steps=6, progress=False, grad=True)
    on.x[:, 0].sum().backward()
    # the sampler is linear in x_T for Gaussian data: the gradient is its slope, by finite differences
    bump = torch.zeros_like(x_T)
    bump[:, 0] = 1e-3
    hi = dk.sample(den, solver, x_T + bump, steps=6, progress=False).x[:, 0]
    lo = dk.sample(den, solver, x_T - bump, steps=6, progress=False).x[:, 0]
    torch.testing.assert_close(x_in.grad[:, 0], (hi - lo) / 2e-3, rtol=1e-6, atol=1e-9)
    assert float(x_in.grad[:, 0].abs().min()) > 0.1
    torch.testing.assert_close(x_in.grad[:, 1:], torch.zeros(4, 2, dtype=torch.float64))


def test_the_callback_sees_every_step_its_time_state_and_newest_x0() -> None:
    den = gaussian()
    seen: list[StepInfo] = []
    grid = dk.make_grid("uniform_lambda", den.schedule, 5)
    sol = dk.sample(
        den, dk.make_solver("heun", max_ratio=math.inf), shape=(3,), batch=2, grid=grid, progress=False,
        save_trajectory=True, callback=seen.append,
    )
    assert [s.i for s in seen] == list(range(5))
    assert [s.t for s in seen] == sol.grid.t[1:].tolist()
    for s in seen:
        torch.testing.assert_close(s.x, sol.trajectory[s.i + 1], rtol=0, atol=0)
    # Heun makes two calls per step but one on the last (Euler) step: x0 is the step's newest call
    calls = torch.tensor([2, 2, 2, 2, 1]).cumsum(0) - 1
    for s, c in zip(seen, calls.tolist()):
        torch.testing.assert_close(s.x0, sol.x0_trajectory[c], rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["uniform_t", "quadratic_t", "uniform_lambda", "karras", "tuned_lambda", "gaussian_lambda", "leading", "trailing", "linspace"])
def test_every_grid_rule_can_start_at_any_time(rule: str) -> None:
    schedule = dk.DiscreteSchedule("linear")
    grid = dk.make_grid(rule, schedule, 6, t_start=0.4)
    assert grid.n_steps == 6
    assert 0.4 * (1 - 1 / 6) - 5e-3 <= float(grid.t[0]) <= 0.4 + 1e-12  # diffusers' 'leading' stops short
    assert bool((grid.t[1:] < grid.t[:-1]).all())
    with pytest.raises(ValueError, match="t=1.5"):
        dk.make_grid(rule, schedule, 6, t_start=1.5)


def test_sdedit_from_a_later_start_reaches_the_exact_ode_solution() -> None:
    schedule = dk.EDMSchedule()
    den = gaussian(schedule)
    t0 = 2.0
    x_start = den.sample(64, seed=3, t=t0)
    grid = dk.make_grid("karras", schedule, 100, t_start=t0)
    out = dk.sample(den, dk.make_solver("dpmpp_3m"), x_start, grid=grid, progress=False, dtype=torch.float64)
    torch.testing.assert_close(out.x, ode_map(schedule, x_start, t0), rtol=0, atol=5e-4)
    with pytest.raises(ValueError, match="give x_T"):
        dk.sample(den, dk.make_solver("ddim"), shape=(3,), batch=2, grid=grid, progress=False)


def test_grids_with_jumps_split_into_falling_runs() -> None:
    schedule = dk.DiscreteSchedule("linear")
    plain = dk.Grid.from_times(schedule, torch.tensor([1.0, 0.6, 0.3]))
    assert plain.falling_runs() == [(0, 3)] and not plain.jumps
    g = dk.Grid.from_times(schedule, torch.tensor([1.0, 0.6, 0.3, 0.5, 0.2]), jumps=True)
    assert g.jumps and g.falling_runs() == [(0, 2), (2, 3), (3, 5)]
    with pytest.raises(ValueError, match="strictly decreasing"):
        dk.Grid.from_times(schedule, torch.tensor([1.0, 0.3, 0.5]))


def test_a_forward_jump_keeps_the_marginal() -> None:
    schedule = dk.DiscreteSchedule("linear")
    den = gaussian(schedule)
    n = 20000
    jump = dk.Grid.from_times(schedule, torch.tensor([0.3, 0.6]), to_zero=False, jumps=True)
    out = dk.sample(den, dk.make_solver("ddim"), den.sample(n, seed=4, t=0.3), grid=jump, progress=False)
    assert out.nfe == 0
    a, s = alpha_sigma(schedule, 0.6)
    std = math.sqrt(a**2 * S**2 + s**2)
    assert float((out.x.mean(0) - a * MU[0]).abs().max()) < 4 * std / math.sqrt(n)
    assert float((out.x.std(0) / std - 1).abs().max()) < 4 / math.sqrt(2 * n)
    a0, s0 = alpha_sigma(schedule, 0.6)
    a1, s1 = alpha_sigma(schedule, 0.3)
    step = dk.Step(0, 0.6, 0.3, a0, s0, a1, s1, None)
    with pytest.raises(ValueError, match="lowers the noise"):
        forward_jump(torch.zeros(1, 3), step, dk.StepContext(den, schedule, lambda: torch.zeros(1, 3)))


def test_a_repaint_grid_samples_what_the_plain_grid_samples() -> None:
    """Jumps keep the marginals, so going down, up and down again changes no law: the ancestral
    sampler draws the same distribution (within Monte-Carlo error) as on the last run alone."""
    schedule = dk.DiscreteSchedule("linear")
    den = gaussian(schedule)
    n = 4000
    tail = torch.linspace(0.6, 0.001, 200, dtype=torch.float64)
    t = torch.cat([torch.linspace(1.0, 0.3, 100, dtype=torch.float64), tail])
    grid = dk.Grid.from_times(schedule, t, jumps=True)
    assert grid.falling_runs() == [(0, 99), (99, 100), (100, 300)]
    ddpm = dk.make_solver("ddpm")
    repaint = dk.sample(den, ddpm, shape=(3,), batch=n, grid=grid, seed=1, progress=False, dtype=torch.float64).x
    x_start = den.sample(n, seed=6, t=0.6)
    plain = dk.sample(den, ddpm, x_start, grid=dk.Grid.from_times(schedule, tail), seed=2, progress=False).x
    assert float((repaint.mean(0) - plain.mean(0)).abs().max()) < 4 * S * math.sqrt(2 / n)
    assert float((repaint.std(0) / plain.std(0) - 1).abs().max()) < 4 * math.sqrt(1 / n)


class ShiftAt:
    """A projection made after step ``k``: adds ``delta`` to coordinate 0 and remembers the result."""

    def __init__(self, k: int, delta: float) -> None:
        self.k, self.delta = k, delta
        self.x_k: torch.Tensor | None = None
        self.t_k = math.nan

    def on_prediction(self, pred: dk.Prediction, t: float | torch.Tensor) -> dk.Prediction:
        return pred

    def after_step(self, x: torch.Tensor, step: dk.Step, ctx: dk.StepContext) -> torch.Tensor:
        if step.i != self.k:
            return x
        x = x.clone()
        x[:, 0] += self.delta
        self.x_k, self.t_k = x, step.t1
        return x


def solver_variants() -> dict[str, dk.Solver]:
    # consistency sampling keeps x only through f(x) and re-noises it, so a shift's carried size is not the
    # posterior mean's slope this test measures; tests/test_distill.py checks it steps from the projected x
    out = {name: dk.make_solver(name) for name in SOLVERS.names() if name not in ("dpm_solver", "consistency")}
    for order in (1, 2, 3):
        out[f"dpm_solver_single_{order}"] = dk.make_solver("dpm_solver", order=order, method="singlestep")
        out[f"dpm_solver_multi_{order}"] = dk.make_solver("dpm_solver", order=order, method="multistep")
    out["unipc_no_corrector"] = dk.make_solver("unipc", corrector=False)
    out["ddim_gaussian_end"] = dk.make_solver("ddim", end="gaussian")
    out["heun_churn"] = dk.make_solver("heun", S_churn=10.0)
    out["ddim_eta"] = dk.make_solver("ddim", eta=1.0)
    return out


@pytest.mark.parametrize("name", sorted(solver_variants()))
@pytest.mark.parametrize("late", [0, 1])
def test_every_solver_continues_from_a_projection_made_after_a_step(name: str, late: int) -> None:
    """A solver that rebuilds x from its own state (or restarts a stage from a stale copy)
    loses the projection, and its result is then the unprojected one."""
    solver = solver_variants()[name]
    schedule = dk.DiscreteSchedule("linear")
    den = gaussian(schedule)
    n = 12 if solver.adaptive else 40
    grid = dk.make_grid("uniform_lambda", schedule, n)
    k = n // 2 + late  # at and inside a singlestep group
    x_T = schedule.prior_sample(torch.randn(256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    shift = ShiftAt(k, 1.0)
    moved = dk.sample(den, solver, x_T, grid=grid, constraints=[shift], seed=2, progress=False).x
    still = dk.sample(den, solver, x_T, grid=grid, seed=2, progress=False).x
    assert shift.x_k is not None
    if solver.stochastic:
        # same noise: a linear reverse process carries the shift by the posterior mean's slope
        carried = float((moved - still)[:, 0].mean())
        assert carried > 0.3 * posterior_slope(schedule, shift.t_k), carried  # Langevin correctors forget some
        torch.testing.assert_close((moved - still)[:, 1:].mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.05)
    else:
        want = ode_map(schedule, shift.x_k, shift.t_k)
        lost = ode_map(schedule, shift.x_k - torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), shift.t_k)
        err = float((moved - want).abs().max())
        assert err < 0.3 * float((lost - want).abs().max()), err


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "heun"])  # heun: distillation teachers
def test_a_per_sample_grid_equals_each_sample_on_its_own_grid(name: str) -> None:
    """Per-sample times (each sample its own SDEdit start) in one batch, sample for sample."""
    schedule = dk.DiscreteSchedule("linear")
    den = gaussian(schedule)
    starts = [0.3, 0.5, 0.8, 1.0]
    grids = [dk.make_grid("uniform_lambda", schedule, 7, t_start=t) for t in starts]
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    solver = dk.make_solver(name)
    together = dk.sample(den, solver, x, grid=dk.Grid.stack(grids), seed=[10, 11, 12, 13], progress=False)
    for j, g in enumerate(grids):
        alone = dk.sample(den, solver, x[j : j + 1], grid=g, seed=[10 + j], progress=False)
        torch.testing.assert_close(together.x[j : j + 1], alone.x, rtol=1e-12, atol=1e-12)
    assert together.nfe == (13 if name == "heun" else 7)  # heun: one call on the step to the clean end


def test_solvers_without_per_sample_times_refuse_a_per_sample_grid() -> None:
    schedule = dk.DiscreteSchedule("linear")
    grid = dk.Grid.stack([dk.make_grid("karras", schedule, 5, t_start=t) for t in (0.5, 1.0)])
    with pytest.raises(ValueError, match="per-sample grid needs a solver with per_sample_times"):
        dk.sample(gaussian(schedule), dk.make_solver("unipc"), torch.zeros(2, 3), grid=grid, progress=False)
    with pytest.raises(ValueError, match="same number of steps"):
        dk.Grid.stack([dk.make_grid("karras", schedule, 5), dk.make_grid("karras", schedule, 6)])


@pytest.mark.parametrize("name", sorted(n for n in SOLVERS.names() if not dk.make_solver(n).adaptive) + ["ddim+end", "heun+end", "dpmpp_3m+end"])
def test_the_declared_nfe_is_the_nfe_used(name: str) -> None:
    solver = dk.make_solver(name.removesuffix("+end"), **({"end": "gaussian"} if name.endswith("+end") else {}))
    for schedule in all_schedules().values():
        den = smooth_mixture(schedule, dim=2)
        for n in (1, 2, 3, 5, 10, 21):
            try:
                grid = dk.make_grid(solver.default_grid, schedule, n)
                sol = dk.sample(den, solver, shape=(2,), batch=2, grid=grid, progress=False)
            except ValueError:
                continue  # refused (e.g. too few steps for the solver's warm-up): refusals are tested elsewhere
            assert sol.nfe == solver.nfe(grid), (schedule, n)
        for budget in (4, 7, 10, 30):
            n = steps_for_nfe(solver, schedule, budget)
            assert solver.nfe(dk.make_grid(solver.default_grid, schedule, n)) <= budget or n == 1
            assert solver.nfe(dk.make_grid(solver.default_grid, schedule, n + 1)) > budget


def test_the_paper_grid_policy_picks_each_solvers_paper_grid() -> None:
    from diffusekit.sample import grid_rule

    schedule = dk.EDMSchedule()
    den = gaussian(schedule)
    for name, paper in [("euler", "karras"), ("heun", "karras"), ("ddim", "uniform_t"), ("dpmpp_2m", "uniform_lambda"), ("deis", "quadratic_t")]:
        solver = dk.make_solver(name)
        assert grid_rule(solver, "paper") == paper
        a = dk.sample(den, solver, shape=(3,), batch=2, steps=6, grid="paper", progress=False)
        b = dk.sample(den, solver, shape=(3,), batch=2, grid=dk.make_grid(paper, schedule, 6), progress=False)
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert grid_rule(dk.make_solver("ddim"), None) == grid_rule(dk.make_solver("ddim"), "default") == dk.make_solver("ddim").default_grid
    with pytest.raises(ValueError, match="unknown step grid .papers.; allowed: default, paper, .*karras"):
        grid_rule(dk.make_solver("ddim"), "papers")


def test_sample_without_a_solver_runs_the_default_ode_sampler() -> None:
    from diffusekit.solvers import DEFAULT_NFE, DEFAULT_SOLVER

    schedule = dk.EDMSchedule()
    den = gaussian(schedule)
    x_T = schedule.prior_sample(torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    a = dk.sample(den, x_T, progress=False)
    b = dk.sample(den, dk.make_solver(DEFAULT_SOLVER), x_T, steps=steps_for_nfe(dk.make_solver(DEFAULT_SOLVER), schedule, DEFAULT_NFE), progress=False)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert a.nfe <= DEFAULT_NFE and not dk.make_solver(DEFAULT_SOLVER).stochastic
    c = dk.sample(den, x_T, steps=7, progress=False)
    assert c.grid.n_steps == 7
    torch.testing.assert_close(a.x, ode_map(schedule, x_T, schedule.t_max), rtol=0, atol=5e-3)
    with pytest.raises(ValueError, match="give x_T once"):
        dk.sample(den, x_T, x_T)
