"""Shared glue for running the anchors (diffusers, k-diffusion) on diffusekit's exact oracle, for
the anchor tests and the benchmarks (which import it from here).

- ``sharp_mixture`` / ``start_points``: the benchmarks' sharp-mode oracle problem.
- ``load_k_diffusion_sampling``: imports ``k_diffusion.sampling`` (or another submodule) alone
  (the package __init__ pulls in scikit-image, torchvision, ...).
- ``diffusers_scheduler``: a diffusers scheduler for a ``DiscreteSchedule`` by short
  name (``DIFFUSERS_SCHEDULERS``), Karras sigmas on or off.
- ``run_diffusers`` / ``DiffusersOracle``: the scheduler loop with the exact eps model.
  A diffusers model only sees the timestep, so the oracle is evaluated at the noise level of
  that (possibly fractional) DDPM index -- what a perfect network would do. Where a scheduler
  steps between other noise levels than its timesteps say (DPMSolverMultistep with Karras
  sigmas rounds its timesteps), the model sees the scheduler's timestep, as a network would.
- ``KDiffusionOracle``: k-diffusion's denoiser convention D(x_hat, s) with x_hat = x / alpha and
  s = sigma / alpha (as ``DiscreteEpsDDPMDenoiser`` wraps a DDPM eps model), exact at any s;
  ``k_discrete_sigmas`` is ``DiscreteSchedule.get_sigmas`` (log-sigma interpolation of the
  training sigmas at n equally spaced indices).
- ``grid_of_scheduler``: a diffusers scheduler's points as a diffusekit ``Grid`` (k-diffusion's
  sigmas: ``diffusekit.interop.grid_from_sigmas``).
- EDM and VE schedules (alpha = 1): ``diffusers_edm_scheduler`` / ``DiffusersEDMOracle`` (diffusers'
  EDM schedulers with the exact model behind their preconditioning), ``k_edm_sigmas``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import sys
import types
from typing import Any

import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.interop import k_diffusion_sigmas
from diffusekit.oracle import GaussianMixture
from diffusekit.schedules.discrete import BETA_SCHEDULES


def sharp_mixture(dim: int = 64, components: int = 8, seed: int = 0) -> GaussianMixture:
    """The benchmark oracle on ``DiscreteSchedule('linear', 1000)``: means in [-1, 1]^dim like image
    data, component stds 0.02-0.1 (issue 4's sharp modes)."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.rand(components, dim, generator=g, dtype=torch.float64) - 1
    stds = 0.02 + 0.08 * torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, dk.DiscreteSchedule("linear", 1000))


def start_points(oracle: GaussianMixture, n: int, seed: int = 1) -> Tensor:
    """n draws of x_T ~ N(0, prior_std^2 I) in float64."""
    g = torch.Generator().manual_seed(seed)
    return oracle.schedule.prior_std() * torch.randn(n, oracle.dim, generator=g, dtype=torch.float64)


def load_k_diffusion_sampling(module: str = "sampling") -> types.ModuleType | None:
    """Import ``k_diffusion.<module>`` alone (its package __init__ pulls in unrelated extras)."""
    if "k_diffusion" not in sys.modules:  # (a package made here has no spec to find)
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or spec.origin is None:
            return None
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [os.path.dirname(spec.origin)]  # type: ignore[attr-defined]
        sys.modules["k_diffusion"] = pkg
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {n: sys.modules.get(n) for n in names}
    stand_ins = [types.ModuleType(n) for n in names]
    stand_ins[0].transforms = stand_ins[1]  # type: ignore[attr-defined]
    stand_ins[1].functional = stand_ins[2]  # type: ignore[attr-defined]
    for n, m in zip(names, stand_ins):
        sys.modules.setdefault(n, m)
    try:
        return importlib.import_module(f"k_diffusion.{module}")
    except ImportError as e:  # e.g. torchsde missing
        print(f"k-diffusion unavailable: {e}", file=sys.stderr)
        return None
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def load_diffusers() -> types.ModuleType | None:
    """The diffusers package, or None when it is not installed."""
    if importlib.util.find_spec("diffusers") is None:
        return None
    return importlib.import_module("diffusers")


