"""Classifier-free guidance on a class-conditional model (digits or Fashion-MNIST): per-class accuracy against w.

    python benchmarks/guidance_on_digits.py [--run runs/guidance-digits] [--per-class 100]
    python benchmarks/guidance_on_digits.py --data fashion --run runs/fashion-joint [--per-class 100] [--fid-per-class 100]

Digits: trains the digits preset with ``data.labels = true`` (label dropout ``diffusion.p_uncond``, Ho &
Salimans 2022 joint training) into ``--run`` if that folder has no checkpoint (the demo's budget,
~3 min on 2 CPU cores). Fashion: the shared class-conditional Fashion-MNIST run of
``fashion_common.py`` (trained from ``fashion_joint.toml`` if absent). Then for each guidance scale w
(digits {0, 1, 1.5, 2, 3, 5}, Fashion {0, 1, 2, 3}; ``--scales`` for others) it samples ``--per-class``
items of each class with the run's default sampler and NFE (w = 0 is the unconditional model, 1 the
conditional one) and scores them with the library's classifier of that data set
(``diffusekit.metrics.classifier``): per class, the fraction classified as the asked class and the
mean probability it gives the asked class; over all samples, the classifier Frechet distance to the
real images (all 1,797 digits; the 10,000 Fashion test images): the quality/diversity trade-off,
guidance sharpens classes and lowers diversity. Fashion also gets FID (Inception,
``fashion_common.fid``) of the first ``--fid-per-class`` samples of each class: per class against that
class's 200 reference images and over all classes against the 2,000. The goal of issue 14 on digits is
>= 95% for every class at w >= 2.

Writes ``results/guidance_{digits,fashion}.{json,md,png}`` after every scale (the FIDs, the costly
part, after all the rest), so a run cut short keeps what it finished; the grid has one row per class
(its name in the margin), left to right 6 samples at each w in turn, same seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusekit.config import PRESETS
from diffusekit.guidance import null_condition
from diffusekit.image_grid import save_image_grid
from diffusekit.metrics.classifier import classifier_features, classifier_frechet_distance
from diffusekit.pipeline import LoadedRun, guided_denoiser, load_run, sample_denoiser, train_run
from fashion_common import fashion_run, fid  # benchmarks/ is on the path as the script's folder

RESULTS = Path(__file__).parent / "results"
SHOWN = 6  # samples per class and scale in the grid
FASHION_NAMES = ("0 top", "1 trouser", "2 pullover", "3 dress", "4 coat", "5 sandal", "6 shirt", "7 sneaker",
                 "8 bag", "9 boot")


def conditional_digits_run(path: str) -> tuple[LoadedRun, int]:
    """The class-conditional digits run at ``path`` (the digits preset with labels, trained if absent)."""
    if not (Path(path) / "checkpoints").is_dir():
        train_run(PRESETS["digits"].with_overrides(["data.labels=true"]), path)
    return conditional_run(path)


def conditional_run(path: str) -> tuple[LoadedRun, int]:
    """The class-conditional run at ``path`` and its number of classes."""
    run = load_run(path)
    assert run.info.num_classes is not None and run.config.data.labels, f"{path} is not a class-conditional run"
    return run, run.info.num_classes


def fashion_conditional_run(path: str) -> tuple[LoadedRun, int]:
    """The shared class-conditional Fashion-MNIST run at ``path`` (trained from fashion_joint.toml if absent)."""
    return conditional_run(str(fashion_run(path)))


@dataclass(frozen=True)
class Setting:
    """What differs between the data sets: the run, the judging classifier, the scales, the row names."""

    load: Callable[[str], tuple[LoadedRun, int]]
    judge: str  # a data set name of diffusekit.metrics.classifier
    scales: tuple[float, ...]
    names: tuple[str, ...]
    default_run: str
    fid: bool  # Inception FID against fashion_common's reference


SETTINGS = {
    "digits": Setting(conditional_digits_run, "digits", (0.0, 1.0, 1.5, 2.0, 3.0, 5.0),
                      tuple(str(y) for y in range(10)), "runs/guidance-digits", False),
    "fashion": Setting(fashion_conditional_run, "fashion_mnist", (0.0, 1.0, 2.0, 3.0), FASHION_NAMES,
                       "runs/fashion-joint", True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=tuple(SETTINGS), default="digits")
    ap.add_argument("--run", default=None, help="the run folder (default: runs/guidance-digits, runs/fashion-joint)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--fid-per-class", type=int, default=None, help="Fashion: samples per class in the FID "
                    "(the first of --per-class; default all)")
    ap.add_argument("--scales", default=None, help="comma-separated w values (default: the data set's)")
    ap.add_argument("--tag", default="", help="suffix of the results files (results/guidance_DATA{TAG}.*)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    setting = SETTINGS[args.data]
    path = args.run or setting.default_run
    scales = tuple(float(v) for v in args.scales.split(",")) if args.scales else setting.scales
    n_fid = min(args.fid_per_class or args.per_class, args.per_class)
    run, classes = setting.load(path)
    judge = classifier_features(setting.judge)
    asked = torch.arange(classes).repeat_interleave(args.per_class)
    solver, nfe = run.config.sampling.solver, run.config.sampling.nfe
    rows, shown, for_fid = [], [], []
    for w in scales:
        t0 = time.time()
        if w == 0:  # CFG at w = 0 is exactly the unconditional model: one pass of the null label, not two
            sol = sample_denoiser(run.denoiser, run.info, solver, nfe, asked.numel(), seed=0,
                                  cond=torch.full_like(asked, null_condition(run.denoiser)))
        else:
            sol = sample_denoiser(guided_denoiser(run, w), run.info, solver, nfe, asked.numel(), seed=0, cond=asked)
        x = sol.x.clamp(-1, 1)
        with torch.no_grad():
            probs = torch.softmax(judge.logits(x).double(), dim=1)
        hit = (probs.argmax(1) == asked).double().reshape(classes, -1).mean(1)
        conf = probs.gather(1, asked[:, None])[:, 0].reshape(classes, -1).mean(1)
        row = {"w": w, "nfe": sol.nfe, "network_passes_per_step": 1 if w in (0, 1) else 2,
               "accuracy": hit.tolist(), "confidence": conf.tolist(), "min_accuracy": float(hit.min()),
               "mean_accuracy": float(hit.mean()), "mean_confidence": float(conf.mean()),
               "classifier_fd": classifier_frechet_distance(x, setting.judge)}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        per_class = x.reshape(classes, args.per_class, *x.shape[1:])
        shown.append(per_class[:, :SHOWN])
        if setting.fid:
            for_fid.append(per_class[:, :n_fid].flatten(0, 1))
        print({k: v for k, v in row.items() if k not in ("accuracy", "confidence")}, flush=True)
        data = {"data": args.data, "tag": args.tag, "run": path, "steps_trained": run.meta.get("step"), "solver": solver, "nfe": nfe,
                "per_class": args.per_class, "fid_per_class": n_fid if setting.fid else None,
                "p_uncond": run.config.diffusion.p_uncond, "seconds": round(time.time() - start, 1), "rows": rows}
        write(data, setting, shown)  # after every scale, so a cut-short run keeps its rows
    for row, x in zip(rows, for_fid):  # Inception last: the costly part, after every cheap number is written
        t0 = time.time()
        row["fid"] = fid(x, torch.arange(classes).repeat_interleave(n_fid), per_class=True)
        row["fid_seconds"] = round(time.time() - t0, 1)
        print({"w": row["w"], "fid": row["fid"]}, flush=True)
        data["seconds"] = round(time.time() - start, 1)
        write(data, setting, shown)
    print(table(data, setting))


def write(data: dict, setting: Setting, shown: list[torch.Tensor]) -> None:
    """``results/guidance_{data}{tag}.{json,md,png}``: the rows so far, their tables and the grid."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"guidance_{data['data']}{data['tag']}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    grid = torch.cat(shown, dim=1)  # (classes, scales * SHOWN, C, H, W)
    save_image_grid(grid.flatten(0, 1), stem.with_suffix(".png"), nrow=grid.shape[1], scale=4,
                    row_labels=list(setting.names[:grid.shape[0]]))
    stem.with_suffix(".md").write_text(table(data, setting))


