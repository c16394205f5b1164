"""Optimal reverse variances on a trained model: the bound and sample quality at K = 10 ... 100 steps.

    python benchmarks/variances_on_digits.py [--run runs/variances-digits] [--steps 6000] [--threads 1]
    python benchmarks/variances_on_digits.py --run runs/fashion-joint --threads 1 [counts: see --help]

Digits (the default): a DDPM (1,000-step linear schedule, eps prediction, L_simple) on the 1,797
sklearn 8x8 digits, as 64-vectors with the small residual MLP (a U-Net trains too slowly on the
shared benchmark CPU), trained into ``--run`` if it has no checkpoint. Fashion-MNIST: ``--run`` a
trained DDPM run on Fashion-MNIST (the shared model of ``fashion_common``, class-conditional with
label dropout; every model call here gets the item's class label, as ``run_variances`` does for a
conditional run). Then, from the run folder (``run_variances``): Analytic-DPM's noise moments
(M per step, all 1,000 steps), SN and NPR heads (trained on the frozen model), and for K in 10, 25,
50, 100, every variance (small, large, analytic, sn, npr; learned for a run trained with
``model.learn_variance``) on the even and the DP trajectory:

- the bound (Ho et al. 2020, eq. 5) in bits/dim with the discretised Gaussian decoder of the data
  lattice (17 levels for digits, 256 for Fashion): digits on 500 training digits, Fashion on
  ``--n-bound`` test images (one noise draw per step and item; its standard error). The model's
  calls are shared by every variance of one trajectory (the same items and noise; ``Memo``);
- sample quality of DDPM samples (eta = 1): digits, the digits-classifier Frechet distance (CFD) of
  1,000 samples against all real digits, and for Analytic/SN/NPR also with the first-step clip
  (``clip_first_step``, one data bin 2/16: Bao et al. clip that step for sampling only; the bound has
  no clip); Fashion, what ``diffusekit sample --variance`` draws (the clip at one bin, 2/255, for
  Analytic/SN/NPR), ``--n-samples`` per cell, 1/10 per class: FID against the t10k reference of
  ``fashion_common`` (at ``--fid-ks``) and the Fashion-classifier Frechet distance against the test
  split (at ``--quality-ks``).

The DP trajectory is the one that minimises Analytic-DPM's bound; every variance uses it.

Writes ``results/variances_on_digits.{json,md}`` (Fashion: ``results/variances_on_fashion.{json,md}``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.config import DataConfig, DiffusionConfig, ModelConfig, OptimConfig, RunConfig
from diffusekit.data import load_dataset
from diffusekit.denoiser import Cond, DenoiserWrapper
from diffusekit.evaluate import real_data
from diffusekit.likelihood import discrete_vlb
from diffusekit.likelihood.trajectory import trajectory_grid, trajectory_times
from diffusekit.metrics.classifier import classifier_features, classifier_frechet_distance
from diffusekit.metrics.frechet import compute_stats, frechet_distance
from diffusekit.parameterization import Prediction
from diffusekit.pipeline import LoadedRun, load_run, train_run
from diffusekit.run_variances import head_path, moments_of, run_trajectory, run_variance, save_head, train_run_head
from diffusekit.variance_heads import train_head

RESULTS = Path(__file__).parent / "results"
KS = (10, 25, 50, 100)
VARIANCES = ("small", "large", "analytic", "sn", "npr", "learned")
TRAJECTORIES = ("even", "dp")
LEVELS = 17
CLIPPED = ("analytic", "sn", "npr")
FASHION = ("fashion", "fashion-mnist", "fashion_mnist")


class Memo(DenoiserWrapper):
    """The model, remembering each call's prediction by its exact inputs: the bounds of every variance
    on one trajectory see the same items and noise, so they share one set of model calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__(inner)
        self.seen: dict[str, Prediction] = {}

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        h = hashlib.sha1(x.detach().cpu().numpy().tobytes())
        for v in (t, cond):
            h.update(b"|" + (b"" if v is None else torch.as_tensor(v).detach().cpu().numpy().tobytes()))
        key = h.hexdigest()
        if key not in self.seen:
            self.seen[key] = self.inner(x, t, cond)
        return self.seen[key]


