"""Interop fidelity: exact alpha_bar tables, log-sigma interpolation between indices, wrapped
discrete-time networks seeing their own noise levels, and c_noise mapped back to the noise level."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import diffusekit as dk
from diffusekit.interop import (
    discrete_time_denoiser,
    grid_from_sigmas,
    k_diffusion_sigmas,
    noise_level_of_c_noise,
)
from diffusekit.parameterization import make_parameterization
from diffusekit.schedules import DiscreteSchedule, make_schedule

from .conftest import all_schedules


def float32_table(n: int = 1000) -> torch.Tensor:
    """A DDPM linear alpha_bar table computed in float32, as diffusers does."""
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, 0)


# ---- the table, exactly ---------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["log_alpha", "log_sigma"])
def test_a_table_schedule_matches_its_float32_table_exactly(interpolation: str) -> None:
    table = float32_table()
    schedule = DiscreteSchedule.from_alphas_cumprod(table, interpolation=interpolation)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000  # index n at t = (n + 1) / N
    alpha2 = schedule.alpha_sigma(t)[0] ** 2
    assert torch.equal(alpha2.float(), table)
    torch.testing.assert_close(alpha2, table.double(), rtol=4e-15, atol=0)
    assert torch.equal(schedule.alphas_cumprod, table.double())
    # the float64 betas schedule is 3.6e-7 (relative) off the float32 table: why the table is needed
    rel = ((DiscreteSchedule("linear").alphas_cumprod - table.double()) / table.double()).abs().max()
    assert rel > 1e-7


def test_a_table_ending_at_zero_has_zero_terminal_snr() -> None:
    table = DiscreteSchedule("linear", num_steps=50, zero_terminal_snr=True).alphas_cumprod
    schedule = DiscreteSchedule.from_alphas_cumprod(table.float())
    assert schedule.zero_terminal_snr and float(schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))[0]) == 0.0


@pytest.mark.parametrize(
    "table",
    [[0.9, 0.95], [0.9], [[0.9, 0.8]], [1.0, 0.5], [0.9, 0.0, 0.0], [0.9, -0.1]],
)
def test_bad_tables_are_refused(table: list) -> None:
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteSchedule.from_alphas_cumprod(torch.tensor(table, dtype=torch.float64))


def test_bad_interpolation_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown interpolation 'log_snr'"):
        DiscreteSchedule(interpolation="log_snr")


# ---- log-sigma interpolation ------------------------------------------------------------


def log_sigma_schedules() -> dict[str, DiscreteSchedule]:
    return {
        "linear": DiscreteSchedule("linear", interpolation="log_sigma"),
        "cosine": DiscreteSchedule("cosine", interpolation="log_sigma"),
        "ztsnr": DiscreteSchedule("linear", zero_terminal_snr=True, interpolation="log_sigma"),
        "table": DiscreteSchedule.from_alphas_cumprod(float32_table(), interpolation="log_sigma"),
    }


@pytest.mark.parametrize("name", list(log_sigma_schedules()))
def test_log_sigma_is_linear_in_the_index_and_inverts_exactly(name: str) -> None:
    schedule = log_sigma_schedules()[name]
    n = schedule.num_steps
    last = n - 2 if schedule.zero_terminal_snr else n - 1  # the zero-SNR interval interpolates alpha
    index = torch.linspace(0, last, 4001, dtype=torch.float64)
    t = (index + 1) / n
    log_s = -schedule.log_snr(t)
    knots = k_diffusion_sigmas(schedule).log()
    lo = index.floor().long().clamp(max=last - 1)
    expected = torch.lerp(knots[lo], knots[lo + 1], index - lo)
    torch.testing.assert_close(log_s, expected, rtol=1e-13, atol=1e-13)
    # alpha, sigma are the variance-preserving pair of that log-SNR
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-14)
    torch.testing.assert_close(alpha.log() - sigma.log(), -log_s, rtol=1e-13, atol=1e-13)
    # the inverse, everywhere on [t_min, t_max]
    tt = torch.linspace(schedule.t_min, 1.0, 9973, dtype=torch.float64)[:-1]
    torch.testing.assert_close(schedule.t_of_log_snr(schedule.log_snr(tt)), tt, rtol=0, atol=1e-12)


def test_log_sigma_differs_from_log_alpha_only_between_indices() -> None:
    alpha_interp, sigma_interp = DiscreteSchedule("linear"), DiscreteSchedule("linear", interpolation="log_sigma")
    knots = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(sigma_interp.log_snr(knots), alpha_interp.log_snr(knots), rtol=1e-14, atol=1e-14)
    half = knots[:-1] + 0.5 / 1000
    assert float((sigma_interp.log_snr(half) - alpha_interp.log_snr(half)).abs().max()) > 1e-2


@pytest.mark.parametrize(
    "schedule",
    [
        DiscreteSchedule("linear", interpolation="log_sigma"),
        DiscreteSchedule("scaled_linear", num_steps=100, beta_end=0.02, zero_terminal_snr=True, interpolation="log_sigma"),
        DiscreteSchedule.from_alphas_cumprod(float32_table(200), interpolation="log_sigma"),
        DiscreteSchedule.from_alphas_cumprod(float32_table(200)),
        DiscreteSchedule(betas=torch.linspace(1e-3, 0.05, 40, dtype=torch.float64)),
    ],
)
def test_discrete_config_round_trip(schedule: DiscreteSchedule) -> None:
    again = make_schedule("discrete", **schedule.config())
    assert again.config() == schedule.config()
    t = torch.linspace(schedule.t_min, 1.0, 777, dtype=torch.float64)[:-1]
    assert torch.equal(again.log_snr(t), schedule.log_snr(t))


def test_default_discrete_config_is_unchanged() -> None:
    assert DiscreteSchedule("linear").config() == {
        "kind": "linear", "num_steps": 1000, "beta_start": None, "beta_end": None, "zero_terminal_snr": False,
    }


# ---- wrapped discrete-time networks -----------------------------------------------------


class RecordingNetwork:
    """A diffusers-style eps network: a function of the timestep that records its timesteps."""

    def __init__(self) -> None:
        self.timesteps: list[float] = []

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(float(timestep.flatten()[0]))
        return 0.1 * x + 1e-3 * timestep.reshape(-1, *[1] * (x.ndim - 1))


def timesteps_seen(interpolation: str, sigmas: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    net = RecordingNetwork()
    den = discrete_time_denoiser(net, table, interpolation=interpolation)
    grid = grid_from_sigmas(den.schedule, sigmas)
    dk.sample(den, dk.make_solver("euler"), torch.ones(2, 3, dtype=torch.float64), grid=grid, progress=False, dtype=torch.float64)
    return torch.tensor(net.timesteps, dtype=torch.float64)


def test_a_wrapped_network_is_called_at_the_index_of_each_log_sigma_noise_level() -> None:
    """Karras sigmas between the table's ends: the wrapped network gets the fractional index whose
    log-sigma interpolated noise level is the step's sigma (k-diffusion's ``sigma_to_t``)."""
    table = float32_table()
    s = k_diffusion_sigmas(DiscreteSchedule.from_alphas_cumprod(table))
    ramp = torch.linspace(0, 1, 12, dtype=torch.float64)
    sigmas = (s[-1] ** (1 / 7) + ramp * (s[0] ** (1 / 7) - s[-1] ** (1 / 7))) ** 7
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    seen = timesteps_seen("log_sigma", sigmas, table)
    log_s = s.log()
    lo = seen.floor().long().clamp(max=len(s) - 2)
    level = torch.lerp(log_s[lo], log_s[lo + 1], seen - lo).exp()
    torch.testing.assert_close(level, sigmas[:-1], rtol=1e-12, atol=0)
    # with log-alpha interpolation the same network would be called at other noise levels
    assert float((timesteps_seen("log_alpha", sigmas, table) - seen).abs().max()) > 1e-3


def test_the_wrapper_unwraps_diffusers_outputs_and_maps_prediction_types() -> None:
    class Output:
        def __init__(self, sample: torch.Tensor) -> None:
            self.sample = sample

    den = discrete_time_denoiser(lambda x, t: Output(0.5 * x), float32_table(10), parameterization="v_prediction")
    assert den.parameterization.name == "v"
    x = torch.randn(3, 2, dtype=torch.float64)
    pred = den(x, 0.55)
    alpha, sigma = den.schedule.alpha_sigma(torch.tensor(0.55, dtype=torch.float64))
    torch.testing.assert_close(pred.x0, alpha * x - sigma * 0.5 * x)


# ---- c_noise back to the noise level ----------------------------------------------------


PARAMETERIZATIONS = ["eps", "x0", "v", "score", "velocity", "edm", ("edm", "vp"), ("edm", "ve")]


@pytest.mark.parametrize("name", list(all_schedules()))
@pytest.mark.parametrize("param", PARAMETERIZATIONS, ids=str)
def test_c_noise_maps_back_to_the_noise_level(name: str, param: str | tuple[str, str]) -> None:
    schedule = all_schedules()[name]
    p = make_parameterization(param[0], kind=param[1]) if isinstance(param, tuple) else make_parameterization(param)
    t = torch.linspace(schedule.t_min, schedule.t_max, 101, dtype=torch.float64)[1:-1]
    alpha, sigma = schedule.alpha_sigma(t)
    c_noise = p.c_noise(schedule.model_time(t), alpha, sigma)
    level = noise_level_of_c_noise(c_noise, schedule, p)
    torch.testing.assert_close(level.t, t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(level.sigma, sigma, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(level.alpha, alpha, rtol=1e-12, atol=1e-15)


def test_c_noise_of_a_custom_parameterization_is_refused() -> None:
    class Odd(type(make_parameterization("eps"))):
        def c_noise(self, model_time, alpha, sigma):  # type: ignore[no-untyped-def]
            return 2 * model_time

    with pytest.raises(ValueError, match="cannot invert"):
        noise_level_of_c_noise(0.5, dk.VPSchedule(), Odd())


# ---- against the anchors ------------------------------------------------------------------

needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")


@pytest.mark.anchors
@needs_diffusers
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_a_table_schedule_matches_diffusers_alphas_cumprod(beta_schedule: str) -> None:
    from diffusers import DDPMScheduler

    table = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule).alphas_cumprod
    schedule = DiscreteSchedule.from_alphas_cumprod(table)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.equal((schedule.alpha_sigma(t)[0] ** 2).float(), table)


@pytest.mark.anchors
def test_log_sigma_matches_k_diffusion_t_to_sigma_and_sigma_to_t() -> None:
    from . import anchor_helpers

    external = anchor_helpers.load_k_diffusion_sampling("external")
    if external is None:
        pytest.skip("k-diffusion is not installed")
    table = float32_table()
    schedule = DiscreteSchedule.from_alphas_cumprod(table, interpolation="log_sigma")
    k_schedule = external.DiscreteSchedule(k_diffusion_sigmas(schedule), quantize=False)
    # k-diffusion computes the index and 1 - frac in float32: exact for multiples of 1/64
    index = torch.randint(0, 999 * 64, (2000,), generator=torch.Generator().manual_seed(0)).double() / 64
    t = (index + 1) / 1000
    k_sigma = k_schedule.t_to_sigma(index)
    torch.testing.assert_close((-schedule.log_snr(t)).exp(), k_sigma, rtol=1e-13, atol=0)
    # the inverse: the index of a noise level is k-diffusion's
    torch.testing.assert_close(schedule.t_of_log_snr(-k_sigma.log()) * 1000 - 1, k_schedule.sigma_to_t(k_sigma), rtol=0, atol=1e-9)


@pytest.mark.anchors
@needs_diffusers
@pytest.mark.parametrize(
    ("scheduler_name", "options"),
    [
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),  # fractional timesteps (log-sigma)
        ("EulerDiscreteScheduler", {"timestep_spacing": "leading"}),
        ("DPMSolverMultistepScheduler", {}),
        ("UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ],
)
def test_a_wrapped_network_sees_diffusers_own_timesteps(scheduler_name: str, options: dict) -> None:
    """On diffusers' own grids the wrapped network is called with diffusers' timesteps (to their
    float32 rounding). Not compared: grids where diffusers itself calls its model at another noise
    level than its step's sigma (Euler 'linspace' interpolates sigma linearly; DPM-Solver / UniPC
    round Karras timesteps to integers)."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=1000, beta_schedule="linear", **options)
    scheduler.set_timesteps(12)
    seen = timesteps_seen("log_sigma", scheduler.sigmas.double(), scheduler.alphas_cumprod)
    torch.testing.assert_close(seen, scheduler.timesteps.double(), rtol=0, atol=1e-4)
