"""SDEdit on digits: the faithfulness / realism trade-off against the edit strength t0 (Meng et al. 2022, Fig. 3).

Guides are coarse "stroke paintings" of held-out digits: 4x4 block averages shown as 2x2 blocks
(unrealistic images that keep the layout). Each guide is noised to t0 and denoised by the run's
default sampler (``diffusekit.tasks.sdedit``). Faithfulness: RMS distance to the guide (and PSNR to
the digit the guide came from); realism: the digits classifier's mean top-class probability and
its Frechet distance to the 1,797 real digits, and the classifier accuracy against the source label.
t0 is given by its log-SNR lambda = log(alpha / sigma) (for the EDM schedule, sigma = e^-lambda).

    PYTHONPATH=src python benchmarks/sdedit_on_digits.py --run runs/digits --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusekit.image_grid import save_image_grid
from diffusekit.metrics.classifier import classifier_features, classifier_frechet_distance, load_digits_split
from diffusekit.metrics.restoration import psnr
from diffusekit.pipeline import load_run
from diffusekit.solvers import make_solver
from diffusekit.sample import steps_for_nfe
from diffusekit.tasks import AvgPool, sdedit

RESULTS = Path(__file__).parent / "results"
LOG_SNRS = (4.0, 2.0, 1.0, 0.0, -1.0, -2.0, -4.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/digits")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    split = load_digits_split()
    x, labels = split.test_images[: args.n], split.test_labels[: args.n]
    pool = AvgPool(2)
    guide = pool.pinv(pool(x))
    judge = classifier_features("digits")
    solver = make_solver(run.config.sampling.solver)
    schedule = run.denoiser.schedule

    def realism(v: torch.Tensor) -> dict[str, float]:
        v = v.clamp(-1, 1)
        with torch.no_grad():
            probs = torch.softmax(judge.logits(v).double(), 1)
        return {"confidence": float(probs.max(1).values.mean()), "accuracy": float((probs.argmax(1) == labels).double().mean()),
                "classifier_fd": classifier_frechet_distance(v, "digits")}

    rows = [{"t0": 0.0, "log_snr": float("inf"), "nfe": 0, "rms_to_guide": 0.0, "psnr_to_source": float(psnr(guide, x).mean()),
             "seconds": 0.0, **realism(guide)}]
    shown = [x[:12], guide[:12]]
    for lam in LOG_SNRS:
        t0 = float(schedule.t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))
        steps = steps_for_nfe(solver, schedule, run.config.sampling.nfe)
        start = time.time()
        sol = sdedit(run.denoiser, solver, guide, t0, steps, seed=0)
        out = sol.x.clamp(-1, 1)
        rows.append({"t0": t0, "log_snr": lam, "nfe": sol.nfe, "seconds": time.time() - start,
                     "rms_to_guide": float((out - guide).flatten(1).pow(2).mean(1).sqrt().mean()),
                     "psnr_to_source": float(psnr(out, x).mean()), **realism(out)})
        shown.append(out[:12])
        r = rows[-1]
        print(f"lambda {lam:+.1f} t0 {t0:8.4f} NFE {r['nfe']:>3}  RMS to guide {r['rms_to_guide']:.3f}  "
              f"confidence {r['confidence']:.3f}  accuracy {r['accuracy']:.3f}  classifier FD {r['classifier_fd']:.2f}",
              flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sdedit_on_digits.json").write_text(json.dumps(rows, indent=2) + "\n")
    save_image_grid(torch.cat(shown), RESULTS / "sdedit_on_digits.png", nrow=12, scale=4,
                    row_labels=["truth", "guide", *[f"lam {v:+g}" for v in LOG_SNRS]])
    print(f"\n{args.n} guides (2x2-block digits), {solver.name}; grid {RESULTS / 'sdedit_on_digits.png'}\n")
    print("| log-SNR at t0 | t0 | NFE | RMS to guide | PSNR to source (dB) | confidence | accuracy | classifier FD |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lam = "guide" if r["nfe"] == 0 else f"{r['log_snr']:+g}"
        print(f"| {lam} | {r['t0']:.4g} | {r['nfe']} | {r['rms_to_guide']:.3f} | {r['psnr_to_source']:.2f} | "
              f"{r['confidence']:.3f} | {r['accuracy']:.3f} | {r['classifier_fd']:.2f} |")


if __name__ == "__main__":
    main()