@dataclass
class Bench:
    """What one data set needs: items for the bound (and their labels), the lattice, the labels to
    sample with, whether to sample with and without the first-step clip, and the quality metrics."""

    name: str
    x_bound: Tensor
    cond_bound: Tensor | None
    levels: int
    shape: tuple[int, ...]
    sample_cond: Tensor | None
    both_clips: bool
    quality: Callable[[Tensor, int], dict[str, float]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="run folder (default runs/variances-digits[-learned])")
    ap.add_argument("--steps", type=int, default=6000, help="training steps of the digits DDPM")
    ap.add_argument("--head-steps", type=int, default=2000)
    ap.add_argument("--head-batch", type=int, default=256)
    ap.add_argument("--moments", type=int, default=100, help="Monte-Carlo samples M per step for Analytic-DPM")
    ap.add_argument("--n-bound", type=int, default=500)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--quality-ks", default="10,25,50,100", help="K at which samples are drawn and scored")
    ap.add_argument("--fid-ks", default="10,25,50,100", help="Fashion: K at which FID is computed too")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--learn-variance", action="store_true",
                    help="train the DDPM with a variance head and the hybrid loss (adds the 'learned' rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run or ("runs/variances-digits-learned" if args.learn_variance else "runs/variances-digits"))
    start = time.time()
    if not (run_dir / "checkpoints").is_dir():
        train_digits(run_dir, args.steps, args.learn_variance)
    train_time = time.time() - start
    run = load_run(run_dir)
    fashion = run.config.data.name in FASHION
    bench = fashion_bench(run, args) if fashion else digits_bench(args)
    t0 = time.time()
    call_ms = model_call_ms(run, bench)
    moments_of(run, run_dir, samples=args.moments)
    moments_time = time.time() - t0
    head_times = {}
    for kind in ("sn", "npr"):
        if not head_path(run_dir, kind).is_file():
            t0 = time.time()
            if fashion:
                train_run_head(run_dir, kind, steps=args.head_steps, batch=args.head_batch, progress=False)
            else:
                save_head(run_dir, train_head(run.denoiser, load_dataset("digits")[0].flatten(1), kind,
                                              steps=args.head_steps, batch=args.head_batch))
            head_times[kind] = time.time() - t0
    quality_ks = {int(k) for k in args.quality_ks.split(",") if k}
    variances = [v for v in VARIANCES if v != "learned" or run.denoiser.learns_variance]
    if "learned" not in variances:
        print("learned: not available (this run has no variance head; train one with model.learn_variance = true)")
    rules = {v: run_variance(run, run_dir, v) for v in variances}
    clipped = {v: run_variance(run, run_dir, v, first_step_clip=2 / (bench.levels - 1)) for v in CLIPPED}
    memo = Memo(run.denoiser)
    rows, times = [], {"bound": 0.0, "sampling": 0.0, "quality": 0.0}
    meta = {"train_steps": run.meta.get("step", args.steps) if fashion else args.steps, "train_seconds": round(train_time),
            "moments_seconds": round(moments_time), "head_seconds": {k: round(v) for k, v in head_times.items()},
            "n_bound": int(bench.x_bound.shape[0]), "n_samples": args.n_samples}
    if fashion:
        meta.update({"run": str(run_dir), "moments_M": args.moments, "head_steps": args.head_steps,
                     "head_batch": args.head_batch, "quality_ks": sorted(quality_ks),
                     "fid_ks": sorted(int(k) for k in args.fid_ks.split(",") if k), "model_call_ms": round(call_ms, 2)})
    name = bench.name + ("_learned" if args.learn_variance and not fashion else "")
    for traj in TRAJECTORIES:  # the bound of every cell first (one set of model calls per trajectory), ...
        for k in KS:
            idx = run_trajectory(run, run_dir, traj, k)
            memo.seen.clear()
            for variance in variances:
                t0 = time.time()
                res = discrete_vlb(memo, bench.x_bound, cond=bench.cond_bound, times=trajectory_times(run.denoiser.schedule, idx),
                                   variance=rules[variance], decoder="discretized", n_bits=math.log2(bench.levels), seed=1)
                bpd = res.bits_per_dim
                times["bound"] += time.time() - t0
                rows.append({"variance": variance, "trajectory": traj, "K": k, "bound_bpd": float(bpd.mean()),
                             "bound_se": float(bpd.std() / math.sqrt(bpd.numel()))})
                print(json.dumps(rows[-1]), flush=True)
    memo.seen.clear()
    rows.sort(key=lambda r: (VARIANCES.index(r["variance"]), TRAJECTORIES.index(r["trajectory"]), KS.index(r["K"])))
    for k in sorted(quality_ks):  # ... then sample quality, fewest steps first (written after each cell)
        for traj in TRAJECTORIES:
            grid = trajectory_grid(run.denoiser.schedule, run_trajectory(run, run_dir, traj, k))
            for variance in variances:
                row = next(r for r in rows if (r["variance"], r["trajectory"], r["K"]) == (variance, traj, k))
                samplers = (("", rules[variance]), ("_clip", clipped.get(variance))) if bench.both_clips else (
                    ("", clipped.get(variance, rules[variance])),)
                for suffix, rule in samplers:
                    if rule is None:
                        continue
                    t0 = time.time()
                    x = dk.sample(run.denoiser, dk.make_solver("ddpm", variance=rule), grid=grid, shape=bench.shape,
                                  batch=args.n_samples, seed=2, cond=bench.sample_cond, progress=False).x
                    t1 = time.time()
                    row.update({f"{key}{suffix}": val for key, val in bench.quality(x, k).items()})
                    times["sampling"] += t1 - t0
                    times["quality"] += time.time() - t1
                print(json.dumps(row), flush=True)
                if fashion:
                    write(name, rows, {**meta, "phase_seconds": {k: round(v) for k, v in times.items()}}, fashion)
    if fashion:
        meta.update({"phase_seconds": {k: round(v) for k, v in times.items()},
                     **fashion_floor(args.n_samples, bool(meta["fid_ks"]))})
    else:
        full = dk.sample(run.denoiser, dk.make_solver("ddpm"), grid=trajectory_grid(run.denoiser.schedule, torch.arange(1, 1001)),
                         shape=(64,), batch=args.n_samples, seed=2, progress=False).x
        meta.update({"cfd_full_chain": classifier_frechet_distance(full.clamp(-1, 1).reshape(-1, 1, 8, 8), "digits"),
                     "real_cfd_floor": real_floor(load_dataset("digits")[0])})
    meta["total_seconds"] = round(time.time() - start)
    print(write(name, rows, meta, fashion))


