"""Exponential-integrator solvers (DPM-Solver / ++ / SDE / adaptive, UniPC, DEIS) against the exact oracle.

Orders are measured on the oracle's reference ODE solution at an intermediate time
(sigma ~ 0.2, no clean-end jump), in float64 so round-off never hides the slope.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import diffusekit as dk
from diffusekit.parameterization import Parameterization, make_parameterization
from diffusekit.solvers.controllers import StepSizeController
from diffusekit.solvers.deis import DEIS
from diffusekit.solvers.dpm_solver import DPMSolver, DPMSolverAdaptive, DPMSolverSDE, singlestep_orders
from diffusekit.solvers.exponential import exp_moments
from diffusekit.solvers.gaussian_pc import GaussianPC
from diffusekit.solvers.lagrange import lagrange_weights
from diffusekit.solvers.unipc import UniPC
from diffusekit.oracle import GaussianMixture

from .conftest import all_schedules, smooth_mixture

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

T_START = {
    "flow": 0.99
}  # alpha(1) = 0 on the flow path: measure orders where alpha > 0
LADDER = [32, 48, 64, 96, 128]


def fitted_order(steps: list[int], errors: list[float]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def lambda_grid(
    schedule: dk.NoiseSchedule, t_start: float, t_end: float, n: int
) -> dk.Grid:
    """n steps uniform in log-SNR between two times, without the clean end."""
    lam = schedule.log_snr(torch.tensor([t_start, t_end], dtype=torch.float64))
    t = schedule.t_of_log_snr(
        torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64)
    )
    t[0], t[-1] = t_start, t_end
    return dk.Grid.from_times(schedule, t, to_zero=False)


@functools.cache
def order_problem(
    name: str,
) -> tuple[dk.NoiseSchedule, GaussianMixture, torch.Tensor, float, float, torch.Tensor]:
    schedule = all_schedules()[name]
    mix = smooth_mixture(schedule)
    t_start = T_START.get(name, schedule.t_max)
    t_end = float(
        schedule.t_of_log_snr(torch.tensor(math.log(1 / 0.2), dtype=torch.float64))
    )
    x_T = mix.sample(32, seed=1, t=t_start)
    return schedule, mix, x_T, t_start, t_end, mix.ode_solution(x_T, t_start, t_end)


def order_errors(
    solver: dk.Solver, name: str, denoiser: dk.Denoiser | None = None
) -> list[float]:
    schedule, mix, x_T, t_start, t_end, ref = order_problem(name)
    errors = []
    for n in LADDER:
        x = dk.sample(
            denoiser or mix,
            solver,
            x_T,
            grid=lambda_grid(schedule, t_start, t_end, n),
            progress=False,
        ).x
        errors.append((x - ref).pow(2).mean().sqrt().item())
    return errors


class OracleNet(nn.Module):
    """The oracle's exact prediction converted to a parameterization's network target."""

    def __init__(self, oracle: GaussianMixture, param: Parameterization) -> None:
        super().__init__()
        self.oracle, self.param = oracle, param

    def forward(
        self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: object = None
    ) -> torch.Tensor:
        schedule = self.oracle.schedule
        n = getattr(schedule, "num_steps", None)
        t = (c_noise.double() + 1) / n if n else c_noise.double()
        t = t.clamp(schedule.t_min, schedule.t_max).cpu()
        pred = self.oracle(x_in, t)  # c_in = 1 for eps, x0 and v
        c = self.param.coefficients(pred.alpha.double(), pred.sigma.double())
        return self.param.target(
            pred.x0.double(), pred.eps.double(), c, x_in.double()
        ).to(x_in.dtype)


def wrapped(oracle: GaussianMixture, param: str) -> dk.Denoiser:
    p = make_parameterization(param)
    return dk.Denoiser(OracleNet(oracle, p), oracle.schedule, p)


DETERMINISTIC = [
    *(
        DPMSolver(order=o, method=m, form=f)
        for o in (1, 2, 3)
        for m in ("multistep", "singlestep")
        for f in ("data", "noise")
    ),
    UniPC(order=2, variant="bh1"),
    UniPC(order=2, variant="bh2", form="noise"),
    UniPC(order=3, variant="bh2"),
    UniPC(order=3, variant="bh1", form="noise"),
    UniPC(order=3, corrector=False),
    UniPC(order=4),
    UniPC(order=2, corrector=False, variant="bh1"),
    *(DEIS(order=o, variable=v) for o in (1, 2, 3) for v in ("t", "rho")),
    DPMSolverSDE(order=3, eta=0.0),
    GaussianPC(order=2),
    GaussianPC(order=3, corrector=False),
    GaussianPC(order=4, sigma_data=0.5),
]


def _id(s: dk.Solver) -> str:
    return repr(s).replace(" ", "")


# ---------------------------------------------------------------------------
# the quadrature every solver shares
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("z", [-40.0, -3.0, -0.9, -1e-3, 0.0, 1e-7, 0.7, 1.0, 4.0])
def test_exp_moments_match_numerical_integrals(z: float) -> None:
    from scipy.integrate import quad

    got = exp_moments(z, 4)
    for k, g in enumerate(got):
        want = quad(
            lambda s, k=k: math.exp(z * (1 - s)) * s**k,
            0,
            1,
            epsabs=1e-14,
            epsrel=1e-13,
        )[0]
        assert g == pytest.approx(want, rel=1e-11, abs=1e-14)


def test_lagrange_weights_integrate_polynomials_exactly() -> None:
    nodes = [0.0, -0.7, -1.9, 0.4]
    moments = exp_moments(-2.5, 4)
    beta = lagrange_weights(nodes, moments)
    for k in range(4):
        assert sum(b * t**k for b, t in zip(beta, nodes)) == pytest.approx(
            moments[k], rel=1e-12, abs=1e-14
        )


# ---------------------------------------------------------------------------
# convergence orders on the oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["discrete_linear", "vp", "edm", "flow"])
@pytest.mark.parametrize("solver", DETERMINISTIC, ids=_id)
def test_convergence_order(solver: dk.Solver, name: str) -> None:
    errors = order_errors(solver, name)
    assert errors[-1] < 0.03 * 10.0 ** (1 - solver.order), errors
    assert abs(fitted_order(LADDER, errors) - solver.order) < 0.3, errors


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "solver",
    [
        DPMSolver(order=3),
        UniPC(order=3),
        DEIS(order=3),
        DPMSolver(order=2, form="noise"),
    ],
    ids=_id,
)
def test_convergence_order_for_every_parameterization(
    solver: dk.Solver, param: str
) -> None:
    name = "discrete_linear" if param != "x0" else "edm"
    errors = order_errors(solver, name, wrapped(order_problem(name)[1], param))
    assert abs(fitted_order(LADDER, errors) - solver.order) < 0.3, errors


@pytest.mark.parametrize("name", ["vp", "discrete_ztsnr", "flow", "ve"])
@pytest.mark.parametrize(
    "solver",
    [
        DPMSolver(order=3),
        DPMSolver(order=2, method="singlestep", form="noise"),
        UniPC(),
        DEIS(),
    ],
    ids=_id,
)
def test_full_run_to_the_clean_end_converges(solver: dk.Solver, name: str) -> None:
    schedule = all_schedules()[name]
    mix = smooth_mixture(schedule)
    x_T = mix.sample(32, seed=2, t=schedule.t_max)
    ref = mix.ode_solution(x_T, schedule.t_max)
    errors = [
        (dk.sample(mix, solver, x_T, grid=dk.make_grid("uniform_lambda", schedule, n), progress=False).x - ref)
        .pow(2)
        .mean()
        .sqrt()
        .item()
        for n in (8, 16, 32, 64)
    ]
    assert errors[-1] < 3e-3 and errors[-1] < errors[0] / 20, errors
    assert all(b < a * 1.05 for a, b in itertools.pairwise(errors)), errors


@pytest.mark.parametrize(
    "solver",
    [
        DPMSolver(final_order=2),
        DPMSolver(method="singlestep", final_order=3),
        UniPC(final_order=3),
    ],
    ids=_id,
)
def test_higher_order_clean_end_removes_the_x0_jump_floor(solver: dk.Solver) -> None:
    """The x0 jump from sigma_min has an O(sigma_min^2) error that no step count removes;
    the rho-polynomial clean end keeps converging."""
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule)
    x_T = mix.sample(32, seed=2, t=1.0)
    ref = mix.ode_solution(x_T, 1.0)
    jump = type(solver)(
        **{
            **{f: getattr(solver, f) for f in solver.__dataclass_fields__},
            "final_order": 1,
        }
    )
    def err(s):
        return (
            (dk.sample(mix, s, x_T, steps=160, progress=False).x - ref)
            .pow(2)
            .mean()
            .sqrt()
            .item()
        )
    assert err(solver) < err(jump) / 5


# ---------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["discrete_ztsnr", "vp", "flow"])
def test_first_order_members_are_ddim(name: str) -> None:
    schedule = all_schedules()[name]
    mix = smooth_mixture(schedule)
    x_T = mix.sample(8, seed=3, t=schedule.t_max)
    for solver in (
        DPMSolver(order=1),
        DPMSolver(order=1, form="noise"),
        DPMSolver(order=1, method="singlestep"),
        UniPC(order=1, corrector=False),
        DEIS(order=1),
        DPMSolverSDE(order=1, eta=0.0),
    ):
        got = dk.sample(
            mix,
            solver,
            x_T,
            grid=dk.make_grid("uniform_t", schedule, 9),
            progress=False,
        ).x
        want = dk.sample(
            mix,
            dk.DDIM(),
            x_T,
            grid=dk.make_grid("uniform_t", schedule, 9),
            progress=False,
        ).x
        # 1e-7: the denoiser receives Python-float times through a float32 tensor
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_unipc_coefficients() -> None:
    """B(h) cancels where UniPC solves for its coefficients (exact polynomial quadrature, as
    DPM-Solver's); it matters where UniPC fixes a_1 = 1/2: UniP-2 with bh2 is exactly
    DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): alpha (1 - e^-h) ((1 + 1/2r) D0 - 1/2r D1)."""
    h, r = 0.8, 0.6
    for form, z in (("data", -h), ("noise", h)):
        exact = lagrange_weights([0.0, -r, -1.7], [h * m for m in exp_moments(z, 3)])
        for variant in ("bh1", "bh2"):
            assert UniPC(variant=variant, form=form)._weights(
                [0.0, -r, -1.7], h, form == "data"
            ) == pytest.approx(exact)
    pp2m = UniPC(variant="bh2")._weights([0.0, -r], h, True)
    e = -math.expm1(-h)
    assert pp2m == pytest.approx([e * (1 + 1 / (2 * r)), -e / (2 * r)])
    assert UniPC(variant="bh1")._weights([0.0, -r], h, True) == pytest.approx(
        [e + h / (2 * r), -h / (2 * r)]
    )
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule)
    x_T = mix.sample(8, seed=4, t=1.0)
    def run(s):
        return dk.sample(mix, s, x_T, steps=12, progress=False).x
    assert not torch.allclose(run(UniPC(order=3, corrector=False)), run(UniPC(order=4)))


def test_sde_solver_limits() -> None:
    schedule = dk.DiscreteSchedule()
    mix = smooth_mixture(schedule, dim=2)
    x_T = mix.sample(6, seed=5, t=1.0)
    # eta = 0 is DPM-Solver++(kM)
    grid = dk.make_grid("uniform_lambda", schedule, 10)
    a = dk.sample(mix, DPMSolverSDE(order=3, eta=0.0), x_T, grid=grid, progress=False).x
    b = dk.sample(mix, DPMSolver(order=3), x_T, grid=grid, progress=False).x
    torch.testing.assert_close(a, b)
    # order 1, eta = 1 is DDPM's posterior step, drawing the same noise stream
    grid = dk.make_grid("uniform_t", schedule, 10)
    a = dk.sample(mix, DPMSolverSDE(order=1), x_T, grid=grid, seed=3, progress=False).x
    b = dk.sample(mix, dk.DDPM("small"), x_T, grid=grid, seed=3, progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_aliases_are_their_configurations() -> None:
    assert (
        dk.make_solver("dpmpp_2m") == DPMSolver(order=2)
        or dk.make_solver("dpmpp_2m").order == 2
    )
    for alias, canonical in [
        ("dpmpp_2m", DPMSolver(order=2)),
        ("dpmpp_3m", DPMSolver(order=3)),
        ("dpmpp_2m_sde", DPMSolverSDE(order=2)),
        ("dpmpp_3m_sde", DPMSolverSDE(order=3)),
    ]:
        s = dk.make_solver(alias)
        assert isinstance(s, type(canonical)) and s.order == canonical.order
        assert dk.make_solver(alias, order=1).order == 1
    names = dk.SOLVERS.names()
    for n in ("dpm_solver", "dpm_solver_sde", "dpm_solver_adaptive", "unipc", "deis"):
        assert n in names


# ---------------------------------------------------------------------------
# stochastic and adaptive solvers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 3])
def test_sde_samples_match_the_mixture(order: int) -> None:
    schedule = dk.DiscreteSchedule()
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    mix = GaussianMixture(means, [0.3, 0.4, 0.35], schedule)
    n = 4000
    x = dk.sample(
        mix,
        DPMSolverSDE(order=order),
        shape=(2,),
        batch=n,
        steps=100,
        seed=0,
        progress=False,
    ).x.double()
    exact = mix.sample(n, seed=1)
    got_lp, exact_lp = mix.log_prob(x), mix.log_prob(exact)
    se = math.sqrt(got_lp.var().item() / n + exact_lp.var().item() / n)
    assert abs(got_lp.mean().item() - exact_lp.mean().item()) < 3 * se
    torch.testing.assert_close(x.mean(0), exact.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), torch.cov(exact.T), atol=0.08, rtol=0)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("name", ["vp", "edm", "flow"])
def test_adaptive_solver_reaches_its_tolerance_and_reports_nfe(
    order: int, name: str
) -> None:
    schedule = all_schedules()[name]
    mix = smooth_mixture(schedule)
    x_T = mix.sample(16, seed=6, t=schedule.t_max)
    ref = mix.ode_solution(x_T, schedule.t_max)
    results = []
    for rtol in (1e-2, 1e-3):
        sol = dk.sample(
            mix,
            DPMSolverAdaptive(order=order, rtol=rtol, atol=rtol / 5),
            x_T,
            steps=2,
            progress=False,
        )
        results.append(((sol.x - ref).abs().max().item(), sol.nfe))
    (err_lo, nfe_lo), (err_hi, nfe_hi) = results
    assert nfe_hi > nfe_lo > 4
    assert err_hi < 0.01 and err_hi < err_lo, results


def test_adaptive_steps_do_not_depend_on_the_batch() -> None:
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule)
    x_T = mix.sample(12, seed=7, t=1.0)
    solver = DPMSolverAdaptive(order=2, rtol=0.01, atol=0.002)
    alone = dk.sample(mix, solver, x_T[:3], steps=2, progress=False).x
    together = dk.sample(mix, solver, x_T, steps=2, progress=False).x
    torch.testing.assert_close(alone, together[:3], rtol=1e-12, atol=1e-12)


def test_controller() -> None:
    ctl = StepSizeController(rtol=0.1, atol=0.01)
    x = torch.ones(2, 3)
    ratio = ctl.error_ratio(x + torch.tensor([[0.05], [0.2]]), x, x)
    torch.testing.assert_close(
        ratio, torch.tensor([0.5, 2.0], dtype=torch.float64), rtol=1e-6, atol=0
    )
    assert ctl.accept(ratio).tolist() == [True, False]
    h = ctl.propose(torch.tensor([1.0, 1.0], dtype=torch.float64), ratio, 2)
    assert h[0] > 1.0 > h[1]
    nan = ctl.propose(
        torch.tensor([1.0], dtype=torch.float64),
        torch.tensor([math.nan], dtype=torch.float64),
        2,
    )
    assert nan.item() == pytest.approx(ctl.min_factor)
    with pytest.raises(ValueError, match="rtol and atol"):
        StepSizeController(rtol=0, atol=0)


# ---------------------------------------------------------------------------
# NFE accounting and robustness
# ---------------------------------------------------------------------------


def test_singlestep_allocation_spends_exactly_the_budget() -> None:
    for order in (2, 3):
        for n in range(1, 40):
            for lof in (True, False):
                groups = singlestep_orders(n, order, lof)
                assert sum(groups) == n
                assert all(1 <= g <= 3 for g in groups)
                assert (
                    n == 1 or min(groups) >= 2
                )  # no first-order group lowers the global order


ALL_SOLVERS = DETERMINISTIC + [
    DPMSolverSDE(order=2),
    DPMSolverSDE(order=3, eta=0.5),
    DPMSolver(order=3, final_order=3),
    UniPC(order=4, form="noise", final_order=2),
    DPMSolver(order=3, method="singlestep", lower_order_final=False),
]


@pytest.mark.parametrize("name", list(all_schedules()))
def test_every_solver_is_finite_for_any_nfe(name: str) -> None:
    """A sampled subset of the sweep (the full one: ``python tests/test_solvers_exponential.py``)."""
    schedule = all_schedules()[name]
    mix = GaussianMixture(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
        [0.05, 0.1, 0.3],
        schedule,
    )
    x_T = mix.sample(4, seed=1, t=schedule.t_max).float()
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same subset in every process
    for solver in ALL_SOLVERS:
        for n in {1, 2, 3, int(rng.integers(4, 51))}:
            grid = dk.make_grid(
                str(rng.choice(["uniform_lambda", "karras", "uniform_t"])), schedule, n
            )
            sol = dk.sample(mix, solver, x_T, grid=grid, progress=False)
            assert sol.nfe == n and torch.isfinite(sol.x).all(), (solver, n)


@pytest.mark.parametrize("solver", ALL_SOLVERS[::3] + [DPMSolverAdaptive()], ids=_id)
def test_zero_terminal_snr_with_v_prediction(solver: dk.Solver) -> None:
    schedule = dk.DiscreteSchedule("scaled_linear", zero_terminal_snr=True)
    den = wrapped(smooth_mixture(schedule), "v")
    x_T = torch.randn(4, 4)
    for n in (1, 2, 5, 20):
        x = dk.sample(
            den,
            solver,
            x_T,
            steps=2 if isinstance(solver, DPMSolverAdaptive) else n,
            progress=False,
        ).x
        assert torch.isfinite(x).all()


@pytest.mark.parametrize(
    "solver",
    [
        DPMSolver(order=3),
        DPMSolver(order=3, method="singlestep"),
        UniPC(order=4),
        DEIS(order=3),
    ],
    ids=_id,
)
def test_no_zero_length_steps_or_nan_on_long_and_karras_grids(
    solver: dk.Solver,
) -> None:
    schedule = dk.DiscreteSchedule()
    mix = smooth_mixture(schedule)
    x_T = mix.sample(4, seed=8, t=1.0).float()
    for n in (15, 16, 17, 25):
        assert torch.isfinite(
            dk.sample(
                mix,
                solver,
                x_T,
                grid=dk.make_grid("karras", schedule, n),
                progress=False,
            ).x
        ).all()
    x = dk.sample(mix, solver, x_T, steps=1000, progress=False).x
    ref = mix.ode_solution(x_T.double(), 1.0)
    assert (x.double() - ref).abs().max() < 5e-3


def test_deterministic_solvers_draw_no_noise() -> None:
    schedule = dk.EDMSchedule()
    mix = smooth_mixture(schedule)
    x_T = mix.sample(3, seed=9, t=schedule.t_max)
    for solver in DETERMINISTIC + [DPMSolverAdaptive(rtol=0.05)]:
        assert not solver.stochastic
        drawn = []
        base = type(solver).step

        def step(self, ctx, x, st, state, base=base, drawn=drawn):  # type: ignore[no-untyped-def]
            def noise() -> torch.Tensor:
                drawn.append(1)
                return torch.zeros_like(x)

            return base(
                self, dk.StepContext(ctx.model, ctx.schedule, noise), x, st, state
            )

        spy = type("Spy", (type(solver),), {"step": step})(
            **{f: getattr(solver, f) for f in solver.__dataclass_fields__}
        )
        dk.sample(
            mix,
            spy,
            x_T,
            steps=2 if isinstance(solver, DPMSolverAdaptive) else 7,
            progress=False,
        )
        assert not drawn, solver
    assert DPMSolverSDE().stochastic and not DPMSolverSDE(eta=0).stochastic


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="order must be an integer in 1..3, got 4"):
        DPMSolver(order=4)
    with pytest.raises(ValueError, match="form must be 'data'"):
        DPMSolver(form="x0")
    with pytest.raises(ValueError, match="method must be 'singlestep' or 'multistep'"):
        DPMSolver(method="both")
    with pytest.raises(
        ValueError,
        match="order must be an integer in 2..8 with the corrector on, got 1",
    ):
        UniPC(order=1)
    with pytest.raises(ValueError, match="variant must be 'bh1'"):
        UniPC(variant="bh3")
    with pytest.raises(ValueError, match="variable must be 't'"):
        DEIS(variable="lambda")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        DPMSolverSDE(eta=-1.0)
    with pytest.raises(ValueError, match="order must be an integer in 2..3, got 1"):
        DPMSolverAdaptive(order=1)


def _sweep() -> None:  # pragma: no cover - the full robustness sweep, run by hand
    """Every solver x NFE 1..50 x every schedule x grid: finite output and NFE = steps."""
    for name, schedule in all_schedules().items():
        mix = GaussianMixture(
            torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
            [0.05, 0.1, 0.3],
            schedule,
        )
        x_T = mix.sample(8, seed=1, t=schedule.t_max).float()
        for grid_name in ("uniform_lambda", "karras", "uniform_t", "quadratic_t"):
            for solver in ALL_SOLVERS:
                for n in range(1, 51):
                    sol = dk.sample(
                        mix,
                        solver,
                        x_T,
                        grid=dk.make_grid(grid_name, schedule, n),
                        progress=False,
                    )
                    ok = sol.nfe == n and bool(torch.isfinite(sol.x).all())
                    print(
                        ("ok " if ok else "BAD"),
                        name,
                        grid_name,
                        repr(solver),
                        n,
                        flush=True,
                    )


if __name__ == "__main__":  # pragma: no cover
    _sweep()