# short name -> (diffusers class, options); every one runs with prediction_type="epsilon"
DIFFUSERS_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    "dpm++3m": ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver++"}),
    # the noise form refuses to end at sigma = 0 in diffusers: it stops at sigma_min
    "dpm2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpm3m": ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpm++2s": ("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "dpm++3s": ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    "unipc_bh1": ("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "unipc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": ("DEISMultistepScheduler", {}),
    # stochastic
    "ddpm": ("DDPMScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "kdpm2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "dpmsolver_sde": ("DPMSolverSDEScheduler", {}),
}
DIFFUSERS_STOCHASTIC = ("ddpm", "euler_ancestral", "kdpm2_ancestral", "dpm++2m_sde", "dpmsolver_sde")


def _beta_config(schedule: dk.DiscreteSchedule) -> dict[str, Any]:
    if schedule.kind not in ("linear", "scaled_linear") or schedule.zero_terminal_snr:
        raise ValueError(f"the anchors are set up for DDPM linear / scaled_linear betas, got {schedule.config()}")
    cfg = schedule.config()
    default_start, default_end = BETA_SCHEDULES[schedule.kind][1:]
    return {
        "num_train_timesteps": schedule.num_steps,
        "beta_schedule": schedule.kind,
        "beta_start": default_start if cfg["beta_start"] is None else cfg["beta_start"],
        "beta_end": default_end if cfg["beta_end"] is None else cfg["beta_end"],
        "prediction_type": "epsilon",
    }


def diffusers_scheduler(name: str, schedule: dk.DiscreteSchedule, karras: bool = False, **options: Any) -> Any:
    """A fresh diffusers scheduler ``DIFFUSERS_SCHEDULERS[name]`` on the betas of ``schedule``.

    ``karras=True`` sets ``use_karras_sigmas`` (refused by schedulers without the option);
    ``options`` override the defaults (e.g. ``timestep_spacing``, ``solver_type``).
    """
    diffusers = load_diffusers()
    if diffusers is None:
        raise ImportError("diffusers is not installed (pip install diffusers)")
    if name not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"unknown diffusers scheduler {name!r}; allowed: {', '.join(DIFFUSERS_SCHEDULERS)}")
    cls_name, defaults = DIFFUSERS_SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    kwargs = {**_beta_config(schedule), **defaults, **options}
    if karras:
        if not has_karras(name):
            raise ValueError(f"{cls_name} has no Karras sigmas")
        kwargs["use_karras_sigmas"] = True
    return cls(**kwargs)


def has_karras(name: str) -> bool:
    """Whether the diffusers scheduler ``name`` takes ``use_karras_sigmas``."""
    cls = getattr(load_diffusers(), DIFFUSERS_SCHEDULERS[name][0])
    return "use_karras_sigmas" in inspect.signature(cls.__init__).parameters


def timestep_log_s(schedule: dk.DiscreteSchedule, timestep: Tensor | float) -> Tensor:
    """log(sigma / alpha) at a (fractional) DDPM index: linear in log s between training indices."""
    log_s = k_diffusion_sigmas(schedule).log()
    n = torch.as_tensor(timestep, dtype=torch.float64).clamp(0, len(log_s) - 1)
    lo = n.floor().long().clamp(max=len(log_s) - 2)
    return torch.lerp(log_s[lo], log_s[lo + 1], n - lo)


class DiffusersOracle:
    """eps(x_in, timestep) of the exact oracle; counts its calls.

    A (fractional) DDPM index n is read as diffusers' ``_sigma_to_t`` does, by interpolating log
    s = log(sigma / alpha) linearly between the training indices (at integer n this is the
    training noise level itself); the oracle is exact at that (alpha, sigma).
    """

    def __init__(self, oracle: GaussianMixture) -> None:
        self.oracle = oracle
        self.calls = 0

    def __call__(self, x_in: Tensor, timestep: Tensor | float) -> Tensor:
        self.calls += 1
        s = timestep_log_s(self.oracle.schedule, timestep).exp().reshape(-1).expand(x_in.shape[0])  # type: ignore[arg-type]
        alpha = (1 + s * s).rsqrt()
        dev = x_in.device
        _, eps, _ = self.oracle.posterior(x_in.double().flatten(1), alpha.to(dev), (s * alpha).to(dev))
        return eps.to(x_in.dtype).reshape(x_in.shape)