def table(data: dict, setting: Setting) -> str:
    """The markdown tables: per-class accuracy and confidence, classifier FD, and (Fashion) FID per class."""
    classes = len(data["rows"][0]["accuracy"])
    head = " | ".join(str(y) for y in range(classes))
    fd_name = "digits" if setting.judge == "digits" else "Fashion-MNIST"
    lines = [f"Class-conditional {data['data']} ({data['steps_trained']} steps, p_uncond {data['p_uncond']}), "
             f"{data['solver']} at NFE {data['nfe']} (with w not in {{0, 1}} each model call is one pass on the doubled batch), "
             f"{data['per_class']} samples per class; per-class accuracy under the {fd_name} classifier, mean "
             f"probability of the asked class, classifier FD of all samples against the real {fd_name} images.", "",
             f"| w | {head} | min | mean | confidence | classifier FD | seconds |",
             "|---" * (classes + 6) + "|"]
    for r in data["rows"]:
        acc = " | ".join(f"{a:.2f}" for a in r["accuracy"])
        lines.append(f"| {r['w']:g} | {acc} | {r['min_accuracy']:.2f} | {r['mean_accuracy']:.3f} | "
                     f"{r['mean_confidence']:.3f} | {r['classifier_fd']:.2f} | {r.get('seconds', '-')} |")
    if setting.fid:
        n = data["fid_per_class"]
        lines += ["", f"FID (Inception) of the first {n} samples of each class against the class's 200 t10k "
                  f"reference images, and of all {n * classes} against the 2,000 (`fashion_common.fid`; biased "
                  "upwards at this n, compare within the table only).", "",
                  f"| w | {' | '.join(setting.names[:classes])} | all classes |", "|---" * (classes + 2) + "|"]
        for r in data["rows"]:
            fids = r.get("fid", {})  # absent: not reached (yet)
            cells = " | ".join(f"{fids[k]:.1f}" if k in fids else "-" for k in [*map(str, range(classes)), "all"])
            lines.append(f"| {r['w']:g} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
