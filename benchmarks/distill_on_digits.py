"""Few-step generation by training on 8x8 digits: progressive distillation, consistency distillation and
training, 1- and 2-reflow, against the teachers' best training-free solver at the same NFE.

    python benchmarks/distill_on_digits.py --threads 1 --train pd     # one method per process (parallel)
    python benchmarks/distill_on_digits.py --threads 1 --train cd
    python benchmarks/distill_on_digits.py --threads 1 --train ct
    python benchmarks/distill_on_digits.py --threads 1 --train reflow
    python benchmarks/distill_on_digits.py --threads 1                # the table (trains what is missing)

Teachers: the digits preset (EDM, 2,000 steps) for progressive and consistency distillation, the rectified
preset (flow, velocity, 2,000 steps) for reflow; consistency training starts from scratch on the same
network. Every student is an ordinary run folder under ``--root`` made by the library's ``distill``
functions, so the table samples each with its own solver. At K steps: the progressive student of the
K-step stage (DDIM), the consistency models with K-step consistency sampling, the reflowed flows with K Euler
steps, and for the teachers the best of several solvers at NFE = K (Heun counts 2 calls per step).
Quality: the digits classifier's Frechet distance (``metrics.classifier``) of 2,000 samples against all
1,797 digits, and its mean top-class confidence. CPU seconds of training are ``distill.json`` /
``couplings.json`` (process time; the teachers' are not measured, their wall time is listed).
Writes ``results/distill_on_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.config import PRESETS
from diffusekit.distill import cpu_seconds, distill_consistency, distill_progressive, distill_reflow, train_consistency
from diffusekit.evaluate import real_data
from diffusekit.metrics import classifier_features
from diffusekit.metrics.classifier import classifier_confidence, classifier_frechet_distance
from diffusekit.pipeline import load_run, sample_denoiser, train_run
from diffusekit.train import read_metrics

RESULTS = Path(__file__).parent / "results"
KS = (1, 2, 4, 8)
#: Reduced from the papers' budgets so that each training takes minutes on a shared CPU (see RESULTS.md).
BUDGET = {
    "pd": {"start": 16, "steps": 150, "lr": 5e-4},  # stages 16 -> 8 -> 4 -> 2 -> 1
    "cd": {"steps": 400, "lr": 5e-4, "solver": "heun"},
    "ct": {"steps": 600, "lr": 1e-3},
    "reflow": {"rounds": 2, "couplings": 2000, "steps": 400, "lr": 5e-4},
}
TEACHER_SOLVERS = ("ddim", "heun", "dpmpp_2m", "unipc_logsnr", "gaussian_pc")
N_SAMPLES = 2000


def teacher(root: Path, preset: str) -> Path:
    out = root / f"teacher-{preset}"
    if not (out / "checkpoints").is_dir():
        train_run(PRESETS[preset], out, progress=False)
    return out


def train(method: str, root: Path) -> None:
    b = BUDGET[method]
    if method in ("pd", "cd", "ct"):
        t = load_run(teacher(root, "digits"))
        if method == "pd":
            distill_progressive(t, root / "pd", to=1, start=b["start"], steps=b["steps"], lr=b["lr"], progress=False)
        elif method == "cd":
            distill_consistency(t, root / "cd", to=1, steps=b["steps"], lr=b["lr"], solver=b["solver"], progress=False)
        else:
            train_consistency(t, root / "ct", to=1, steps=b["steps"], lr=b["lr"], progress=False)
    else:
        t = load_run(teacher(root, "rectified"))
        distill_reflow(t, root / "reflow", rounds=b["rounds"], couplings=b["couplings"], steps=b["steps"], lr=b["lr"],
                       to=1, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/distill-bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", choices=tuple(BUDGET), default=None, help="train one method and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    if args.train:
        train(args.train, root)
        return
    for method in BUDGET:
        train(method, root)  # no-op where the run folders are complete
    edm, rf = load_run(root / "teacher-digits"), load_run(root / "teacher-rectified")
    real = real_data(edm, 1797).x
    clf = classifier_features("digits")

    def score(x: torch.Tensor) -> dict[str, float]:
        x = x.float().clamp(-1, 1)
        return {"fd": classifier_frechet_distance(x, "digits", real=real),
                "confidence": classifier_confidence(clf, x).mean_confidence}

    def draw(run_dir: Path, k: int, solver: str | None = None) -> tuple[dict[str, float], int]:
        run = load_run(run_dir)
        s = solver or run.config.sampling.solver
        grid = run.config.sampling.grid if solver is None else None
        sol = sample_denoiser(run.denoiser, run.info, s, k, N_SAMPLES, seed=1, grid=grid)
        return score(sol.x), sol.nfe

    rows: list[dict] = []
    start = time.time()
    pd_dirs = {1: root / "pd", 2: root / "pd/stages/4-to-2", 4: root / "pd/stages/8-to-4", 8: root / "pd/stages/16-to-8"}
    own = {k: json.loads((d / "distill.json").read_text())["cpu_seconds"] for k, d in pd_dirs.items()}
    pd_cpu = {k: sum(v for j, v in own.items() if j >= k) for k in KS}  # the stages from 16 steps down to k
    students = {
        "progressive (DDIM)": ({k: pd_dirs[k] for k in KS}, pd_cpu),
        "consistency distillation": ({k: root / "cd" for k in KS}, {k: cpu_seconds(root / "cd") for k in KS}),
        "consistency training": ({k: root / "ct" for k in KS}, {k: cpu_seconds(root / "ct") for k in KS}),
        "1-reflow (Euler)": ({k: root / "reflow/stages/reflow-1" for k in KS},
                             {k: cpu_seconds(root / "reflow/stages/reflow-1") + cpu_seconds(root / "reflow/stages/couplings-1")
                              for k in KS}),
        "2-reflow (Euler)": ({k: root / "reflow" for k in KS}, {k: cpu_seconds(root / "reflow") for k in KS}),
    }
    for label, (dirs, cpu) in students.items():
        for k in KS:
            metrics, nfe = draw(dirs[k], k)
            rows.append({"model": label, "k": k, "nfe": nfe, "cpu_seconds": round(cpu[k], 1), **metrics})
            print(rows[-1], flush=True)
    for label, run_dir, solvers in (("teacher EDM", root / "teacher-digits", TEACHER_SOLVERS),
                                    ("teacher rectified flow", root / "teacher-rectified", TEACHER_SOLVERS)):
        wall = read_metrics(run_dir / "metrics.jsonl")[-1]["elapsed"]
        for k in (*KS, 10):
            tried = {}
            for s in solvers if k in KS else ("unipc_logsnr",):
                metrics, nfe = draw(run_dir, k, s)
                if nfe <= k:
                    tried[s] = (metrics, nfe)
            best = min(tried, key=lambda s: tried[s][0]["fd"])
            rows.append({"model": f"{label}, best solver" if k in KS else f"{label}, default (10 calls)", "k": k,
                         "nfe": tried[best][1], "solver": best, "wall_seconds_training": round(wall),
                         "all_solvers_fd": {s: round(v[0]["fd"], 2) for s, v in tried.items()}, **tried[best][0]})
            print(rows[-1], flush=True)
    data = {"budget": BUDGET, "n_samples": N_SAMPLES, "seconds": round(time.time() - start), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill_on_digits.json").write_text(json.dumps(data, indent=1))
    lines = ["| model | K | NFE | classifier FD | confidence | training CPU s |", "|---|---|---|---|---|---|"]
    for r in rows:
        cpu = r.get("cpu_seconds", f"(wall {r.get('wall_seconds_training')})")
        name = r["model"] + (f" ({r['solver']})" if "solver" in r else "")
        lines.append(f"| {name} | {r['k']} | {r['nfe']} | {r['fd']:.2f} | {r['confidence']:.3f} | {cpu} |")
    (RESULTS / "distill_on_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
