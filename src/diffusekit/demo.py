"""Demos: what `make demo` / `diffusekit demo` run."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .sample import sample
from .schedules import DiscreteSchedule, make_grid
from .solvers import DDIM
from .testing import GaussianMixture


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """k Gaussians on a circle on the DDPM linear schedule: the oracle used by the demo."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, std, DiscreteSchedule("linear"))


def oracle_demo(out_dir: str | Path = "runs/oracle-demo", n: int = 2000, steps: int = 20, seed: int = 0) -> dict[str, Path]:
    """Sample the exact 2-D mixture with a deterministic solver; plot samples and ODE trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mix = ring_mixture()
    grid = make_grid("uniform_lambda", mix.schedule, steps)
    sol = sample(mix, DDIM(), shape=(2,), batch=n, grid=grid, seed=seed, save_trajectory=True, progress=False)
    exact = mix.sample(n, seed=seed + 1)
    ll, ll_exact = mix.log_prob(sol.x).mean().item(), mix.log_prob(exact).mean().item()

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].scatter(exact[:, 0], exact[:, 1], s=2, alpha=0.4, label="exact samples")
    axes[0].scatter(sol.x[:, 0], sol.x[:, 1], s=2, alpha=0.4, label=f"DDIM, {sol.nfe} NFE")
    axes[0].set_title(f"mean log p: samples {ll:.3f}, exact {ll_exact:.3f}")
    axes[0].legend(markerscale=5)
    traj = sol.trajectory[:, :60].double()
    scale = torch.sqrt(sol.grid.alpha**2 + sol.grid.sigma**2)[:, None, None]
    traj = traj / scale  # variance-normalised coordinates keep x_T and x_0 on one plot
    for j in range(traj.shape[1]):
        axes[1].plot(traj[:, j, 0], traj[:, j, 1], lw=0.6, color="tab:gray")
    axes[1].scatter(traj[0, :, 0], traj[0, :, 1], s=6, label="x_T")
    axes[1].scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, label="x_0")
    axes[1].set_title("probability-flow ODE trajectories")
    axes[1].legend(markerscale=2)
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    path = out / "oracle_samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"oracle demo: {n} samples, {sol.nfe} NFE, mean log p {ll:.3f} (exact samples {ll_exact:.3f})")
    print(f"wrote {path}")
    return {"samples": path}