def run_diffusers(
    scheduler: Any,
    model: Any,
    x_T: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    float64: bool = False,
) -> Tensor:
    """diffusers' standard loop: x = x_T * init_noise_sigma, then scale_model_input / model / step.

    ``x_T`` is a unit-variance prior draw (the VP prior); the scheduler scales it. ``float64``
    casts the scheduler's noise tables to float64 after ``set_timesteps`` (diffusers stores them
    in float32; some steps still compute in float32 internally, e.g. DPMSolverMultistep).
    """
    scheduler.set_timesteps(steps)
    if float64:
        for attr in ("sigmas", "alphas_cumprod", "final_alpha_cumprod", "alpha_t", "sigma_t", "lambda_t"):
            value = getattr(scheduler, attr, None)
            if isinstance(value, Tensor):
                setattr(scheduler, attr, value.double())
    x = x_T * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        kw = {"generator": generator} if generator is not None and takes_generator else {}
        x = scheduler.step(eps, t, x, **kw).prev_sample
    return x


def _model_times(schedule: dk.DiscreteSchedule, timesteps: Tensor) -> Tensor:
    t = schedule.t_of_log_snr(-timestep_log_s(schedule, timesteps))
    integer = timesteps == timesteps.round()
    return torch.where(integer, (timesteps + 1) / schedule.num_steps, t).clamp(schedule.t_min, schedule.t_max)


def grid_of_scheduler(scheduler: Any, schedule: dk.DiscreteSchedule) -> dk.Grid:
    """The points of a diffusers scheduler (after ``set_timesteps``) as a diffusekit Grid.

    t is the schedule's time at the noise level where ``DiffusersOracle`` evaluates the model
    (``timestep_log_s``; t = (n + 1) / N at integer n); alpha and sigma are
    the scheduler's own (from its VE ``sigmas`` when it has them, else from ``alphas_cumprod``),
    so a diffusekit solver steps between exactly the same points with exactly the same model.
    Repeated points (the stages of Heun / KDPM2) are dropped; the clean end is t = 0.
    """
    steps = torch.as_tensor(scheduler.timesteps, dtype=torch.float64)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > 1:
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[1:] = s[1:] != s[:-1]
        s = s[keep]
        steps = torch.unique_consecutive(steps)
        if len(s) != len(steps) + 1:
            raise ValueError(f"cannot pair {len(steps)} timesteps with {len(s)} sigmas")
        t = torch.cat([_model_times(schedule, steps), steps.new_zeros(1)])
        if s[-1] > 0:  # the grid ends at a noise level (final_sigmas_type="sigma_min")
            t[-1] = float(schedule.t_of_log_snr(-s[-1:].log()).clamp(schedule.t_min, schedule.t_max))
        alpha = (1 + s * s).rsqrt()
        return dk.Grid(t, alpha, s * alpha)
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)[steps.long()]
    t = torch.cat([_model_times(schedule, steps), steps.new_zeros(1)])
    alpha = torch.cat([abar.sqrt(), abar.new_ones(1)])
    return dk.Grid(t, alpha, (1 - alpha * alpha).clamp(min=0).sqrt())


def vp_start(scheduler: Any, grid: dk.Grid, x_T: Tensor) -> Tensor:
    """The diffusekit start matching ``run_diffusers``: schedulers in k-diffusion's VE coordinates
    (``init_noise_sigma`` != 1: Euler, Heun, LMS, KDPM2, ...) start at x_hat = x_T init_noise_sigma,
    which is x = alpha_0 x_hat in diffusekit's; the others start at x_T itself."""
    scale = float(scheduler.init_noise_sigma)
    return x_T if scale == 1.0 else x_T * (scale * float(grid.alpha[0]))


class KDiffusionOracle:
    """k-diffusion's denoiser D(x_hat, s) = E[x0 | x = alpha x_hat] at s = sigma / alpha, exact for
    the VP process (alpha = 1 / sqrt(1 + s^2)); counts its calls. ``x_hat`` may be any dtype."""

    def __init__(self, oracle: GaussianMixture) -> None:
        self.oracle = oracle
        self.calls = 0

    def __call__(self, x_hat: Tensor, s: Tensor, **_: Any) -> Tensor:
        self.calls += 1
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1).expand(x_hat.shape[0]).cpu()
        alpha = (1 + s * s).rsqrt()
        x0, _, _ = self.oracle.posterior(
            (x_hat.double().flatten(1) * alpha[:, None].to(x_hat.device)), alpha.to(x_hat.device), (s * alpha).to(x_hat.device)
        )
        return x0.to(x_hat.dtype).reshape(x_hat.shape)


