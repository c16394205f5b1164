"""Every parameterization converts exactly; the Denoiser is shape-agnostic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffusekit as dk
from diffusekit.parameterization import PARAMETERIZATIONS, EDMParam, VParam, make_parameterization

NAMES = PARAMETERIZATIONS.names()


def _levels(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s = dk.VPSchedule()
    t = torch.linspace(0.01, 0.99, n, dtype=torch.float64)
    alpha, sigma = s.alpha_sigma(t)
    d_alpha, d_sigma = s.dalpha_dsigma(t)
    return alpha[:, None], sigma[:, None], d_alpha[:, None], d_sigma[:, None]


@pytest.mark.parametrize("name", NAMES)
def test_target_round_trips(name: str) -> None:
    """F* = target(x0, eps) is mapped back to exactly (x0, eps) by the coefficients."""
    p = make_parameterization(name)
    alpha, sigma, da, ds = _levels()
    x0 = torch.randn(64, 5, dtype=torch.float64)
    eps = torch.randn(64, 5, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    c = p.coefficients(alpha, sigma, da, ds)
    f = p.target(x0, eps, c, x_t)
    torch.testing.assert_close(c.c_skip * x_t + c.c_out * f, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c.e_skip * x_t + c.e_out * f, eps, rtol=1e-6, atol=1e-6)


def test_prediction_views_round_trip() -> None:
    """x0 -> eps -> v -> score -> x0 through the Prediction views."""
    alpha, sigma, *_ = _levels()
    x0 = torch.randn(64, 5, dtype=torch.float64)
    eps = torch.randn(64, 5, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    pred = dk.Prediction(x_t, alpha, sigma, x0, (x_t - alpha * x0) / sigma)
    v = pred.v
    c = VParam().coefficients(alpha, sigma)
    from_v = dk.Prediction(x_t, alpha, sigma, c.c_skip * x_t + c.c_out * v, c.e_skip * x_t + c.e_out * v)
    score = from_v.score
    x0_back = (x_t + sigma**2 * score) / alpha  # Tweedie
    torch.testing.assert_close(x0_back, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pred.with_x0(x0).eps, eps)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: object = None) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.tanh(self.lin(flat) + c_noise[:, None] / 1000).reshape(x.shape)


def test_edm_vp_preconditioning_equals_eps_model() -> None:
    """Karras et al. 2022, Table 1: the VP column is the eps-parameterization."""
    torch.manual_seed(0)
    net = _Net().double()
    schedule = dk.VPSchedule()
    eps_model = dk.Denoiser(net, schedule, "eps")
    edm_vp = dk.Denoiser(net, schedule, EDMParam(kind="vp"))
    x = torch.randn(7, 6, dtype=torch.float64)
    for t in (0.01, 0.3, 0.9):
        a, b = eps_model(x, t), edm_vp(x, t)
        torch.testing.assert_close(a.x0, b.x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.eps, b.eps, rtol=1e-10, atol=1e-10)


def test_v_and_velocity_are_finite_at_zero_terminal_snr() -> None:
    torch.manual_seed(0)
    net = _Net().double()
    for schedule, name in ((dk.DiscreteSchedule(zero_terminal_snr=True), "v"), (dk.FlowSchedule(), "velocity")):
        d = dk.Denoiser(net, schedule, name)
        pred = d(torch.randn(3, 6, dtype=torch.float64), 1.0)
        assert torch.isfinite(pred.x0).all() and torch.isfinite(pred.eps).all()


@pytest.mark.parametrize("shape", [(4,), (3, 8), (2, 5, 5), (1, 3, 4, 4)])
def test_denoiser_any_shape(shape: tuple[int, ...]) -> None:
    net = lambda x, c: x * 0.5 + c.reshape(-1, *([1] * (x.ndim - 1))) * 0  # noqa: E731
    d = dk.Denoiser(net, dk.EDMSchedule(), "edm")
    x = torch.randn(2, *shape)
    pred = d(x, torch.tensor([1.0, 2.0]))
    assert pred.x0.shape == x.shape and pred.eps.shape == x.shape and pred.x0.dtype == x.dtype


def test_denoiser_rejects_bad_time() -> None:
    d = dk.Denoiser(lambda x, c: x, dk.VPSchedule(), "eps")
    with pytest.raises(ValueError, match=r"t=2 is outside \[t_min, t_max\]"):
        d(torch.zeros(2, 3), 2.0)
    with pytest.raises(ValueError, match="unknown parameterization 'noise'; allowed: consistency, consistency_eps, "
                                         "consistency_v, consistency_velocity, consistency_x0, edm, eps, score, v, velocity, x0"):
        dk.Denoiser(None, dk.VPSchedule(), "noise")
    with pytest.raises(ValueError, match="unknown EDM preconditioning kind 'xx'"):
        EDMParam(kind="xx")


@pytest.mark.parametrize("param", sorted(PARAMETERIZATIONS.names()))
def test_shared_time_path_equals_per_sample_times(param: str) -> None:
    """A Python-number t (the sampling loop's cached float64 path) gives what a (B,) time tensor gives."""
    from .conftest import all_schedules

    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()

    def net(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return lin(x) + 0.1 * torch.tanh(c)[:, None]

    for name, schedule in all_schedules().items():
        d = dk.Denoiser(net, schedule, param)
        x = torch.randn(4, 3, dtype=torch.float64)
        ts = torch.linspace(schedule.t_max, schedule.t_min, 5, dtype=torch.float64)[1:]  # alpha > 0 for every kind
        d.cache_times(ts[:2])  # half pre-computed in one call, half computed on first use
        for t in ts.tolist():
            shared, per_sample = d(x, t), d(x, torch.full((4,), t, dtype=torch.float64))
            for a, b in ((shared.x0, per_sample.x0), (shared.eps, per_sample.eps)):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{name}, {param}, t={t}")
    with pytest.raises(ValueError, match="outside"):
        d(x, schedule.t_max * 2)
