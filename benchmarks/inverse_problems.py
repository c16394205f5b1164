"""Inverse problems on the exact oracle: every method against the exact posterior p(x0 | y).

Setting: a 16-d (1 x 4 x 4 "image") mixture of 3 isotropic Gaussians (std 0.6, weights 0.5 / 0.3 /
0.2) on the VP schedule, whose means are high-frequency patterns (zero on every 2 x 2 block
average, so pooling and blurring hide which one it is) plus 0.5 N(0, I); one measurement y = A x_true + n per problem. The
exact posterior (``GaussianMixture.measurement_posterior``) is a 3-component full-covariance
mixture. Per method and problem, 4,000 samples (SMC: one population of that many particles, and
smaller ones for the convergence rows) are compared by ``tasks.compare_to_posterior``: the
log-density gap (± its Monte-Carlo standard error), the mode-weight error (total variation), the
spread (sqrt trace Cov ratio, 1 is right) and the mean error. "exact" rows are 4,000 exact
posterior draws: the Monte-Carlo floor at this sample size.

Run: ``python benchmarks/inverse_problems.py`` (writes benchmarks/results/inverse_problems.json/.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.files import atomic_write_text
from diffusekit.oracle import GaussianMixture
from diffusekit.tasks import DDNM, DPS, AvgPool, GaussianBlur, Mask, Replacement, TwistedSMC, compare_to_posterior, repaint_grid

SHAPE = (1, 4, 4)
STEPS = 1000  # DDPM steps: the sampler's own log-density bias on the prior is in the table
OUT = Path(__file__).resolve().parent / "results"


def make_prior() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    signs = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, -1.0], [1.0, -1.0]], [[1.0, 1.0], [-1.0, -1.0]]], dtype=torch.float64)
    patterns = torch.stack([torch.kron(s, checker).flatten() for s in signs])
    means = 1.5 * patterns + 0.5 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    return GaussianMixture(means, 0.6, dk.VPSchedule(), weights=[0.5, 0.3, 0.2], shape=SHAPE)


def problems() -> dict[str, tuple[object, float]]:
    """name -> (operator, measurement noise std)."""
    return {
        "box inpainting (right half), noiseless": (Mask.box(SHAPE, 0, 2, 4, 2), 0.0),
        "random inpainting (25% kept), noiseless": (Mask.random(SHAPE, 0.25, seed=1), 0.0),
        "2x super-resolution, noise 0.1": (AvgPool(2), 0.1),
        "deblurring (std 1 px), noise 0.1": (GaussianBlur(1.0, (4, 4), cutoff=0.1), 0.1),
        "random inpainting (25% kept), noise 0.1": (Mask.random(SHAPE, 0.25, seed=1), 0.1),
    }


def methods(gm: GaussianMixture, op, y: torch.Tensor, noise: float, particles: int) -> dict[str, tuple]:
    """name -> (denoiser, solver, grid, constraints, batch)."""
    base = dk.make_grid("uniform_t", gm.schedule, STEPS)
    dps = DPS(gm, op, y, zeta=1.0)
    out = {
        f"replacement (DDPM {STEPS})": (gm, "ddpm", base, [Replacement(op, y)], None),
        "RePaint (DDPM 250, j=10, r=10)": (gm, "ddpm", repaint_grid(gm.schedule, 250, 10, 10), [Replacement(op, y)], None),
        f"DDNM (DDPM {STEPS})": (gm, "ddpm", base, [DDNM(op, y)], None),
        f"DPS (DDPM {STEPS}, zeta 1)": (dps, "ddpm", base, [dps], None),
    }
    if noise > 0:
        for n in (100, 1000, particles):
            out[f"twisted SMC (DDPM {STEPS}), {n} particles"] = (gm, "ddpm", base, [TwistedSMC(op, y, noise)], n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gm = make_prior()
    free = dk.sample(gm, dk.make_solver("ddpm"), steps=STEPS, shape=SHAPE, batch=args.samples, dtype=torch.float64, progress=False).x
    bias = float(gm.log_prob(free).mean() - gm.log_prob(gm.sample(100_000, seed=4)).mean())
    print(f"DDPM {STEPS} on the prior: log-density gap {bias:+.3f}", flush=True)
    rows = [{"problem": "none (the prior)", "method": f"unconditional DDPM {STEPS}", "nfe": STEPS, "seconds": 0.0,
             "log_density_gap": bias, "log_density_se": float("nan"), "mode_weight_error": float("nan"),
             "spread": float("nan"), "mean_error": float("nan"), "n": args.samples}]
    for pname, (op, noise) in problems().items():
        x_true = gm.sample(1, seed=11)
        y = op(x_true)[0]
        if noise > 0:
            y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
        post = gm.measurement_posterior(op.matrix(SHAPE), y.flatten(), noise)
        ref = post.sample(100_000, seed=1)
        exact = compare_to_posterior(post, post.sample(args.samples, seed=2), ref)
        rows.append({"problem": pname, "method": "exact posterior draws", "nfe": 0, "seconds": 0.0, **exact.as_dict()})
        print(pname, "posterior weights", [round(w, 3) for w in post.weights.tolist()], flush=True)
        for mname, (den, solver, grid, cons, batch) in methods(gm, op, y, noise, args.samples).items():
            start = time.perf_counter()
            sol = dk.sample(den, dk.make_solver(solver), grid=grid, shape=SHAPE, batch=batch or args.samples,
                            constraints=cons, dtype=torch.float64, seed=3, progress=False)
            seconds = time.perf_counter() - start
            r = compare_to_posterior(post, sol.x, ref)
            rows.append({"problem": pname, "method": mname, "nfe": sol.nfe, "seconds": round(seconds, 2), **r.as_dict()})
            print(f"  {mname:40s} nfe={sol.nfe:5d} gap={r.log_density_gap:+.3f}±{r.log_density_se:.3f} "
                  f"modes={r.mode_weight_error:.3f} spread={r.spread:.3f} mean={r.mean_error:.3f} {seconds:.1f}s", flush=True)
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "inverse_problems.json", json.dumps({"samples": args.samples, "rows": rows}, indent=1))
    lines = ["| problem | method | NFE | log-density gap | mode-weight error | spread | mean error | n | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['log_density_gap']:+.3f} ± {r['log_density_se']:.3f} | "
                     f"{r['mode_weight_error']:.3f} | {r['spread']:.3f} | {r['mean_error']:.3f} | {r['n']} | {r['seconds']} |")
    atomic_write_text(OUT / "inverse_problems.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