def k_discrete_sigmas(schedule: dk.DiscreteSchedule, n: int) -> Tensor:
    """k-diffusion's ``DiscreteSchedule.get_sigmas(n)``: log-sigma interpolated at n indices
    equally spaced from N - 1 to 0, then 0 (float64)."""
    log_s = k_diffusion_sigmas(schedule).log()
    idx = torch.linspace(len(log_s) - 1, 0, n, dtype=torch.float64)
    lo = idx.floor().long()
    hi = idx.ceil().long()
    w = idx - lo
    return torch.cat([((1 - w) * log_s[lo] + w * log_s[hi]).exp(), idx.new_zeros(1)])


def k_karras_sigmas(schedule: dk.DiscreteSchedule, n: int) -> Tensor:
    """Karras et al. 2022 eq. (5) between the training sigmas' ends (rho = 7), then 0 (float64)."""
    s = k_diffusion_sigmas(schedule)
    return _karras_sigmas(float(s[0]), float(s[-1]), n)


def _karras_sigmas(lo: float, hi: float, n: int) -> Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat([(hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7, ramp.new_zeros(1)])


# short name -> (diffusers class, options) for schedules with alpha = 1 (EDM, VE): sigma in [sigma_min, sigma_max]
DIFFUSERS_EDM_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "edm_euler": ("EDMEulerScheduler", {}),
    "edm_dpm++2m": ("EDMDPMSolverMultistepScheduler", {"solver_order": 2}),
    "edm_dpm++3m": ("EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
}


def ve_sigma_range(schedule: dk.NoiseSchedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a schedule with alpha = 1 (EDM, VE); raises for any other."""
    if not isinstance(schedule, (dk.EDMSchedule, dk.VESchedule)):
        raise ValueError(f"the EDM anchors need alpha = 1 (EDMSchedule, VESchedule), got {schedule!r}")
    lam = schedule.log_snr(torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64))
    return float((-lam[0]).exp()), float((-lam[1]).exp())


def diffusers_edm_scheduler(name: str, schedule: dk.NoiseSchedule, sigma_schedule: str = "karras") -> Any:
    """A fresh diffusers EDM scheduler ``DIFFUSERS_EDM_SCHEDULERS[name]`` on the schedule's sigma range
    (``ve_sigma_range``), its sigmas spaced by ``sigma_schedule`` ('karras', rho = 7, or 'exponential'),
    ending at 0."""
    cls_name, defaults = DIFFUSERS_EDM_SCHEDULERS[name]
    cls = getattr(load_diffusers(), cls_name)
    lo, hi = ve_sigma_range(schedule)
    return cls(sigma_min=lo, sigma_max=hi, sigma_schedule=sigma_schedule, prediction_type="epsilon", **defaults)


class DiffusersEDMOracle:
    """The exact oracle behind diffusers' EDM preconditioning (Karras et al. 2022, Table 1): it gets
    c_in x and c_noise = log(sigma) / 4 and returns F with c_skip x + c_out F = E[x0 | x]
    (``prediction_type='epsilon'``); counts its calls."""

    def __init__(self, oracle: GaussianMixture, sigma_data: float) -> None:
        self.oracle = oracle
        self.sigma_data = sigma_data
        self.calls = 0

    def __call__(self, x_in: Tensor, c_noise: Tensor | float) -> Tensor:
        self.calls += 1
        s = torch.exp(4 * torch.as_tensor(c_noise, dtype=torch.float64)).reshape(-1).expand(x_in.shape[0])
        norm = (s * s + self.sigma_data**2).sqrt()[:, None]
        x = x_in.double().flatten(1) * norm
        alpha = (1 + s * s).rsqrt()
        x0, _, _ = self.oracle.posterior(x * alpha[:, None], alpha, s * alpha)
        c_skip = self.sigma_data**2 / norm**2
        c_out = s[:, None] * self.sigma_data / norm
        return ((x0 - c_skip * x) / c_out).to(x_in.dtype).reshape(x_in.shape)


def k_edm_sigmas(schedule: dk.NoiseSchedule, n: int, spacing: str) -> Tensor:
    """k-diffusion's ``get_sigmas_karras`` (rho = 7) or ``get_sigmas_exponential`` on the sigma range of
    a schedule with alpha = 1 (``ve_sigma_range``), then 0 (float64)."""
    lo, hi = ve_sigma_range(schedule)
    if spacing == "karras":
        return _karras_sigmas(lo, hi, n)
    if spacing != "exponential":
        raise ValueError(f"spacing must be 'karras' or 'exponential', got {spacing!r}")
    s = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64))
    return torch.cat([s, s.new_zeros(1)])