def write(name: str, rows: list[dict], meta: dict, fashion: bool) -> str:
    """Write ``results/<name>.{json,md}`` and return the table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = fashion_table(rows, meta) if fashion else table(rows, meta)
    (RESULTS / f"{name}.md").write_text(text)
    return text


def train_digits(run_dir: Path, steps: int, learn_variance: bool) -> None:
    """Train the digits DDPM (64-vectors, small MLP) into ``run_dir``."""
    images = load_dataset("digits")[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    np.save(run_dir / "digits64.npy", images.flatten(1).numpy())
    cfg = RunConfig(
        name="variances-digits", steps=steps, checkpoint_every=steps,
        data=DataConfig(name=str(run_dir / "digits64.npy"), batch_size=128),
        model=ModelConfig(kind="mlp", preset="small", learn_variance=learn_variance),
        diffusion=DiffusionConfig(schedule="discrete", parameterization="eps",
                                  time_sampling="uniform" if learn_variance else "discrete",
                                  weighting="simple", p_uncond=0.0,
                                  loss="hybrid" if learn_variance else "simple"),
        optim=OptimConfig(lr=1e-3, warmup_steps=200, lr_schedule="cosine", ema_half_life=500.0),
    )
    train_run(cfg, run_dir, progress=False)


def digits_bench(args: argparse.Namespace) -> Bench:
    """500 random training digits for the bound (17-level lattice); CFD with and without the clip."""
    x_train = load_dataset("digits")[0].flatten(1)
    gen = torch.Generator().manual_seed(0)
    x_bound = x_train[torch.randperm(x_train.shape[0], generator=gen)[: args.n_bound]]

    def quality(x: Tensor, k: int) -> dict[str, float]:
        return {"cfd": classifier_frechet_distance(x.clamp(-1, 1).reshape(-1, 1, 8, 8), "digits")}

    return Bench("variances_on_digits", x_bound, None, LEVELS, (64,), None, True, quality)


def fashion_bench(run: LoadedRun, args: argparse.Namespace) -> Bench:
    """``--n-bound`` random test images and their labels (256 levels); samples 1/10 per class;
    FID (``fashion_common.fid``, at ``--fid-ks``) and the Fashion-classifier FD."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fashion_common import fid

    if args.n_samples % 10:
        raise ValueError(f"--n-samples must be a multiple of 10 (one tenth per class), got {args.n_samples}")
    data = real_data(run, args.n_bound, seed=0)
    if data.levels != 256:
        raise ValueError(f"expected 8-bit Fashion-MNIST test images, got a lattice of {data.levels} levels")
    labels = run.config.data.labels
    fid_ks = {int(k) for k in args.fid_ks.split(",") if k}

    def quality(x: Tensor, k: int) -> dict[str, float]:
        out = {"cfd": fashion_cfd(x.clamp(-1, 1))}
        if k in fid_ks:
            out["fid"] = fid(x)["all"]
        return out

    return Bench("variances_on_fashion", data.x, data.labels if labels else None, 256, tuple(run.info.data_shape),
                 torch.arange(10).repeat_interleave(args.n_samples // 10) if labels else None, False, quality)


@lru_cache(maxsize=1)
def _fashion_test_stats():
    return compute_stats(classifier_features("fashion_mnist"), load_dataset("fashion", split="test")[0], 1024, progress=False)


def fashion_cfd(x: Tensor) -> float:
    """``classifier_frechet_distance(x, "fashion_mnist")`` with the test split's statistics computed once."""
    return frechet_distance(compute_stats(classifier_features("fashion_mnist"), x, 1024, progress=False), _fashion_test_stats())


def fashion_floor(n: int, with_fid: bool) -> dict[str, float]:
    """CFD (and FID) of ``n`` real training images (1/10 per class): what a perfect sampler would reach at this n."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fashion_common import fid

    x, y = load_dataset("fashion")
    idx = torch.cat([torch.nonzero(y == c).flatten()[: n // 10] for c in range(10)])
    return {"real_cfd_floor": fashion_cfd(x[idx]), **({"real_fid_floor": fid(x[idx])["all"]} if with_fid else {})}


def model_call_ms(run: LoadedRun, bench: Bench) -> float:
    """Wall milliseconds per item of one batched model call of 64 items (for choosing the counts)."""
    x = torch.randn(64, *bench.shape)
    cond = None if bench.sample_cond is None else torch.arange(64) % 10
    with torch.no_grad():
        t0 = time.time()
        run.denoiser(x, torch.full((64,), 0.5), cond)
    return (time.time() - t0) / 64 * 1000


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
        for traj in TRAJECTORIES:
            cells = {r["K"]: r for r in rows if r["variance"] == variance and r["trajectory"] == traj}
            if cells:
                out.append(f"| {variance} | {traj} | " + " | ".join(
                    f"{cells[k]['bound_bpd']:.3f} / {cells[k]['cfd']:.1f}"
                    + (f" / {cells[k]['cfd_clip']:.1f}" if "cfd_clip" in cells[k] else "") if k in cells else "-"
                    for k in KS) + " |")
    return "\n".join(out) + "\n"


def fashion_table(rows: list[dict], meta: dict) -> str:
    """bound (SE) / FID / CFD per cell; '-' where a metric was not computed."""
    se = [r["bound_se"] for r in rows]
    out = [f"bound in bits/dim ({meta['n_bound']} test images, 1 SE {min(se):.3f}-{max(se):.3f}) / FID / Fashion-classifier "
           f"FD ({meta['n_samples']} samples per cell, 1/10 per class; real-vs-reference floor at this n: FID "
           f"{meta.get('real_fid_floor', math.nan):.1f}, CFD {meta.get('real_cfd_floor', math.nan):.1f}); model {meta['run']}, "
           f"trained {meta['train_steps']} steps", "",
           "| variance | trajectory | " + " | ".join(f"K={k}" for k in KS) + " |",
           "|---|---|" + "---|" * len(KS)]

    def cell(r: dict) -> str:
        return " / ".join([f"{r['bound_bpd']:.3f}"] + [f"{r[m]:.1f}" if m in r else "-" for m in ("fid", "cfd")])

    for variance in VARIANCES:
        for traj in TRAJECTORIES:
            cells = {r["K"]: r for r in rows if r["variance"] == variance and r["trajectory"] == traj}
            if cells:
                out.append(f"| {variance} | {traj} | " + " | ".join(cell(cells[k]) if k in cells else "-" for k in KS) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
