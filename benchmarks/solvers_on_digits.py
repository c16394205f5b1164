"""The deterministic solvers on a trained model: 8x8 digits, where no exact oracle exists.

    python benchmarks/solvers_on_digits.py [--run runs/demo-digits]

Two figures per solver and NFE, from the same prior draws:

- RMSE to the converged ODE solution (DPM-Solver 3M on 300 uniform log-SNR steps; it agrees
  with UniPC on 200 steps to ~1e-5), over 1,000 samples: how well the solver solves the
  probability-flow ODE of a real network;
- the classifier Frechet distance (``diffusekit.metrics``, the digits classifier's features)
  of 3,000 samples against all 1,797 real digits, averaged over two seeds: sample quality.
  A less accurate solver can score a lower distance than the converged ODE (its error may
  move samples toward the data), so read it next to the converged value.

Trains the digits preset into ``--run`` first if that folder has no checkpoint (~3 min).
Writes ``results/solvers_on_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.config import PRESETS
from diffusekit.evaluate import real_data
from diffusekit.metrics.classifier import classifier_frechet_distance
from diffusekit.pipeline import load_run, train_run

RESULTS = Path(__file__).parent / "results"
SOLVERS = ("gaussian_pc", "unipc", "dpm_solver", "dpmpp_2m", "deis", "ipndm", "ddim")
NFES = (5, 6, 8, 10, 15, 20)
FD_SOLVERS = ("gaussian_pc", "unipc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo-digits")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (Path(args.run) / "checkpoints").is_dir():
        train_run(PRESETS["digits"], args.run)
    run = load_run(args.run)
    den, shape = run.denoiser, run.info.data_shape
    real = real_data(run, 1797).x

    def draw(solver: dk.Solver, grid: dk.Grid, n: int, seed: int) -> torch.Tensor:
        return dk.sample(den, solver, shape=shape, batch=n, grid=grid, seed=seed, progress=False).x

    start = time.time()
    ref = draw(dk.make_solver("dpm_solver"), dk.make_grid("uniform_lambda", den.schedule, 300), 1000, 0)
    check = draw(dk.make_solver("unipc"), dk.make_grid("uniform_lambda", den.schedule, 200), 1000, 0)
    rows: list[dict] = []
    converged_fd = [classifier_frechet_distance(
        draw(dk.make_solver("unipc"), dk.make_grid("uniform_lambda", den.schedule, 100), 3000, seed), "digits", real=real)
        for seed in (0, 1)]
    for label in SOLVERS + tuple(f"{s} end=gaussian" for s in ("ddim", "deis", "unipc")):
        name, *opt = label.split()
        solver = dk.make_solver(name, **({"end": "gaussian"} if opt else {}))
        for nfe in NFES:
            grid = dk.make_grid(solver.default_grid, den.schedule, nfe)
            row = {"solver": label, "nfe": nfe,
                   "rmse_to_converged": float((draw(solver, grid, 1000, 0) - ref).pow(2).mean().sqrt())}
            if label in FD_SOLVERS:
                row["classifier_fd"] = sum(classifier_frechet_distance(draw(solver, grid, 3000, seed), "digits", real=real)
                                           for seed in (0, 1)) / 2
            rows.append(row)
            print(row, flush=True)
    data = {
        "run": args.run, "steps_trained": run.meta.get("step"), "reference": "dpm_solver 3M, 300 uniform_lambda steps",
        "reference_vs_unipc_200": float((ref - check).pow(2).mean().sqrt()),
        "converged_classifier_fd": sum(converged_fd) / 2, "seconds": time.time() - start, "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "solvers_on_digits.json").write_text(json.dumps(data, indent=1))
    lines = [f"Run `{args.run}` ({data['steps_trained']} steps). RMSE to the converged ODE solution (1,000 samples; "
             f"reference check {data['reference_vs_unipc_200']:.1e}) / classifier FD (3,000 samples x 2 seeds; "
             f"converged ODE: {data['converged_classifier_fd']:.2f}).", "",
             "| solver | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for label in dict.fromkeys(r["solver"] for r in rows):
        cells = []
        for r in (r for r in rows if r["solver"] == label):
            fd = f" / {r['classifier_fd']:.2f}" if "classifier_fd" in r else ""
            cells.append(f"{r['rmse_to_converged']:.4f}{fd}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (RESULTS / "solvers_on_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
