"""Classifier guidance against classifier-free guidance at equal NFE, and low-density guidance, on digits.

    python benchmarks/classifier_guidance_on_digits.py [--run runs/guidance-digits] [--per-class 100]

Uses the class-conditional digits run of ``guidance_on_digits.py`` (trained there, or here if absent,
the digits preset with ``data.labels = true``) and trains its noise-aware classifier p(y | x_t, t)
(``diffusekit train-classifier``: ``--clf-steps`` steps, into RUN/classifier) if absent. Every row samples
``--per-class`` digits of each class with the run's default sampler at the run's NFE from the same prior
draws, and scores them with the library's digits classifier (``diffusekit.metrics.classifier``, a
different network from the guiding one): per-class accuracy (min and mean over classes), mean
probability of the asked class, the classifier Frechet distance of all samples to the 1,797 real digits,
and the wall time.

1. Guidance at equal NFE: CFG w in {1, 2, 3} (w != 1: one pass of the doubled batch per call) against
   classifier guidance of the unconditional model (the null label) with s in {1, 2, 4, 8} (one denoiser
   pass and a classifier forward/backward per call), and classifier guidance on top of the conditional model.
2. Dhariwal & Nichol's two forms of classifier guidance of the unconditional model on the ancestral sampler
   (``ddpm``, ``--ddpm-nfe`` steps), s in {1, 4}: through the score (Algorithm 2, the rows above) and the
   step's mean shifted by s Sigma grad log p (Algorithm 1, ``--classifier-form mean-shift``).
3. Low-density guidance (Sehwag et al. 2022): the conditional model pushed away from the class-mean
   features of the noise-aware classifier (its penultimate layer at the clean end, on the denoised estimate)
   with s in {0, ...}; density under the class model by the mean distance to the 5 nearest real digits of
   the asked class (pixel space; larger = sparser), against real digits' own (leave-one-out) value.

``--part guidance`` / ``mean-shift`` / ``low-density`` runs one of the three. Writes
``results/classifier_guidance_digits.{json,md}`` (1), ``results/classifier_mean_shift_digits.{json,md}`` (2),
``results/low_density_digits.{json,md}`` (3, with the paired 5-NN gain over the unguided samples and its
standard error) and ``results/low_density_digits.png``: one row per class, left to right 6 unguided conditional
samples, the same prior draws at the largest s keeping every class >= 90% recognised, and at the largest s
keeping the mean >= 90%.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffusekit.data import load_digits
from diffusekit.image_grid import save_image_grid
from diffusekit.metrics.classifier import classifier_features, classifier_frechet_distance
from diffusekit.pipeline import (
    classifier_guided_denoiser,
    guided_denoiser,
    low_density_denoiser,
    sample_denoiser,
)
from diffusekit.train.classifier import CLASSIFIER_DIR, accuracy_at, load_classifier, train_classifier
from guidance_on_digits import conditional_digits_run  # benchmarks/ is on the path as the script's folder

RESULTS = Path(__file__).parent / "results"
SHOWN = 6
K = 5
LOW_DENSITY_SCALES = (0.0, 5.0, 10.0, 20.0, 40.0)
MEAN_SHIFT_SCALES = (1.0, 4.0)


def knn_distance(x: torch.Tensor, asked: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                 leave_one_out: bool = False) -> torch.Tensor:
    """Mean Euclidean distance of each item of x to its K nearest real items of its asked class (N,)."""
    d = torch.cdist(x.flatten(1).double(), real.flatten(1).double())
    d = d.masked_fill(asked[:, None] != labels[None, :], float("inf"))
    if leave_one_out:
        d = d.masked_fill(d == 0, float("inf"))
    return d.topk(K, dim=1, largest=False).values.mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/guidance-digits")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--clf-steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=("all", "guidance", "mean-shift", "low-density"), default="all")
    ap.add_argument("--ddpm-nfe", type=int, default=50, help="DDPM steps of the mean-shift part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    run, classes = conditional_digits_run(args.run)
    folder = Path(args.run) / CLASSIFIER_DIR
    if not (folder / "classifier.json").is_file():
        train_classifier(args.run, steps=args.clf_steps, progress=False)
    clf = load_classifier(folder, run.denoiser.schedule)
    real, labels = load_digits()
    sch = run.denoiser.schedule
    clf_acc = {f"sigma/alpha={r:g}": round(accuracy_at(clf, real, labels, float(sch.t_of_log_snr(
        torch.tensor(-2.0 * math.log(r), dtype=torch.float64)))), 3) for r in (0.002, 0.5, 1, 2, 5)}
    print("noise-aware classifier accuracy on the training digits:", clf_acc, flush=True)
    judge = classifier_features("digits")
    asked = torch.arange(classes).repeat_interleave(args.per_class)
    solver, nfe = run.config.sampling.solver, run.config.sampling.nfe

    def score(name: str, den: object, *, by: str = solver, calls: int = nfe, constraints: tuple = (),
              **extra: object) -> tuple[dict, torch.Tensor, torch.Tensor]:
        t0 = time.time()
        sol = sample_denoiser(den, run.info, by, calls, asked.numel(), seed=0, cond=asked,  # type: ignore[arg-type]
                              constraints=constraints)
        seconds = time.time() - t0
        x = sol.x.clamp(-1, 1)
        with torch.no_grad():
            probs = torch.softmax(judge.logits(x).double(), dim=1)
        hit = (probs.argmax(1) == asked).double().reshape(classes, -1).mean(1)
        conf = probs.gather(1, asked[:, None])[:, 0].reshape(classes, -1).mean(1)
        knn = knn_distance(x, asked, real, labels)
        row = {"method": name, **extra, "solver": by, "nfe": sol.nfe, "seconds": round(seconds, 1), "accuracy": hit.tolist(),
               "min_accuracy": float(hit.min()), "mean_accuracy": float(hit.mean()),
               "mean_confidence": float(conf.mean()), "classifier_fd": classifier_frechet_distance(x, "digits"),
               "knn_distance": float(knn.mean())}
        print({k: v for k, v in row.items() if k != "accuracy"}, flush=True)
        return row, x, knn

    head = {"run": args.run, "steps_trained": run.meta.get("step"), "solver": solver, "nfe": nfe,
            "per_class": args.per_class, "classifier_accuracy": clf_acc}
    intro = (f"Digits ({head['steps_trained']} steps), {solver} at NFE {nfe}, {args.per_class} samples per class, "
             f"same prior draws; noise-aware classifier accuracy on the training digits {clf_acc}.")
    RESULTS.mkdir(exist_ok=True)
    if args.part in ("all", "guidance"):
        rows = [score("CFG", guided_denoiser(run, w), w=w)[0] for w in (1.0, 2.0, 3.0)]
        rows += [score("classifier (unconditional model)", classifier_guided_denoiser(run, clf, s), s=s)[0]
                 for s in (1.0, 2.0, 4.0, 8.0)]
        rows += [score("classifier + conditional model", classifier_guided_denoiser(run, clf, s, cfg=1.0), s=s)[0]
                 for s in (1.0, 2.0)]
        data = {**head, "seconds": round(time.time() - start, 1), "rows": rows}
        (RESULTS / "classifier_guidance_digits.json").write_text(json.dumps(data, indent=1) + "\n")
        (RESULTS / "classifier_guidance_digits.md").write_text(guidance_table(data, intro))
    if args.part in ("all", "mean-shift"):
        rows = []
        for s in MEAN_SHIFT_SCALES:
            rows.append(score("classifier, score form (Algorithm 2)", classifier_guided_denoiser(run, clf, s), s=s,
                              by="ddpm", calls=args.ddpm_nfe)[0])
            guide = classifier_guided_denoiser(run, clf, s, mean_shift=True)
            rows.append(score("classifier, mean shift (Algorithm 1)", guide, s=s, by="ddpm", calls=args.ddpm_nfe,
                              constraints=(guide,))[0])
        data = {**head, "ddpm_nfe": args.ddpm_nfe, "seconds": round(time.time() - start, 1), "rows": rows}
        (RESULTS / "classifier_mean_shift_digits.json").write_text(json.dumps(data, indent=1) + "\n")
        (RESULTS / "classifier_mean_shift_digits.md").write_text(guidance_table(data, intro))
    if args.part in ("all", "low-density"):
        low, shown, knns = [], [], []
        for s in LOW_DENSITY_SCALES:
            row, x, knn = score("low-density", low_density_denoiser(run, clf, s), s=s)
            if knns:  # paired with the unguided samples (the same prior draws)
                gain = knn - knns[0]
                row["knn_gain"], row["knn_gain_se"] = float(gain.mean()), float(gain.std() / math.sqrt(gain.numel()))
            low.append(row)
            knns.append(knn)
            shown.append(x.reshape(classes, args.per_class, *x.shape[1:])[:, :SHOWN])
        real_knn = float(knn_distance(real, labels, real, labels, leave_one_out=True).mean())
        kept = [r for r in low[1:] if r["min_accuracy"] >= 0.9]
        best = max(kept, key=lambda r: r["knn_distance"]) if kept else low[1]
        strong = max(low[1:], key=lambda r: r["knn_distance"] if r["mean_accuracy"] >= 0.9 else -1)
        blocks = [shown[0], shown[low.index(best)], shown[low.index(strong)]]
        grid = torch.cat(blocks, dim=1)
        save_image_grid(grid.flatten(0, 1), RESULTS / "low_density_digits.png", nrow=grid.shape[1], scale=4,
                        row_labels=[str(y) for y in range(classes)])
        data = {**head, "seconds": round(time.time() - start, 1), "real_knn_distance": real_knn,
                "grid_scales": [0.0, best["s"], strong["s"]], "rows": low}
        (RESULTS / "low_density_digits.json").write_text(json.dumps(data, indent=1) + "\n")
        (RESULTS / "low_density_digits.md").write_text(low_density_table(data, intro))
    print(f"done in {time.time() - start:.0f} s")


def guidance_table(data: dict, intro: str) -> str:
    lines = [intro, "", "| guidance | scale | solver | NFE | min class acc. | mean acc. | confidence | classifier FD | "
             "5-NN distance | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['method']} | {r.get('w', r.get('s')):g} | {r.get('solver', data['solver'])} | "
                     f"{r['nfe']} | {r['min_accuracy']:.2f} | "
                     f"{r['mean_accuracy']:.3f} | {r['mean_confidence']:.3f} | {r['classifier_fd']:.2f} | "
                     f"{r['knn_distance']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def low_density_table(data: dict, intro: str) -> str:
    lines = [intro, "", "| low-density s | min class acc. | mean acc. | confidence | classifier FD | 5-NN distance | "
             "gain vs s = 0 (paired, +- s.e.) | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        gain = f"{r['knn_gain']:+.3f} +- {r['knn_gain_se']:.3f}" if "knn_gain" in r else "-"
        lines.append(f"| {r['s']:g} | {r['min_accuracy']:.2f} | {r['mean_accuracy']:.3f} | {r['mean_confidence']:.3f} | "
                     f"{r['classifier_fd']:.2f} | {r['knn_distance']:.3f} | {gain} | {r['seconds']:.1f} |")
    lines.append(f"\nReal digits' own 5-NN distance (leave-one-out, same class): {data['real_knn_distance']:.3f}; "
                 f"grid blocks: s = {', '.join(f'{v:g}' for v in data['grid_scales'])}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
