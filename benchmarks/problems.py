"""The shared oracle problem of the solver benchmarks, and the sample-quality figures they report.

Issue 4's setting: a 64-dimensional, 8-component Gaussian mixture with sharp modes
(component std 0.02-0.1, means in [-1, 1]^64 like image data) on the DDPM linear
schedule (1,000 steps, beta 1e-4 .. 0.02), with the exact model for every method.
Besides RMSE to the exact ODE solution, ``quality`` reports which component each
trajectory ends in, the RMSE over the trajectories that end in the right one, and
the within-component spread relative to the truth (1 = exact; collapse < 1).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from diffusekit.oracle import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from anchor_helpers import sharp_mixture, start_points  # noqa: E402,F401  (shared with the anchor tests)


def reference(oracle: GaussianMixture, x_T: Tensor) -> Tensor:
    """The exact probability-flow ODE solution from t_max to clean data (float64)."""
    return oracle.ode_solution(x_T, oracle.schedule.t_max)


def component_of(oracle: GaussianMixture, x0: Tensor) -> Tensor:
    """Most likely component of each (clean) sample."""
    diff = x0.double()[:, None, :] - oracle.means
    logits = oracle.log_weights - 0.5 * ((diff**2 / oracle.variances) + oracle.variances.log()).sum(-1)
    return logits.argmax(1)


@dataclass(frozen=True)
class Quality:
    rmse: float  # per-coordinate RMSE to the exact ODE solution, all trajectories
    wrong_component: float  # fraction ending in another component than the exact ODE's
    rmse_right: float  # RMSE over the trajectories that end in the right component
    spread: float  # within-component std of the samples / true std (1 = exact)
    log_lik: float  # mean log p0(x) of the samples under the true mixture (nats)


def quality(oracle: GaussianMixture, x: Tensor, ref: Tensor) -> Quality:
    """The figures of issue 4 for samples ``x`` that started where ``ref``'s ODE solutions did."""
    x, ref = x.double().flatten(1), ref.double().flatten(1)
    err = (x - ref).pow(2).mean(1)
    comp, comp_ref = component_of(oracle, x), component_of(oracle, ref)
    right = comp == comp_ref
    spread = ((x - oracle.means[comp]).pow(2).mean(1) / oracle.variances[comp].mean(1)).mean().sqrt()
    return Quality(
        rmse=float(err.mean().sqrt()),
        wrong_component=float((~right).double().mean()),
        rmse_right=float(err[right].mean().sqrt()) if bool(right.any()) else float("nan"),
        spread=float(spread),
        log_lik=float(oracle.log_prob(x).mean()),
    )
