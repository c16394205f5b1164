"""Likelihood and FID of the trained digits and Fashion-MNIST models (CPU-budget models).

Trains (or resumes / reuses) two runs through ``pipeline.train_run``:

- ``digits``: ``PRESETS["digits"]`` as it is at run time (its step count is read,
  not fixed here). sklearn's digits have no held-out split in training (the preset
  trains on all 1,797 images), so its "test" figures are on training images.
- ``fashion``: the ``fashion`` preset cut to a CPU budget (:data:`FASHION_BUDGET`):
  the ``tiny`` U-Net instead of ``small`` (``small`` measured 12-17 s per batch-64
  step on one loaded core), batch 32, and a short schedule with matching
  warm-up and EMA half-life. Trains on the 60k train split; evaluated on t10k.

Then ``diffusekit.evaluate.evaluate_run`` reports, per model: ODE bits/dim
(uniform dequantization on the data's own lattice: 17 levels for digits,
256 for Fashion-MNIST), discrete/continuous VLB bits/dim on test data, and the
Inception FID and classifier-feature Frechet distance of samples. Figures go to
``benchmarks/results/eval_trained_models.json``; the RESULTS.md section is
written by hand from them.

Run: ``python benchmarks/eval_trained_models.py`` (training Fashion alone in the
background: ``nohup python benchmarks/eval_trained_models.py --train-only fashion --threads 1 &``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffusekit.config import PRESETS, RunConfig
from diffusekit.pipeline import train_run

ROOT = Path(__file__).resolve().parents[1]
#: Overrides that turn the ``fashion`` preset into a ~15-20 min single-core run.
FASHION_BUDGET = (
    "steps=900", "model.preset=tiny", "data.batch_size=32", "optim.lr=1e-3", "optim.warmup_steps=50",
    "optim.ema_half_life=60.0", "checkpoint_every=100", "log_every=25",
)


def run_configs() -> dict[str, RunConfig]:
    """The two configurations, read from the presets at run time."""
    return {"digits": PRESETS["digits"], "fashion": PRESETS["fashion"].with_overrides(list(FASHION_BUDGET))}


def train(name: str, run_dir: Path, progress: bool) -> float:
    """Train or resume ``name`` in ``run_dir``; returns the wall time of this call in seconds."""
    start = time.perf_counter()
    train_run(run_configs()[name], run_dir, resume=True, progress=progress)
    return time.perf_counter() - start


def real_baseline(run_dir: Path, metric: str, n: int, progress: bool) -> float:
    """``fid`` or ``cfd`` of ``n`` real images that are not the reference images: the floor at this n.

    Fashion-MNIST: train-split images against the test-split reference; digits: a disjoint subset.
    """
    from diffusekit.evaluate import classifier_metrics, feature_metrics, real_data
    from diffusekit.pipeline import load_run, load_training_data

    run = load_run(run_dir)
    data = real_data(run, n)
    pool, _ = load_training_data(run.config)
    if data.held_out:
        other = pool[torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(1))[:n]]
    else:  # the reference is a seeded subset of the same pool: take the images it left out
        rest = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(0))[n:]
        other = pool[rest[:n]]
    family = feature_metrics if metric == "fid" else classifier_metrics
    return family(other, data, [metric], progress=progress)[metric].value


def evaluate_model(run_dir: Path, n_fid: int, n_cfd: int, n_nll: int, nll_options: dict[str, Any],
                   progress: bool) -> dict[str, Any]:
    """The three evaluate_run calls (Inception, classifier, likelihood), real baselines and the budget."""
    from diffusekit.evaluate import evaluate_run
    from diffusekit.train import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    entry: dict[str, Any] = {
        "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
        "config": RunConfig.from_toml(run_dir / "config.toml").to_dict(),
        "training": {"steps": rows[-1]["step"] if rows else None,
                     "train_seconds": rows[-1].get("elapsed") if rows else None},
    }
    for label, metrics, n, opts in (("inception", "fid,kid", n_fid, None), ("classifier", "cfd,is", n_cfd, None),
                                    ("likelihood", "nll,vlb", n_nll, nll_options)):
        start = time.perf_counter()
        entry[label] = evaluate_run(run_dir, metrics, n=n, progress=progress, nll_options=opts)
        entry[label]["wall_seconds"] = round(time.perf_counter() - start, 1)
    entry["real_baseline"] = {"fid": real_baseline(run_dir, "fid", n_fid, progress), "n_fid": n_fid,
                              "cfd": real_baseline(run_dir, "cfd", n_cfd, progress), "n_cfd": n_cfd}
    return entry


def summary_line(name: str, entry: dict[str, Any]) -> str:
    m = {**entry["inception"]["metrics"], **entry["classifier"]["metrics"], **entry["likelihood"]["metrics"]}
    return (f"{name}: step {entry['training']['steps']}, ODE {m['nll']['value']:.3f} +- {m['nll']['std_error']:.3f} "
            f"{m['nll']['unit']}, VLB {m['vlb']['value']:.3f} +- {m['vlb']['std_error']:.3f}, FID {m['fid']['value']:.2f} "
            f"(real {entry['real_baseline']['fid']:.2f}), classifier FD {m['cfd']['value']:.2f}, IS {m['is']['value']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench", help="folder of the two run folders")
    p.add_argument("--train-only", choices=sorted(run_configs()), default=None, help="only train this model")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--models", default="digits,fashion", help="comma list of digits, fashion")
    p.add_argument("--no-train", action="store_true", help="evaluate the latest checkpoints as they are")
    p.add_argument("--n-fid", type=int, default=250, help="samples and real images for Inception FID/KID")
    p.add_argument("--n-cfd", type=int, default=1000, help="samples and real images for classifier FD / IS")
    p.add_argument("--n-nll", type=int, default=128, help="test images for ODE NLL and VLB")
    p.add_argument("--method", default="dopri5", help="ODE NLL solver: dopri5 (adaptive) or a fixed grid (rk4, ...)")
    p.add_argument("--rtol", type=float, default=1e-5, help="rtol = atol of an adaptive ODE NLL solver")
    p.add_argument("--steps", type=int, default=16, help="steps of a fixed-grid ODE NLL solver")
    p.add_argument("--probes", type=int, default=2, help="Hutchinson probes of the ODE NLL")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_trained_models.json")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_only:
        seconds = train(args.train_only, args.runs / args.train_only, not args.quiet)
        print(f"trained {args.train_only} in {seconds:.0f} s -> {args.runs / args.train_only}")
        return
    nll_options: dict[str, Any] = {"method": args.method, "probes": args.probes}
    nll_options.update({"rtol": args.rtol, "atol": args.rtol} if args.method == "dopri5" else {"steps": args.steps})
    command = " ".join(["python", "benchmarks/eval_trained_models.py", *sys.argv[1:]])
    for name in args.models.split(","):
        run_dir = args.runs / name
        if not args.no_train:
            train(name, run_dir, not args.quiet)
        entry = evaluate_model(run_dir, args.n_fid, args.n_cfd, args.n_nll, nll_options, not args.quiet)
        entry.update(command=command, threads=torch.get_num_threads())
        # merge per model, so models evaluated by separate invocations share one file
        report = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
        report["models"][name] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(summary_line(name, entry))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
