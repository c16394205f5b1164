"""Restoration on 8x8 digits or 28x28 Fashion-MNIST: inpainting, super-resolution and deblurring vs baselines.

Digits (``--data digits``): the digits preset's unconditional model (trained with `diffusekit train digits`,
or by this script) restores held-out digits (the test part of ``load_digits_split``; note the preset trains
on all 1,797 digits, so these were seen in training). Fashion-MNIST (``--data fashion``): the shared
Fashion model (``benchmarks/fashion_joint.toml``, ``fashion_common.fashion_run``), class-conditional with
label dropout, used unconditionally (its null label), restores the first ``--n`` images of the t10k test
split (never seen in training). Both use the zero-shot methods of ``diffusekit.tasks.restore`` (DDPM on a
log-SNR grid). Each row gives PSNR and SSIM against the truth, the accuracy of the library's classifier of
that data set (digits: trained on the other part; Fashion: on the train split) on the restored images, the
model calls per image and the wall time. Baselines: mean fill (the training mean at the hidden pixels),
nearest and bicubic upsampling, and the Wiener filter with the training set's power spectrum (the MMSE
linear estimate). ``--sr3 RUN`` adds the 2x row of an SR3 model (trained with data.condition = "lowres:2"),
which sees the same low-resolution images as its condition.

    PYTHONPATH=src python benchmarks/restoration_on_digits.py --run runs/digits --threads 1
    PYTHONPATH=src python benchmarks/restoration_on_digits.py --data fashion --run runs/fashion-joint --n 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusekit.config import PRESETS
from diffusekit.data.images import load_fashion_mnist
from diffusekit.guidance import null_condition
from diffusekit.metrics.classifier import classifier_features, load_digits_split
from diffusekit.metrics.restoration import psnr, ssim
from diffusekit.pipeline import load_run, lowres_condition, sample_denoiser, train_run
from diffusekit.tasks import AvgPool, GaussianBlur, LinearOperator, Mask
from diffusekit.tasks.commands import parse_mask
from diffusekit.tasks.restore import restore

RESULTS = Path(__file__).parent / "results"
NOISE = 0.05
#: data set -> (classifier name, blur std in pixels, training images for the baselines' statistics)
DATA = {"digits": ("digits", 1.0, None), "fashion": ("fashion_mnist", 1.5, 10_000)}


def load_data(data: str, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(training images for the baselines, the first ``n`` test images, their labels) in [-1, 1]."""
    if data == "digits":
        split = load_digits_split()
        return split.train_images, split.test_images[:n], split.test_labels[:n]
    train, _ = load_fashion_mnist("train")
    test, labels = load_fashion_mnist("test")
    return train[: DATA[data][2]], test[:n], labels[:n]


def wiener(op: GaussianBlur, y: Tensor, train: Tensor, noise_std: float) -> Tensor:
    """x = mu + F^-1[K P / (K^2 P + s^2) F(y - K mu)], P the training images' power spectrum (per pixel count)."""
    mu = train.mean(0, keepdim=True)
    spec = torch.fft.rfft2((train - mu).double())
    power = spec.abs().pow(2).mean(0) / (train.shape[-1] * train.shape[-2])
    k = op.transfer
    gain = k * power / (k**2 * power + noise_std**2)
    resid = torch.fft.rfft2((y - op(mu)).double())
    return (mu + torch.fft.irfft2(resid * gain, s=op.size)).float()


Task = tuple[LinearOperator, float, dict[str, Callable[[Tensor], Tensor]], tuple[str, ...]]


