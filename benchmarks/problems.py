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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.schedules.base import NoiseSchedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from anchor_helpers import sharp_mixture, start_points  # noqa: E402,F401  (shared with the anchor tests)


def anisotropic_mixture(schedule: NoiseSchedule, rotate: bool = False, dim: int = 64, components: int = 8,
                        seed: int = 0) -> GaussianMixture:
    """Means in [-1, 1]^d; per-dimension stds log-uniform in [0.005, 0.2] (40x), drawn per
    component and dimension; ``rotate``: covariances Q diag(s^2) Q^T for one random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.rand(components, dim, generator=g, dtype=torch.float64) - 1
    u = torch.rand(components, dim, generator=g, dtype=torch.float64)
    stds = torch.exp(math.log(0.005) + u * (math.log(0.2) - math.log(0.005)))
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] if rotate else None
    return GaussianMixture(means, stds, schedule, rotation=q)


def isotropic_mixture(schedule: NoiseSchedule, dim: int = 64, components: int = 8, seed: int = 0, scale: float = 1.0,
                      std_range: tuple[float, float] = (0.02, 0.1), weights: Sequence[float] | None = None) -> GaussianMixture:
    """``sharp_mixture``'s means and stds (same draws) times ``scale``, on any schedule; ``std_range``
    maps its stds (uniform in 0.02-0.1) linearly onto another range."""
    base = sharp_mixture(dim, components, seed)
    u = (base.variances[:, 0].sqrt() - 0.02) / 0.08
    lo, hi = std_range
    return GaussianMixture(scale * base.means, scale * (lo + (hi - lo) * u), schedule, weights=weights)


def ring_mixture(schedule: NoiseSchedule) -> GaussianMixture:
    """The 2-d toy of ``diffusekit.data.toys`` ('mixture'): 8 modes of std 0.05 on a circle of radius 0.8."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(0.8 * torch.stack([angles.cos(), angles.sin()], 1), 0.05, schedule)


SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "ddpm": lambda: dk.DiscreteSchedule("linear", 1000),  # DDPM linear betas 1e-4 .. 0.02
    "edm": lambda: dk.EDMSchedule(),  # sigma in [0.002, 80], alpha = 1
    "ve": lambda: dk.VESchedule(),  # sigma in [0.01, 50], alpha = 1 (Song et al. 2021)
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
    spread, narrow, wide = spreads(oracle, x, comp)
    if not bool((oracle.variances.amax(1) > 1.0001 * oracle.variances.amin(1)).any()):  # isotropic modes: no narrow / wide
        narrow = wide = math.nan
    return Quality(
        rmse=float(err.mean().sqrt()),
        wrong_component=float((~right).double().mean()),
        rmse_right=float(err[right].mean().sqrt()) if bool(right.any()) else float("nan"),
        spread=spread,
        log_lik=float(oracle.log_prob(x).mean()),
        spread_narrow=narrow,
        spread_wide=wide,
    )


def spreads(oracle: GaussianMixture, x: Tensor, comp: Tensor | None = None) -> tuple[float, float, float]:
    """Within-mode spread (RMS of ``whitened_offsets``; 1 = exact) over all eigen-directions, over each
    component's narrowest third and over its widest third; ``comp`` defaults to ``component_of``."""
    x = x.double().flatten(1)
    comp = component_of(oracle, x) if comp is None else comp
    z2 = whitened_offsets(oracle, x, comp).pow(2)  # (B, D)
    order = oracle.variances[comp].argsort(1)
    third = max(1, oracle.dim // 3)
    narrow, wide = z2.gather(1, order[:, :third]), z2.gather(1, order[:, -third:])
    return float(z2.mean().sqrt()), float(narrow.mean().sqrt()), float(wide.mean().sqrt())
