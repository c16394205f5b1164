"""diffusers' RePaintScheduler beside diffusekit's RePaint, against the exact posterior.

Same prior (the tests' 3-component mixture in 4 dimensions as 2x2 images, on the DDPM linear betas),
same measurement (only the top-left pixel is seen, y = 1: two modes explain it), same exact posterior
(``GaussianMixture.measurement_posterior``) and the same numbers (``compare_to_posterior``, 4,000
samples each). diffusers runs its RePaint pipeline loop (step / undo_step) with eta = 1 (DDPM noise,
as the paper) and clip_sample off, on the oracle's exact eps at its timesteps
(tests/anchor_helpers.DiffusersOracle); diffusekit runs ``Replacement`` on ``repaint_grid`` with DDPM.

    PYTHONPATH=src python benchmarks/repaint_vs_diffusers.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture
from diffusekit.tasks import Mask, Replacement, compare_to_posterior, repaint_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.anchor_helpers import DiffusersOracle, load_diffusers  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE = (1, 2, 2)
MEANS = [[1.5, 1.5, -1.0, -1.0], [-1.5, -1.5, 1.0, 1.0], [1.5, -1.5, 1.5, -1.5]]
SETTINGS = [(50, 5, 1), (50, 5, 5), (50, 5, 20), (250, 10, 10)]  # steps, jump length, resamples


def diffusers_repaint(oracle: GaussianMixture, keep: torch.Tensor, y_image: torch.Tensor, n: int, steps: int,
                      jump: int, resamples: int, seed: int) -> tuple[torch.Tensor, int]:
    diffusers = load_diffusers()
    sched = diffusers.RePaintScheduler(num_train_timesteps=1000, beta_schedule="linear", eta=1.0, clip_sample=False)
    sched.set_timesteps(steps, jump_length=jump, jump_n_sample=resamples)
    model = DiffusersOracle(oracle)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    mask = keep.double()[None]
    original = y_image.expand(n, *SHAPE)
    t_last = sched.timesteps[0] + 1
    for t in sched.timesteps:
        if t < t_last:
            x = sched.step(model(x, t), t, x, original, mask, generator=g).prev_sample
        else:
            x = sched.undo_step(x, t_last, generator=g)
        t_last = t
    return x, model.calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    oracle = GaussianMixture(MEANS, 0.8, dk.DiscreteSchedule("linear"), weights=[0.5, 0.3, 0.2], shape=SHAPE)
    keep = torch.tensor([[[True, False], [False, False]]])
    op = Mask(keep)
    y = torch.tensor([1.0], dtype=torch.float64)
    post = oracle.measurement_posterior(op.matrix(SHAPE), y, 0.0)
    reference = post.sample(100_000, seed=1)
    rows = []
    for steps, jump, resamples in SETTINGS:
        t = time.time()
        x, nfe = diffusers_repaint(oracle, keep, op.T(y[None]), args.n, steps, jump, resamples, seed=0)
        rows.append({"sampler": "diffusers RePaintScheduler", "steps": steps, "jump": jump, "resamples": resamples,
                     "nfe": nfe, "seconds": time.time() - t, **compare_to_posterior(post, x, reference).as_dict()})
        t = time.time()
        grid = repaint_grid(oracle.schedule, steps, jump, resamples) if resamples > 1 else dk.make_grid(
            "uniform_t", oracle.schedule, steps)
        sol = dk.sample(oracle, dk.make_solver("ddpm"), grid=grid, shape=SHAPE, batch=args.n,
                        constraints=[Replacement(op, y)], dtype=torch.float64, seed=0, progress=False)
        rows.append({"sampler": "diffusekit repaint_grid + Replacement (ddpm)", "steps": steps, "jump": jump,
                     "resamples": resamples, "nfe": sol.nfe, "seconds": time.time() - t,
                     **compare_to_posterior(post, sol.x, reference).as_dict()})
        for r in rows[-2:]:
            print(f"{r['sampler']:<46} {steps:>4} j={jump:<3} r={resamples:<3} NFE {r['nfe']:>5}  gap "
                  f"{r['log_density_gap']:+.3f}+-{r['log_density_se']:.3f}  mode-w err {r['mode_weight_error']:.3f}  "
                  f"spread {r['spread']:.3f}  mean err {r['mean_error']:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "repaint_vs_diffusers.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| sampler | steps | jump | resamples | NFE | log-density gap | mode-weight error | spread | mean error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['jump']} | {r['resamples']} | {r['nfe']} | "
              f"{r['log_density_gap']:+.3f} +- {r['log_density_se']:.3f} | {r['mode_weight_error']:.3f} | "
              f"{r['spread']:.3f} | {r['mean_error']:.3f} |")


if __name__ == "__main__":
    main()