def tasks(train: Tensor, blur_std: float) -> dict[str, Task]:
    """name -> (operator, noise std, baselines y -> x, diffusion methods)."""
    mean = train.mean(0, keepdim=True)
    shape = tuple(train.shape[1:])

    def mean_fill(op: Mask) -> Callable[[Tensor], Tensor]:
        return lambda y: op.T(y) + (~op.keep).float() * mean

    half, rand = parse_mask("bottom", shape), parse_mask("random:0.3", shape, seed=0)
    blur = GaussianBlur(blur_std, shape[1:])
    sr = {f: AvgPool(f) for f in (2, 4)}
    return {
        "inpaint bottom half": (half, 0.0, {"mean fill": mean_fill(half)}, ("repaint", "pigdm", "ddnm")),
        "inpaint random 30% kept": (rand, 0.0, {"mean fill": mean_fill(rand)}, ("repaint", "pigdm", "ddnm")),
        **{f"super-resolution {f}x": (sr[f], 0.0, {
            "nearest": sr[f].pinv,
            "bicubic": lambda y, f=f: F.interpolate(y, scale_factor=f, mode="bicubic", align_corners=False),
        }, ("pigdm", "ddnm", "repaint")) for f in (2, 4)},
        f"deblur std {blur_std:g}, noise {NOISE:g}": (blur, NOISE, {"Wiener": lambda y: wiener(blur, y, train, NOISE)},
                                                   ("pigdm", "dps")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(DATA), default="digits")
    ap.add_argument("--run", default=None, help="run folder (default runs/digits or runs/fashion-joint)")
    ap.add_argument("--n", type=int, default=128, help="test images")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default=None, help="run only the tasks whose name contains this text")
    ap.add_argument("--methods", default=None, help="comma list: run only these diffusion methods (e.g. none)")
    ap.add_argument("--clip", action="store_true", help="clamp every data prediction to [-1, 1] (restore(clip=True))")
    ap.add_argument("--sr3", default=None, help="an SR3 run (data.condition = \"lowres:2\"): adds its 2x row")
    ap.add_argument("--out", default=None, help="file name under benchmarks/results (default restoration_on_DATA.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    judge_name, blur_std, _ = DATA[args.data]
    if args.data == "digits":
        args.run = args.run or "runs/digits"
        if not (Path(args.run) / "checkpoints").is_dir():
            train_run(PRESETS["digits"], args.run)
    else:
        from fashion_common import DEFAULT_RUN, fashion_run

        args.run = str(fashion_run(args.run or DEFAULT_RUN))
    run = load_run(args.run)
    train, x, labels = load_data(args.data, args.n)
    shape = tuple(x.shape[1:])
    cond = torch.full((x.shape[0],), null_condition(run.denoiser)) if run.config.data.labels else None
    judge = classifier_features(judge_name)

    def score(xr: Tensor) -> dict[str, float]:
        xr = xr.clamp(-1, 1)
        with torch.no_grad():
            acc = float((judge.logits(xr).argmax(1) == labels).double().mean())
        return {"psnr": float(psnr(xr, x).mean()), "ssim": float(ssim(xr, x).mean()), "accuracy": acc}

    rows = [{"task": "(truth)", "method": "-", "nfe": 0, "seconds": 0.0, **score(x)}]
    g = torch.Generator().manual_seed(0)
    sr3 = load_run(args.sr3) if args.sr3 else None
    for name, (op, s, baselines, methods) in tasks(train, blur_std).items():
        if args.tasks and args.tasks not in name:
            continue
        y = op(x)
        y = y + s * torch.randn(y.shape, generator=g)
        for b, fn in baselines.items():
            t = time.time()
            rows.append({"task": name, "method": b, "nfe": 0, "seconds": time.time() - t, **score(fn(y))})
        methods = tuple(m for m in methods if args.methods is None or m in args.methods.split(","))
        for m in methods:
            t = time.time()
            sol = restore(run.denoiser, op, y, shape, method=m, steps=args.steps, noise_std=s, cond=cond,
                          clip=args.clip)
            rows.append({"task": name, "method": m, "nfe": sol.nfe, "seconds": time.time() - t, **score(sol.x)})
        shown = len(baselines) + len(methods)
        if sr3 is not None and name == "super-resolution 2x":
            t = time.time()
            sol = sample_denoiser(sr3.denoiser, sr3.info, sr3.config.sampling.solver, sr3.config.sampling.nfe, x.shape[0],
                                  cond=lowres_condition(x, 2))
            rows.append({"task": name, "method": f"SR3 ({sr3.config.sampling.solver})", "nfe": sol.nfe,
                         "seconds": time.time() - t, **score(sol.x)})
            shown += 1
        for r in rows[-shown:]:
            print(f"{r['task']:<28} {r['method']:<10} NFE {r['nfe']:>4}  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.3f}  "
                  f"acc {r['accuracy']:.3f}  {r['seconds']:6.1f} s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or f"restoration_on_{args.data}.json"
    (RESULTS / out).write_text(json.dumps({"data": args.data, "run": args.run, "n": args.n, "steps": args.steps,
                                           "clip": args.clip, "rows": rows}, indent=2) + "\n")
    print(f"\n{args.n} held-out {args.data} images, {args.steps} DDPM steps (log-SNR grid), {args.threads} thread(s)\n")
    print("| task | method | NFE | PSNR (dB) | SSIM | classifier accuracy | time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['method']} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['accuracy']:.3f} | "
              f"{r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
