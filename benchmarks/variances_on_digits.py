"""Optimal reverse variances on a trained digits model: the bound and sample quality at K = 10 ... 100 steps.

    python benchmarks/variances_on_digits.py [--run runs/variances-digits] [--steps 6000] [--threads 1]

A DDPM (1,000-step linear schedule, eps prediction, L_simple) on the 1,797 sklearn 8x8 digits, as
64-vectors with the small residual MLP (a U-Net trains too slowly on the shared benchmark CPU),
trained into ``--run`` if it has no checkpoint. Then, from the run folder (``run_variances``):
Analytic-DPM's noise moments (M = 100 per step, all 1,000 steps), SN and NPR heads (2,000 steps
each on the frozen model), and for K in 10, 25, 50, 100, every variance (small, large, analytic,
sn, npr; learned for a run trained with ``model.learn_variance``) on the even and the DP trajectory:

- the bound (Ho et al. 2020, eq. 5) in bits/dim on 500 real digits with the discretised Gaussian
  decoder of the 17-level data lattice (one noise draw per step and item; its standard error);
- the digits-classifier Frechet distance (CFD) of 1,000 DDPM samples (eta = 1) against all real digits,
  and for Analytic/SN/NPR also with the first-step clip (``clip_first_step``, one data bin 2/16:
  Bao et al. clip that step for sampling only; the bound has no clip).

The DP trajectory is the one that minimises Analytic-DPM's bound; every variance uses it.

Writes ``results/variances_on_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import diffusekit as dk
from diffusekit.config import DataConfig, DiffusionConfig, ModelConfig, OptimConfig, RunConfig
from diffusekit.data import load_dataset
from diffusekit.likelihood import discrete_vlb
from diffusekit.likelihood.trajectory import trajectory_grid, trajectory_times
from diffusekit.metrics.classifier import classifier_frechet_distance
from diffusekit.pipeline import load_run, train_run
from diffusekit.run_variances import head_path, moments_of, run_trajectory, run_variance, save_head
from diffusekit.variance_heads import train_head

RESULTS = Path(__file__).parent / "results"
KS = (10, 25, 50, 100)
VARIANCES = ("small", "large", "analytic", "sn", "npr", "learned")
LEVELS = 17
CLIPPED = ("analytic", "sn", "npr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="run folder (default runs/variances-digits[-learned])")
    ap.add_argument("--steps", type=int, default=6000, help="training steps of the DDPM")
    ap.add_argument("--head-steps", type=int, default=2000)
    ap.add_argument("--n-bound", type=int, default=500)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learn-variance", action="store_true",
                    help="train the DDPM with a variance head and the hybrid loss (adds the 'learned' rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run or ("runs/variances-digits-learned" if args.learn_variance else "runs/variances-digits"))
    start = time.time()
    images = load_dataset("digits")[0]
    if not (run_dir / "checkpoints").is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        np.save(run_dir / "digits64.npy", images.flatten(1).numpy())
        cfg = RunConfig(
            name="variances-digits", steps=args.steps, checkpoint_every=args.steps,
            data=DataConfig(name=str(run_dir / "digits64.npy"), batch_size=128),
            model=ModelConfig(kind="mlp", preset="small", learn_variance=args.learn_variance),
            diffusion=DiffusionConfig(schedule="discrete", parameterization="eps",
                                      time_sampling="uniform" if args.learn_variance else "discrete",
                                      weighting="simple", p_uncond=0.0,
                                      loss="hybrid" if args.learn_variance else "simple"),
            optim=OptimConfig(lr=1e-3, warmup_steps=200, lr_schedule="cosine", ema_half_life=500.0),
        )
        train_run(cfg, run_dir, progress=False)
    train_time = time.time() - start
    run = load_run(run_dir)
    x_train = images.flatten(1)
    t0 = time.time()
    moments_of(run, run_dir, samples=100)
    moments_time = time.time() - t0
    head_times = {}
    for kind in ("sn", "npr"):
        if not head_path(run_dir, kind).is_file():
            t0 = time.time()
            save_head(run_dir, train_head(run.denoiser, x_train, kind, steps=args.head_steps, batch=256))
            head_times[kind] = time.time() - t0
    gen = torch.Generator().manual_seed(0)
    x_bound = x_train[torch.randperm(x_train.shape[0], generator=gen)[: args.n_bound]]
    rows = []
    for variance in VARIANCES:
        if variance == "learned" and not run.denoiser.learns_variance:
            print("learned: not available (this run has no variance head; train one with model.learn_variance = true)")
            continue
        rule = run_variance(run, run_dir, variance)
        clipped = run_variance(run, run_dir, variance, first_step_clip=2 / (LEVELS - 1)) if variance in CLIPPED else None
        for traj in ("even", "dp"):
            for k in KS:
                idx = run_trajectory(run, run_dir, traj, k)
                res = discrete_vlb(run.denoiser, x_bound, times=trajectory_times(run.denoiser.schedule, idx),
                                   variance=rule, decoder="discretized", n_bits=math.log2(LEVELS), seed=1)
                bpd = res.bits_per_dim
                grid = trajectory_grid(run.denoiser.schedule, idx)
                cfd = {name: classifier_frechet_distance(dk.sample(
                    run.denoiser, dk.make_solver("ddpm", variance=r), grid=grid, shape=(64,), batch=args.n_samples,
                    seed=2, progress=False).x.clamp(-1, 1).reshape(-1, 1, 8, 8), "digits")
                    for name, r in (("cfd", rule), ("cfd_clip", clipped)) if r is not None}
                rows.append({"variance": variance, "trajectory": traj, "K": k, "bound_bpd": float(bpd.mean()),
                             "bound_se": float(bpd.std() / math.sqrt(bpd.numel())), **cfd})
                print(json.dumps(rows[-1]), flush=True)
    full = dk.sample(run.denoiser, dk.make_solver("ddpm"), grid=trajectory_grid(run.denoiser.schedule, torch.arange(1, 1001)),
                     shape=(64,), batch=args.n_samples, seed=2, progress=False).x
    RESULTS.mkdir(exist_ok=True)
    meta = {"cfd_full_chain": classifier_frechet_distance(full.clamp(-1, 1).reshape(-1, 1, 8, 8), "digits"),"train_steps": args.steps, "train_seconds": round(train_time), "moments_seconds": round(moments_time),
            "head_seconds": {k: round(v) for k, v in head_times.items()}, "total_seconds": round(time.time() - start),
            "n_bound": args.n_bound, "n_samples": args.n_samples, "real_cfd_floor": real_floor(images)}
    name = "variances_on_digits_learned" if args.learn_variance else "variances_on_digits"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table(rows, meta))
    print(table(rows, meta))


def real_floor(images: torch.Tensor) -> float:
    """CFD of 1,000 real digits against all of them: the floor a perfect sampler would reach."""
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(3))[:1000]
    return classifier_frechet_distance(images[idx], "digits")


def table(rows: list[dict], meta: dict) -> str:
    out = [f"bound in bits/dim (500 digits, 1 SE 0.005-0.02 except 'small' at K = 10, 25) / CFD (1,000 samples; "
           f"real-vs-real floor {meta['real_cfd_floor']:.2f}, all 1,000 steps with 'small' {meta['cfd_full_chain']:.1f}) "
           f"[/ CFD with the first-step clip]; DDPM trained {meta['train_steps']} steps", "",
           "| variance | trajectory | " + " | ".join(f"K={k}" for k in KS) + " |",
           "|---|---|" + "---|" * len(KS)]
    for variance in VARIANCES:
        for traj in ("even", "dp"):
            cells = {r["K"]: r for r in rows if r["variance"] == variance and r["trajectory"] == traj}
            if cells:
                out.append(f"| {variance} | {traj} | " + " | ".join(
                    f"{cells[k]['bound_bpd']:.3f} / {cells[k]['cfd']:.1f}"
                    + (f" / {cells[k]['cfd_clip']:.1f}" if "cfd_clip" in cells[k] else "") if k in cells else "-"
                    for k in KS) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
