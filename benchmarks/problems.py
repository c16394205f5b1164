"""The oracle problems of the solver benchmarks, and the sample-quality figures they report.

Issue 4's setting (``sharp_mixture``): a 64-dimensional, 8-component Gaussian mixture with
sharp modes (component std 0.02-0.1, means in [-1, 1]^64 like image data) on the DDPM
linear schedule (1,000 steps, beta 1e-4 .. 0.02), with the exact model for every method.
Issue 11's families (``FAMILIES``) vary it: anisotropic diagonal and rotated (full
covariance) modes, another d and K with unequal weights, the 2-d ring toy, data scaled by
10 and 0.1, narrow and wide modes; ``SCHEDULES`` names the schedules they run on.
Besides RMSE to the exact ODE solution, ``quality`` reports which component each
trajectory ends in, the RMSE over the trajectories that end in the right one, and
the within-component spread relative to the truth (1 = exact; collapse < 1), overall and
on each component's narrow and wide eigen-directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.schedules.base import NoiseSchedule


def sharp_mixture(dim: int = 64, components: int = 8, seed: int = 0) -> GaussianMixture:
    """The benchmark oracle on ``DiscreteSchedule('linear', 1000)``."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.rand(components, dim, generator=g, dtype=torch.float64) - 1
    stds = 0.02 + 0.08 * torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, dk.DiscreteSchedule("linear", 1000))


def _means(components: int, dim: int, g: torch.Generator) -> Tensor:
    return 2 * torch.rand(components, dim, generator=g, dtype=torch.float64) - 1


def _log_uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> Tensor:
    u = torch.rand(*shape, generator=g, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def anisotropic_mixture(schedule: NoiseSchedule, rotate: bool = False, dim: int = 64, components: int = 8,
                        seed: int = 0) -> GaussianMixture:
    """Means in [-1, 1]^d; per-dimension stds log-uniform in [0.005, 0.2] (40x), drawn per
    component and dimension; ``rotate``: covariances Q diag(s^2) Q^T for one random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    means = _means(components, dim, g)
    stds = _log_uniform((components, dim), 0.005, 0.2, g)
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] if rotate else None
    return GaussianMixture(means, stds, schedule, rotation=q)


def isotropic_mixture(schedule: NoiseSchedule, dim: int = 64, components: int = 8, seed: int = 0, scale: float = 1.0,
                      std_range: tuple[float, float] = (0.02, 0.1), weights: Sequence[float] | None = None) -> GaussianMixture:
    """``sharp_mixture``'s draws (same seed, same means and stds when ``std_range`` is the default)
    times ``scale``, on any schedule; ``std_range`` sets the per-component std range."""
    g = torch.Generator().manual_seed(seed)
    means = _means(components, dim, g)
    lo, hi = std_range
    stds = lo + (hi - lo) * torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(scale * means, scale * stds, schedule, weights=weights)


def ring_mixture(schedule: NoiseSchedule) -> GaussianMixture:
    """The 2-d toy of ``diffusekit.data.toys`` ('mixture'): 8 modes of std 0.05 on a circle of radius 0.8."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(0.8 * torch.stack([angles.cos(), angles.sin()], 1), 0.05, schedule)


SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "ddpm": lambda: dk.DiscreteSchedule("linear", 1000),  # DDPM linear betas 1e-4 .. 0.02
    "edm": lambda: dk.EDMSchedule(),  # sigma in [0.002, 80], alpha = 1
}

FAMILIES: dict[str, Callable[[NoiseSchedule], GaussianMixture]] = {
    "iso64": isotropic_mixture,  # the sharp_mixture of issue 4 (on DDPM linear: the same oracle)
    "aniso64": anisotropic_mixture,
    "rot64": lambda s: anisotropic_mixture(s, rotate=True),
    "d16k3": lambda s: isotropic_mixture(s, dim=16, components=3, seed=5, std_range=(0.03, 0.15), weights=(0.6, 0.3, 0.1)),
    "ring2d": ring_mixture,
    "iso64_x10": lambda s: isotropic_mixture(s, scale=10.0),
    "iso64_x0.1": lambda s: isotropic_mixture(s, scale=0.1),
    "narrow64": lambda s: isotropic_mixture(s, std_range=(0.002, 0.005)),
    "wide64": lambda s: isotropic_mixture(s, std_range=(0.3, 0.5)),
}
"""Issue 11's mixture families: name -> oracle on a given schedule."""


