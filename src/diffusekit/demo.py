"""Demos: what `make demo` / `diffusekit demo` run."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .sample import sample
from .schedules import DiscreteSchedule, make_grid
from .solvers import DPMSolver
from .oracle import GaussianMixture


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """k Gaussians on a circle on the DDPM linear schedule: the oracle used by the demo."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, std, DiscreteSchedule("linear"))


def oracle_demo(out_dir: str | Path = "runs/oracle-demo", n: int = 2000, steps: int = 10, seed: int = 0) -> dict[str, Path]:
    """Sample the exact 2-D mixture with DPM-Solver++ (Lu et al. 2022b) at ``steps`` model calls;
    plot the samples beside exact ones and the probability-flow ODE trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mix = ring_mixture()
    solver = DPMSolver()
    grid = make_grid(solver.default_grid, mix.schedule, steps)
    sol = sample(mix, solver, shape=(2,), batch=n, grid=grid, seed=seed, save_trajectory=True, progress=False)
    exact = mix.sample(n, seed=seed + 1)
    ll, ll_exact = mix.log_prob(sol.x).mean().item(), mix.log_prob(exact).mean().item()

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].scatter(exact[:, 0], exact[:, 1], s=2, alpha=0.4, label="exact samples")
    axes[0].scatter(sol.x[:, 0], sol.x[:, 1], s=2, alpha=0.4, label=f"DPM-Solver++, {sol.nfe} NFE")
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


def digits_demo(
    out_dir: str | Path = "runs/demo-digits",
    steps: int | None = None,
    solver: str | None = None,
    nfe: int | None = None,
    progress: bool = True,
) -> dict[str, Path | float]:
    """Train the ``digits`` preset (resuming if the folder has a run), sample 100 digits fast,
    write the sample grid, a denoising strip and the loss curve, and report recognisability."""
    from .config import PRESETS
    from .metrics import logistic_digits_confidence
    from .pipeline import load_run, sample_denoiser, train_run
    from .image_grid import save_image_grid

    cfg = PRESETS["digits"]
    if steps is not None:
        cfg = cfg.with_overrides([f"steps={steps}"])
    out = Path(out_dir)
    train_run(cfg, out, progress=progress)
    run = load_run(out)
    solver = solver or cfg.sampling.solver
    nfe = nfe or cfg.sampling.nfe
    sol = sample_denoiser(run.denoiser, run.info, solver, nfe, 100, seed=0, save_trajectory=True)
    grid_path = save_image_grid(sol.x, out / "samples.png", nrow=10, scale=4)
    # denoising strip: the x0 estimate of 10 samples at each model call
    frames = sol.x0_trajectory[:, :10]  # type: ignore[index]
    strip = frames.transpose(0, 1).reshape(-1, *frames.shape[2:])
    strip_path = save_image_grid(strip, out / "denoising.png", nrow=frames.shape[0], scale=4)
    conf = logistic_digits_confidence(sol.x)
    classes = int((conf.histogram > 0).sum())
    verdict = "meets" if conf.mean_confidence >= 0.8 and classes == 10 else "MISSES"
    print(f"samples: {grid_path}  ({sol.nfe} NFE, solver {solver})")
    print(f"denoising strip (x0 estimate per model call): {strip_path}")
    print(f"loss curve: {out / 'loss.png'}")
    print(
        f"digit classifier (logistic regression on real digits): mean top-class probability "
        f"{conf.mean_confidence:.3f}, {classes}/10 classes, counts {conf.histogram.tolist()}"
    )
    print(f"{verdict} the target (>= 0.8 with all 10 classes)")
    return {"samples": grid_path, "denoising": strip_path, "confidence": conf.mean_confidence, "classes": classes}
