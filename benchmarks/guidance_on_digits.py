"""Classifier-free guidance on a class-conditional digits model: per-class accuracy against w.

    python benchmarks/guidance_on_digits.py [--run runs/guidance-digits] [--per-class 100]

Trains the digits preset with ``data.labels = true`` (label dropout ``diffusion.p_uncond``, Ho &
Salimans 2022 joint training) into ``--run`` if that folder has no checkpoint (the demo's budget,
~3 min on 2 CPU cores). Then for each guidance scale w in {0, 1, 1.5, 2, 3, 5} it samples
``--per-class`` digits of each class with the run's default sampler and NFE (w = 0 is the
unconditional model, 1 the conditional one) and scores them with the library's digits classifier
(``diffusekit.metrics.classifier``): per class, the fraction classified as the asked class and the
mean probability it gives the asked class; over all samples, the classifier Frechet distance to
all 1,797 real digits (the quality/diversity trade-off: guidance sharpens classes, lowers diversity).
The goal of issue 14 is >= 95% for every class at w >= 2.

Writes ``results/guidance_digits.{json,md}`` and ``results/guidance_digits.png`` (one row per
class, top to bottom 0-9; left to right 6 samples at each w in turn, same seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusekit.config import PRESETS
from diffusekit.image_grid import save_image_grid
from diffusekit.metrics.classifier import classifier_features, classifier_frechet_distance
from diffusekit.pipeline import LoadedRun, guided_denoiser, load_run, sample_denoiser, train_run

RESULTS = Path(__file__).parent / "results"
SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)
SHOWN = 6  # samples per class and scale in the grid


def conditional_digits_run(path: str) -> tuple[LoadedRun, int]:
    """The class-conditional digits run at ``path`` (the digits preset with labels, trained if absent)."""
    if not (Path(path) / "checkpoints").is_dir():
        train_run(PRESETS["digits"].with_overrides(["data.labels=true"]), path)
    run = load_run(path)
    assert run.info.num_classes is not None and run.config.data.labels, f"{path} is not a class-conditional run"
    return run, run.info.num_classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/guidance-digits")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    run, classes = conditional_digits_run(args.run)
    judge = classifier_features("digits")
    asked = torch.arange(classes).repeat_interleave(args.per_class)
    solver, nfe = run.config.sampling.solver, run.config.sampling.nfe
    rows, shown = [], []
    for w in SCALES:
        sol = sample_denoiser(guided_denoiser(run, w), run.info, solver, nfe, asked.numel(), seed=0, cond=asked)
        x = sol.x.clamp(-1, 1)
        with torch.no_grad():
            probs = torch.softmax(judge.logits(x).double(), dim=1)
        hit = (probs.argmax(1) == asked).double().reshape(classes, -1).mean(1)
        conf = probs.gather(1, asked[:, None])[:, 0].reshape(classes, -1).mean(1)
        row = {"w": w, "nfe": sol.nfe, "network_passes_per_step": 1 if w == 1 else 2,
               "accuracy": hit.tolist(), "confidence": conf.tolist(), "min_accuracy": float(hit.min()),
               "mean_accuracy": float(hit.mean()), "mean_confidence": float(conf.mean()),
               "classifier_fd": classifier_frechet_distance(x, "digits")}
        rows.append(row)
        shown.append(x.reshape(classes, args.per_class, *x.shape[1:])[:, :SHOWN])
        print({k: v for k, v in row.items() if k not in ("accuracy", "confidence")}, flush=True)
    data = {"run": args.run, "steps_trained": run.meta.get("step"), "solver": solver, "nfe": nfe,
            "per_class": args.per_class, "p_uncond": run.config.diffusion.p_uncond,
            "seconds": round(time.time() - start, 1), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guidance_digits.json").write_text(json.dumps(data, indent=1) + "\n")
    grid = torch.cat(shown, dim=1)  # (classes, scales * SHOWN, C, H, W)
    save_image_grid(grid.flatten(0, 1), RESULTS / "guidance_digits.png", nrow=grid.shape[1], scale=4,
                    row_labels=[str(y) for y in range(classes)])
    head = " | ".join(str(y) for y in range(classes))
    lines = [f"Class-conditional digits ({data['steps_trained']} steps, p_uncond {data['p_uncond']}), {solver} at "
             f"NFE {nfe} (with w != 1 each model call is one pass on the doubled batch), {args.per_class} samples "
             "per class; per-class accuracy under the digits classifier, mean probability of the asked class, "
             "classifier FD of all samples against the 1,797 real digits.", "",
             f"| w | {head} | min | mean | confidence | classifier FD |",
             "|---" * (classes + 5) + "|"]
    for r in rows:
        acc = " | ".join(f"{a:.2f}" for a in r["accuracy"])
        lines.append(f"| {r['w']:g} | {acc} | {r['min_accuracy']:.2f} | {r['mean_accuracy']:.3f} | "
                     f"{r['mean_confidence']:.3f} | {r['classifier_fd']:.2f} |")
    (RESULTS / "guidance_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
