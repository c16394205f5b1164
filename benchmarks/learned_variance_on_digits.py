"""Improved DDPM's learned reverse variance on 8x8 digits: the bound and sample quality at few steps.

    python benchmarks/learned_variance_on_digits.py [--run runs/learned-digits] [--steps 2000] [--threads 1]

Trains (or continues, if ``--run`` holds an unfinished run) the digits preset as a DDPM: linear discrete schedule with
N = 1000 steps, eps prediction, a variance head (``model.learn_variance``) and the hybrid loss
L_simple + 0.001 L_vlb (Nichol & Dhariwal 2021, eq. 16). The stop-gradient makes the mean depend on
L_simple alone, so the same weights with the fixed variances (small = beta tilde, large = beta;
Ho et al. 2020) are the L_simple model: the comparison isolates the variance.

For K = 10, 25, 50, 100 steps on the even trajectory t_i = i / K (``trailing`` indices, the
respacing of Nichol & Dhariwal sec. 4) and each variance (small, large, learned):

- the bound in bits/dim of the K-step reverse process that the sampler runs (``discrete_vlb``,
  discretised Gaussian decoder on the digits' 17-level lattice, ``--bound-items`` digits, its
  standard error over items);
- the digits-classifier Frechet distance (``metrics.classifier``) of ``--samples`` DDPM samples
  against all 1,797 digits (training data; sklearn's digits have no held-out split).

Writes ``results/learned_variance_on_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.config import PRESETS
from diffusekit.evaluate import real_data
from diffusekit.likelihood import discrete_vlb
from diffusekit.metrics.classifier import classifier_frechet_distance
from diffusekit.pipeline import load_run, train_run

RESULTS = Path(__file__).parent / "results"
KS = (10, 25, 50, 100)
VARIANCES = ("small", "large", "learned")
OVERRIDES = ["model.learn_variance=true", "diffusion.loss='hybrid'", "diffusion.schedule='discrete'",
             "diffusion.parameterization='eps'", "diffusion.weighting='eps'", "diffusion.time_sampling='uniform'"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/learned-digits")
    ap.add_argument("--steps", type=int, default=2000, help="training steps if the run is trained here")
    ap.add_argument("--bound-items", type=int, default=300)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS["digits"].with_overrides([*OVERRIDES, f"steps={args.steps}", "name='learned-digits'", "checkpoint_every=250"])
    start = time.time()
    train_run(cfg, args.run, progress=False)  # trains, continues an interrupted run, or finds it done
    trained = time.time() - start
    run = load_run(args.run)
    den = run.denoiser
    data = real_data(run, 1797)
    bits = math.log2(data.levels)  # the 17-level lattice of sklearn's digits
    items = data.x[: args.bound_items]
    rows = []
    for k in KS:
        grid = dk.make_grid("trailing", den.schedule, k)
        for variance in VARIANCES:
            t0 = time.time()
            with torch.no_grad():
                res = discrete_vlb(den, items, steps=k, variance=variance, decoder="discretized", n_bits=bits, seed=1)
                x = dk.sample(den, dk.make_solver("ddpm", variance=variance), grid=grid, shape=run.info.data_shape,
                              batch=args.samples, seed=0, progress=False).x
            bpd = res.bits_per_dim
            row = {"K": k, "variance": variance, "bound_bpd": float(bpd.mean()),
                   "bound_se": float(bpd.std() / math.sqrt(bpd.numel())),
                   "decoder_bpd": float(res.terms[:, 0].mean() / (items[0].numel() * math.log(2))),
                   "classifier_fd": float(classifier_frechet_distance(x.clamp(-1, 1), "digits", real=data.x)),
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(row, flush=True)
    out = {"run": args.run, "steps_trained": run.meta.get("step"), "train_seconds": round(trained, 1),
           "config_overrides": OVERRIDES, "bound_items": args.bound_items, "samples": args.samples, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learned_variance_on_digits.json").write_text(json.dumps(out, indent=1))
    lines = ["| K | variance | bound (bits/dim) | of which decoder | classifier FD |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['K']} | {r['variance']} | {r['bound_bpd']:.3f} +- {r['bound_se']:.3f} | "
                     f"{r['decoder_bpd']:.3f} | {r['classifier_fd']:.2f} |")
    (RESULTS / "learned_variance_on_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
