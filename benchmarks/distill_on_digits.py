"""Few-step generation by training on 8x8 digits or 28x28 Fashion-MNIST: progressive distillation, consistency
distillation and training, 1- and 2-reflow, against the teachers' best training-free solver at the same NFE.

    python benchmarks/distill_on_digits.py --threads 1 --train pd     # one method per process (parallel)
    python benchmarks/distill_on_digits.py --threads 1 --train cd
    python benchmarks/distill_on_digits.py --threads 1 --train ct
    python benchmarks/distill_on_digits.py --threads 1 --train reflow
    python benchmarks/distill_on_digits.py --threads 1 --part teachers  # teacher rows (cached)
    python benchmarks/distill_on_digits.py --threads 1 --part angle     # teachers: DDIM on the students' grid
    python benchmarks/distill_on_digits.py --threads 1 --part students  # student rows (trains what is missing)
    python benchmarks/distill_on_digits.py --table-only                 # joins the three parts

    python benchmarks/distill_on_digits.py --data fashion --teacher runs/fashion-joint --threads 1 \\
        --train pd --part students                                     # trains and scores one method
    ... --train cd --part students; ... --part teachers; ... --table-only  (each in its own process)

Digits. Teachers: the digits preset (EDM, 2,000 steps) for progressive and consistency distillation, the
rectified preset (flow, velocity, 2,000 steps) for reflow; consistency training starts from scratch on the same
network. Quality: the digits classifier's Frechet distance (``metrics.classifier``) of 2,000 samples against
all 1,797 digits, and its mean top-class confidence.

Fashion-MNIST. The teacher is the shared model of ``fashion_common`` (``--teacher``: a DDPM eps U-Net with a
learned-variance head, class labels with p_uncond 0.1); only the methods of ``FASHION.budget`` are run (see
RESULTS.md for what is left out and why). Samples are class-conditional, class i mod 10 for sample i (the FID
reference is class-balanced). Quality: FID (``fashion_common.fid``, against 200 t10k images per class) of
``n_samples`` samples, and the Fashion classifier's Frechet distance (against the same 2,000 images), mean
confidence and accuracy (the class asked for). The teacher's candidate solvers at each NFE are ranked by
classifier FD; FID is computed for the best one.

Every student is an ordinary run folder under ``--root`` made by the library's ``distill`` functions, so the
table samples each with its own solver. At K steps: the progressive student of the K-step stage (DDIM), the
consistency models with K-step consistency sampling, the reflowed flows with K Euler steps, and for the teachers
the best of several solvers at NFE = K (Heun counts 2 calls per step). CPU seconds of training are
``distill.json`` / ``couplings.json`` (process time; the teachers' are not measured, their wall time is listed).
Writes ``results/distill_on_<data>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusekit.config import PRESETS
from diffusekit.distill import (
    cpu_seconds, distill_consistency, distill_progressive, distill_reflow, stage_counts, train_consistency,
)
from diffusekit.evaluate import real_data
from diffusekit.metrics import classifier_features
from diffusekit.metrics.classifier import classifier_accuracy, classifier_confidence, classifier_frechet_distance
from diffusekit.pipeline import LoadedRun, load_run, sample_denoiser, train_run
from diffusekit.train import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_common import DEFAULT_RUN, fashion_run, fid, reference_set  # noqa: E402

RESULTS = Path(__file__).parent / "results"
KS = (1, 2, 4, 8)
TEACHER_SOLVERS = ("ddim", "heun", "dpmpp_2m", "unipc_logsnr", "gaussian_pc")


@dataclass(frozen=True)
class Setting:
    """What differs between the digits and the Fashion-MNIST table."""

    data: str
    budget: dict[str, dict[str, Any]]  # the methods trained, with their settings
    n_samples: int
    parts: tuple[str, ...]
    candidates: tuple[tuple[str, str | None], ...]  # the teachers' (solver, grid) at each NFE; None = its own
    classifier: str
    fid: bool


DIGITS = Setting(
    "digits",
    #: Reduced from the papers' budgets so that each training takes minutes on a shared CPU (see RESULTS.md).
    {"pd": {"start": 16, "steps": 150, "lr": 5e-4},  # stages 16 -> 8 -> 4 -> 2 -> 1
     "cd": {"steps": 400, "lr": 5e-4, "solver": "heun"},
     "ct": {"steps": 600, "lr": 1e-3},
     "reflow": {"rounds": 2, "couplings": 2000, "steps": 250, "lr": 5e-4}},
    2000, ("students", "teachers", "angle"), tuple((s, None) for s in TEACHER_SOLVERS), "digits", False)
FASHION = Setting(
    "fashion",
    #: A Fashion U-Net step costs ~1 s of CPU at batch 32 with the teacher's calls, and the machine was shared by
    #: ~18 processes: tens of steps per stage or model, 100 samples per cell, four teacher samplers (RESULTS.md).
    {"pd": {"start": 16, "steps": 30, "lr": 5e-4, "batch_size": 32},  # stages 16 -> 8 -> 4 -> 2 -> 1
     "cd": {"steps": 100, "lr": 5e-4, "solver": "heun", "batch_size": 32}},
    100, ("students", "teachers"),
    # DDIM on the students' grid, the learned-variance DDPM sampler, DPM-Solver++(2M) and the default sampler
    (("ddim", "uniform_angle"), ("ddpm", None), ("dpmpp_2m", None), ("unipc_logsnr", None)), "fashion_mnist", True)
SETTINGS = {s.data: s for s in (DIGITS, FASHION)}


class Bench:
    """The teachers, students and scores of one table under ``root``."""

    def __init__(self, setting: Setting, root: Path, teacher: str | None, steps: int | None = None,
                 n_samples: int | None = None) -> None:
        budget = {m: b | ({"steps": steps} if steps else {}) for m, b in setting.budget.items()}
        self.s = replace(setting, budget=budget, n_samples=n_samples or setting.n_samples)
        self.root = root
        if setting.data == "digits":
            self.teacher_labels = {"digits": "teacher EDM", "rectified": "teacher rectified flow"}
        else:
            self.fashion_teacher = Path(teacher or DEFAULT_RUN)
            self.teacher_labels = {"fashion": "teacher DDPM (eps, learned variance)"}
        self._scorer: Scorer | None = None

    def teacher(self, kind: str) -> Path:
        """The teacher run folder of ``kind`` (digits, rectified, fashion), trained first if missing."""
        if kind == "fashion":
            return fashion_run(str(self.fashion_teacher))
        out = self.root / f"teacher-{kind}"
        if not (out / "checkpoints").is_dir():
            train_run(PRESETS[kind], out, progress=False)
        return out

    def load_teacher(self, kind: str, batch_size: int | None) -> LoadedRun:
        """The loaded teacher, its config's batch size set to the students' budget (the students inherit it)."""
        run = load_run(self.teacher(kind))
        if batch_size is None:
            return run
        return replace(run, config=run.config.with_overrides([f"data.batch_size={batch_size}"]))

    def train(self, method: str) -> None:
        if method not in self.s.budget:
            raise SystemExit(f"--train {method} is not part of the {self.s.data} table; allowed: "
                             f"{', '.join(self.s.budget)}")
        b = self.s.budget[method]
        kind = "rectified" if method == "reflow" else self.s.data
        t = self.load_teacher(kind, b.get("batch_size"))
        if method == "pd":
            distill_progressive(t, self.root / "pd", to=1, start=b["start"], steps=b["steps"], lr=b["lr"], progress=False)
        elif method == "cd":
            distill_consistency(t, self.root / "cd", to=1, steps=b["steps"], lr=b["lr"], solver=b["solver"],
                                progress=False)
        elif method == "ct":
            train_consistency(t, self.root / "ct", to=1, steps=b["steps"], lr=b["lr"], progress=False)
        else:
            distill_reflow(t, self.root / "reflow", rounds=b["rounds"], couplings=b["couplings"], steps=b["steps"],
                           lr=b["lr"], to=1, progress=False)

    @property
    def score(self) -> "Scorer":
        if self._scorer is None:
            self._scorer = Scorer(self)
        return self._scorer

    def student_rows(self, methods: tuple[str, ...] | None = None) -> list[dict]:
        """The rows of ``methods`` (default: all of the table's), trained first where missing."""
        methods = methods or tuple(self.s.budget)
        for method in methods:
            self.train(method)  # no-op where the run folders are complete
        root = self.root
        students: dict[str, tuple[dict[int, Path], dict[int, float]]] = {}
        if "pd" in methods:
            counts = stage_counts(self.s.budget["pd"]["start"], 1)
            pd_dirs = {n: root / "pd" if n == 1 else root / f"pd/stages/{2 * n}-to-{n}" for n in counts}
            own = {k: json.loads((d / "distill.json").read_text())["cpu_seconds"] for k, d in pd_dirs.items()}
            pd_cpu = {k: sum(v for j, v in own.items() if j >= k) for k in pd_dirs}  # the stages from the start to k
            students["progressive (DDIM)"] = (pd_dirs, pd_cpu)
        for method, label in (("cd", "consistency distillation"), ("ct", "consistency training")):
            if method in methods:
                students[label] = ({k: root / method for k in KS}, {k: cpu_seconds(root / method) for k in KS})
        if "reflow" in methods:
            reflow1 = cpu_seconds(root / "reflow/stages/reflow-1") + cpu_seconds(root / "reflow/stages/couplings-1")
            students["1-reflow (Euler)"] = ({k: root / "reflow/stages/reflow-1" for k in KS}, {k: reflow1 for k in KS})
            students["2-reflow (Euler)"] = ({k: root / "reflow" for k in KS}, {k: cpu_seconds(root / "reflow") for k in KS})
        rows = []
        for label, (dirs, cpu) in students.items():
            for k in sorted(dirs):
                metrics, nfe, samples = self.score.draw(dirs[k], k)
                rows.append({"model": label, "k": k, "nfe": nfe, "cpu_seconds": round(cpu[k], 1), **metrics,
                             **self.score.fid(samples)})
                print(rows[-1], flush=True)
        return rows

    def teacher_rows(self) -> list[dict]:
        rows = []
        for kind, label in self.teacher_labels.items():
            run_dir = self.teacher(kind)
            wall = read_metrics(run_dir / "metrics.jsonl")[-1]["elapsed"]
            for k in (*KS, 10):
                tried: dict[str, tuple[dict[str, float], int, Tensor]] = {}
                for s, grid in self.s.candidates if k in KS else (("unipc_logsnr", None),):
                    metrics, nfe, samples = self.score.draw(run_dir, k, s, grid)
                    if nfe <= k:
                        tried[s if grid is None else f"{s}@{grid}"] = (metrics, nfe, samples)
                best = min(tried, key=lambda s: tried[s][0]["fd"])
                rows.append({"model": f"{label}, best solver" if k in KS else f"{label}, default (10 calls)", "k": k,
                             "nfe": tried[best][1], "solver": best, "wall_seconds_training": round(wall),
                             "all_solvers_fd": {s: round(v[0]["fd"], 2) for s, v in tried.items()}, **tried[best][0],
                             **self.score.fid(tried[best][2])})
                print(rows[-1], flush=True)
        return rows

    def angle_rows(self) -> list[dict]:
        """The teachers with DDIM on the students' own grid (uniform_angle), where the default grids of the solvers
        spend their second call at a negligible noise level."""
        rows = []
        for kind, label in self.teacher_labels.items():
            for k in KS:
                metrics, nfe, _ = self.score.draw(self.teacher(kind), k, "ddim", grid="uniform_angle")
                rows.append({"model": f"{label}, DDIM on uniform_angle", "k": k, "nfe": nfe, "solver": "ddim", **metrics})
                print(rows[-1], flush=True)
        return rows

    def table(self, rows: list[dict]) -> None:
        data = {"budget": self.s.budget, "n_samples": self.s.n_samples, "rows": rows}
        name = f"distill_on_{self.s.data}"
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
        if self.s.fid:
            lines = [f"| model | K | NFE | FID (n = {self.s.n_samples}) | classifier FD | confidence | accuracy | "
                     "training CPU s |", "|---|---|---|---|---|---|---|---|"]
        else:
            lines = ["| model | K | NFE | classifier FD | confidence | training CPU s |", "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["k"], r.get("fid", r["fd"]))):
            cpu = r.get("cpu_seconds", f"(wall {r['wall_seconds_training']})" if "wall_seconds_training" in r else "teacher")
            cells = [r["model"] + (f" ({r['solver']})" if "solver" in r else ""), str(r["k"]), str(r["nfe"])]
            cells += [f"{r['fid']:.1f}"] if self.s.fid else []
            cells += [f"{r['fd']:.2f}", f"{r['confidence']:.3f}"]
            cells += [f"{r['accuracy']:.3f}"] if self.s.fid else []
            lines.append("| " + " | ".join([*cells, str(cpu)]) + " |")
        (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


class Scorer:
    """Classifier Frechet distance and confidence of samples (digits: against all 1,797 digits; Fashion-MNIST:
    against the FID reference images, with the accuracy of class-conditional samples and their FID)."""

    def __init__(self, bench: Bench) -> None:
        self.s = bench.s
        self.clf = classifier_features(self.s.classifier)
        if self.s.data == "digits":
            self.real, self.labels = real_data(load_run(bench.teacher("digits")), 1797).x, None
        else:
            self.real = reference_set()[0]
            self.labels = torch.arange(self.s.n_samples) % 10

    def draw(self, run_dir: Path, k: int, solver: str | None = None,
             grid: str | None = None) -> tuple[dict[str, float], int, Tensor]:
        """(scores, NFE, samples) of n_samples of a run at k model calls, with its own sampler or the named solver
        (on its own grid or ``grid``)."""
        run = load_run(run_dir)
        s = solver or run.config.sampling.solver
        grid = run.config.sampling.grid if solver is None else grid
        x = sample_denoiser(run.denoiser, run.info, s, k, self.s.n_samples, seed=1, grid=grid, cond=self.labels)
        samples = x.x.float().clamp(-1, 1)
        scores = {"fd": classifier_frechet_distance(samples, self.s.classifier, real=self.real),
                  "confidence": classifier_confidence(self.clf, samples).mean_confidence}
        if self.labels is not None:
            scores["accuracy"] = classifier_accuracy(self.clf, samples, self.labels)
        return scores, x.nfe, samples

    def fid(self, samples: Tensor) -> dict[str, float]:
        """{"fid": FID against the Fashion-MNIST reference} where the table has FID, else {}."""
        return {"fid": fid(samples)["all"]} if self.s.fid else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=tuple(SETTINGS), default="digits")
    ap.add_argument("--teacher", default=None, help=f"fashion: the shared teacher run folder (default {DEFAULT_RUN})")
    ap.add_argument("--root", default=None, help="students (and digits teachers); default runs/distill-bench[-fashion]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", choices=tuple(DIGITS.budget), default=None,
                    help="train one method and stop; with --part students, train and score that method only")
    ap.add_argument("--part", choices=DIGITS.parts, default=None,
                    help="score only the teachers or only the students (cached; the table joins the parts)")
    ap.add_argument("--table-only", action="store_true", help="join the cached parts into the table")
    ap.add_argument("--steps", type=int, default=None, help="override every method's training steps (smoke runs)")
    ap.add_argument("--n", type=int, default=None, help="override the samples per cell (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    setting = SETTINGS[args.data]
    root = Path(args.root or ("runs/distill-bench" if args.data == "digits" else "runs/distill-bench-fashion"))
    bench = Bench(setting, root, args.teacher, args.steps, args.n)
    if args.part is not None and args.part not in setting.parts:
        raise SystemExit(f"--part {args.part} is not part of the {args.data} table; allowed: {', '.join(setting.parts)}")
    stem = f"distill_on_{args.data}"
    RESULTS.mkdir(exist_ok=True)
    if args.train and args.part == "students":  # one method's rows, joined with the others' by the table
        rows = bench.student_rows((args.train,))
        (RESULTS / f"{stem}_students-{args.train}.json").write_text(json.dumps(rows, indent=1))
    elif args.train:
        bench.train(args.train)
        return
    for part in () if args.table_only or args.train else (args.part,) if args.part else setting.parts:
        rows = {"teachers": bench.teacher_rows, "angle": bench.angle_rows, "students": bench.student_rows}[part]()
        (RESULTS / f"{stem}_{part}.json").write_text(json.dumps(rows, indent=1))
    cached = {part: RESULTS / f"{stem}_{part}.json" for part in setting.parts}
    per_method = [RESULTS / f"{stem}_students-{m}.json" for m in setting.budget]
    files = [*([cached["students"]] if cached["students"].is_file() else per_method),
             *(p for part, p in cached.items() if part != "students")]
    if all(p.is_file() for p in files):
        bench.table([r for p in files for r in json.loads(p.read_text())])


if __name__ == "__main__":
    main()
