"""Parity with the anchors: on identical grids and the identical exact model, diffusekit's DDIM,
Euler, Heun, DPM-Solver++(2M), DPM-Solver(3, multistep) and UniPC(bh2) reproduce diffusers'
and k-diffusion's outputs to 1e-5 (float64 inputs; diffusers' DPMSolverMultistep computes its
update in float32 internally: the measured floor is ~4e-6; k-diffusion agrees to ~1e-14).

Where diffusekit differs from an anchor by design, the options are set to match:

- ``Heun(max_ratio=inf)``: the default guard makes steps with s0 / s1 > 10 Euler steps.
- ``DPMSolver(final_order=1, lower_order_final=False)``: the anchors jump to x0 on the last
  step (diffusers forces first order there with ``final_sigmas_type='zero'``); diffusekit's
  default short-grid lowering also caps orders over the last four steps.
- DPM-Solver++(2M) matches diffusers' ``solver_type='heun'`` (the exact integral of the linear
  interpolant, Lu et al. 2022b eq. 9 'taylor' form); k-diffusion's ``sample_dpmpp_2m`` and
  diffusers' default use the midpoint form (Alg. 2), a different O(h^3) local rule.
- The anchors' 3M (diffusers ``solver_order=3``, k-diffusion ``sample_dpmpp_3m_sde``, both after
  Lu's reference code) weight the second difference D2 by phi_3 = (e^{-h} - 1 + h)/h^2 - 1/2,
  half of the exact integral of the quadratic interpolant (h int_0^1 e^{-h(1-u)} u^2 du =
  -2 phi_3), so they are second order; ``test_anchor_3m_halves_the_second_difference`` shows it.
  Parity for order 3 is against diffusers' scheduler with that single weight doubled.
- UniPC: diffusers' ``solver_order=p`` with the corrector is ``UniPC(order=p + 1)``.

Grids: diffusers runs on integer timesteps ('leading' / 'linspace'), where its model time and
its step's noise level agree. With fractional timesteps (Euler 'linspace': sigma interpolated
linearly, the timestep log-linearly) or rounded ones (DPMSolverMultistep / UniPC with Karras
sigmas) diffusers evaluates the model at another noise level than its step assumes (1e-5 to
1e-2 off); those grids are checked against k-diffusion instead, whose sigmas are exact.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import diffusekit as dk
from diffusekit.interop import grid_from_sigmas
from diffusekit.solvers import DDIM, DPMSolver, Euler, Heun, UniPC

from . import anchor_helpers as anchors
from .anchor_helpers import sharp_mixture, start_points

pytestmark = pytest.mark.anchors
pytest.importorskip("diffusers")
if importlib.util.find_spec("k_diffusion") is None or importlib.util.find_spec("torchsde") is None:
    pytest.skip("k-diffusion (with torchsde) is not installed", allow_module_level=True)

TOL = 1e-5
K = anchors.load_k_diffusion_sampling()


@pytest.fixture(scope="module")
def problem():
    oracle = sharp_mixture(dim=8, components=4)
    return oracle, start_points(oracle, 16)


def diffusers_vs_diffusekit(problem, name: str, solver: dk.Solver, steps: int, **options) -> float:
    oracle, x_T = problem
    scheduler = anchors.diffusers_scheduler(name, oracle.schedule, **options)
    out = anchors.run_diffusers(scheduler, anchors.DiffusersOracle(oracle), x_T.clone(), steps, float64=True)
    grid = anchors.grid_of_scheduler(scheduler, oracle.schedule)
    x_start = anchors.vp_start(scheduler, grid, x_T)
    sol = dk.sample(oracle, solver, x_start, grid=grid, progress=False)
    assert torch.isfinite(out).all() and torch.isfinite(sol.x).all()
    return (out.double() - sol.x).abs().max().item()


def k_diffusion_vs_diffusekit(problem, sampler: str, solver: dk.Solver, sigmas: torch.Tensor) -> float:
    oracle, x_T = problem
    s_max = float(sigmas[0])
    out = getattr(K, sampler)(anchors.KDiffusionOracle(oracle), x_T * s_max, sigmas, disable=True)
    grid = grid_from_sigmas(oracle.schedule, sigmas)
    sol = dk.sample(oracle, solver, x_T * s_max / math.sqrt(1 + s_max**2), grid=grid, progress=False)
    return (out.double() - sol.x).abs().max().item()


STEPS = [5, 10, 17, 25]


@pytest.mark.parametrize("steps", STEPS)
def test_ddim(problem, steps: int) -> None:
    assert diffusers_vs_diffusekit(problem, "ddim", DDIM(), steps) < TOL  # 'leading' spacing
    if 1000 % steps == 0:
        assert diffusers_vs_diffusekit(problem, "ddim", DDIM(), steps, timestep_spacing="trailing") < TOL
    else:  # diffusers' DDIM steps to t - 1000 // N, not to its next timestep (see test_solver_defects)
        assert diffusers_vs_diffusekit(problem, "ddim", DDIM(), steps, timestep_spacing="trailing") > 1e-3


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("karras", [False, True])
def test_euler(problem, karras: bool, steps: int) -> None:
    assert diffusers_vs_diffusekit(problem, "euler", Euler(), steps, karras=karras, timestep_spacing="leading") < TOL
    sigmas = (anchors.k_karras_sigmas if karras else anchors.k_discrete_sigmas)(problem[0].schedule, steps)
    assert k_diffusion_vs_diffusekit(problem, "sample_euler", Euler(), sigmas) < TOL


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("karras", [False, True])
def test_heun(problem, karras: bool, steps: int) -> None:
    heun = Heun(max_ratio=math.inf)
    assert diffusers_vs_diffusekit(problem, "heun", heun, steps, karras=karras, timestep_spacing="leading") < TOL
    sigmas = (anchors.k_karras_sigmas if karras else anchors.k_discrete_sigmas)(problem[0].schedule, steps)
    assert k_diffusion_vs_diffusekit(problem, "sample_heun", heun, sigmas) < TOL


@pytest.mark.parametrize("steps", STEPS)
def test_dpmpp_2m(problem, steps: int) -> None:
    solver = DPMSolver(order=2, final_order=1, lower_order_final=False)
    opts = {"solver_type": "heun", "lower_order_final": False}
    assert diffusers_vs_diffusekit(problem, "dpm++2m", solver, steps, **opts) < TOL


class ExactThirdOrder:
    """Mixin for diffusers' DPMSolverMultistepScheduler: adds the missing half of the D2 term."""

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, **kwargs):
        x_t = super().multistep_dpm_solver_third_order_update(model_output_list, *args, sample=sample, **kwargs)
        i = self.step_index
        s = [self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1], self.sigmas[i - 2]]
        (a_t, sg_t), *rest = [self._sigma_to_alpha_sigma_t(v) for v in s]
        lam = [torch.log(a) - torch.log(sg) for a, sg in [(a_t, sg_t), *rest]]
        h, r0, r1 = lam[0] - lam[1], (lam[1] - lam[2]), (lam[2] - lam[3])
        r0, r1 = r0 / h, r1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        if self.config.algorithm_type == "dpmsolver++":
            return x_t - (a_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        return x_t - (sg_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2


def exact_3m_scheduler(oracle, **options):
    base = anchors.diffusers_scheduler("dpm++3m", oracle.schedule, **options)
    cls = type("Exact3M", (ExactThirdOrder, type(base)), {})
    return cls.from_config(base.config)


@pytest.mark.parametrize(
    ("form", "steps"), [("data", 5), ("data", 10), ("data", 17), ("data", 25), ("noise", 25), ("noise", 40)]
)
def test_dpm_solver_3_multistep(problem, form: str, steps: int) -> None:
    """Noise form from 25 steps: below, diffusekit makes steps with h > 3 first order (NOISE_FORM_MAX_H);
    its tolerance is 1e-4 (float32 round-off in diffusers, amplified by the noise form)."""
    oracle, x_T = problem
    opts = {"solver_type": "heun", "lower_order_final": False, "algorithm_type": "dpmsolver++" if form == "data" else "dpmsolver"}
    if form == "noise":
        opts["final_sigmas_type"] = "sigma_min"  # diffusers refuses the clean end in the noise form
    scheduler = exact_3m_scheduler(oracle, **opts)
    out = anchors.run_diffusers(scheduler, anchors.DiffusersOracle(oracle), x_T.clone(), steps, float64=True)
    grid = anchors.grid_of_scheduler(scheduler, oracle.schedule)
    assert grid.ends_at_zero == (form == "data")
    solver = DPMSolver(order=3, form=form, final_order=1, lower_order_final=False)
    x = dk.sample(oracle, solver, x_T, grid=grid, progress=False).x
    # the noise form amplifies round-off: diffusekit's own float32 run differs from float64 by
    # 1e-5 - 2.4e-5 here, and diffusers computes this update in float32
    assert (out.double() - x).abs().max().item() < (TOL if form == "data" else 1e-4)


def test_anchor_3m_halves_the_second_difference(problem) -> None:
    """The unpatched anchors differ from the exact rule, and agree with each other."""
    oracle, x_T = problem
    steps = 10
    scheduler = anchors.diffusers_scheduler("dpm++3m", oracle.schedule, solver_type="heun", lower_order_final=False)
    plain = anchors.run_diffusers(scheduler, anchors.DiffusersOracle(oracle), x_T.clone(), steps, float64=True)
    grid = anchors.grid_of_scheduler(scheduler, oracle.schedule)
    x_start = anchors.vp_start(scheduler, grid, x_T)
    exact = dk.sample(oracle, DPMSolver(order=3, final_order=1, lower_order_final=False), x_start, grid=grid, progress=False).x
    assert (plain.double() - exact).abs().max() > 1e-3
    # k-diffusion's 3M SDE sampler with eta = 0 is the same (halved) rule on the same sigmas
    sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float64)
    k_out = K.sample_dpmpp_3m_sde(anchors.KDiffusionOracle(oracle), x_T * float(sigmas[0]), sigmas, eta=0.0, disable=True)
    assert (k_out.double() - plain.double()).abs().max() < 1e-4


@pytest.mark.parametrize("steps", STEPS)
def test_unipc_bh2(problem, steps: int) -> None:
    solver = UniPC(order=3, variant="bh2", final_order=1)
    assert diffusers_vs_diffusekit(problem, "unipc_bh2", solver, steps, solver_order=2) < TOL