def family_start(oracle: GaussianMixture, n: int, seed: int = 1) -> Tensor:
    """n exact draws from p_{t_max} (float64): the exact ODE maps them to exact data draws,
    so the truth's spread is 1 on every schedule, whatever its prior."""
    return oracle.sample(n, seed=seed, t=oracle.schedule.t_max)


def start_points(oracle: GaussianMixture, n: int, seed: int = 1) -> Tensor:
    """n draws of x_T ~ N(0, prior_std^2 I) in float64."""
    g = torch.Generator().manual_seed(seed)
    return oracle.schedule.prior_std() * torch.randn(n, oracle.dim, generator=g, dtype=torch.float64)


def reference(oracle: GaussianMixture, x_T: Tensor) -> Tensor:
    """The exact probability-flow ODE solution from t_max to clean data (float64)."""
    return oracle.ode_solution(x_T, oracle.schedule.t_max)


def component_of(oracle: GaussianMixture, x0: Tensor) -> Tensor:
    """Most likely component of each (clean) sample."""
    diff = oracle.to_frame(x0.double())[:, None, :] - oracle.to_frame(oracle.means)
    logits = oracle.log_weights - 0.5 * ((diff**2 / oracle.variances) + oracle.variances.log()).sum(-1)
    return logits.argmax(1)


def whitened_offsets(oracle: GaussianMixture, x0: Tensor, comp: Tensor) -> Tensor:
    """(x - mu_c) in component c's eigen-frame divided by its stds: N(0, I) for exact draws."""
    return oracle.to_frame(x0.double() - oracle.means[comp]) / oracle.variances[comp].sqrt()


@dataclass(frozen=True)
class Quality:
    rmse: float  # per-coordinate RMSE to the exact ODE solution, all trajectories
    wrong_component: float  # fraction ending in another component than the exact ODE's
    rmse_right: float  # RMSE over the trajectories that end in the right component
    spread: float  # within-component std of the samples / true std (1 = exact)
    log_lik: float  # mean log p0(x) of the samples under the true mixture (nats)
    spread_narrow: float = math.nan  # spread along each component's narrowest third of eigen-directions (nan: isotropic)
    spread_wide: float = math.nan  # ... and its widest third


def quality(oracle: GaussianMixture, x: Tensor, ref: Tensor) -> Quality:
    """The figures of issue 4 for samples ``x`` that started where ``ref``'s ODE solutions did."""
    x, ref = x.double().flatten(1), ref.double().flatten(1)
    err = (x - ref).pow(2).mean(1)
    comp, comp_ref = component_of(oracle, x), component_of(oracle, ref)
    right = comp == comp_ref
    z2 = whitened_offsets(oracle, x, comp).pow(2)  # (B, D)
    order = oracle.variances[comp].argsort(1)
    third = max(1, oracle.dim // 3)
    narrow, wide = z2.gather(1, order[:, :third]), z2.gather(1, order[:, -third:])
    if not bool((oracle.variances.amax(1) > 1.0001 * oracle.variances.amin(1)).any()):  # isotropic modes: no narrow / wide
        narrow = wide = z2.new_full((1,), math.nan)
    return Quality(
        rmse=float(err.mean().sqrt()),
        wrong_component=float((~right).double().mean()),
        rmse_right=float(err[right].mean().sqrt()) if bool(right.any()) else float("nan"),
        spread=float(z2.mean().sqrt()),
        log_lik=float(oracle.log_prob(x).mean()),
        spread_narrow=float(narrow.mean().sqrt()),
        spread_wide=float(wide.mean().sqrt()),
    )
