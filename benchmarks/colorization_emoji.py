"""Colorization of greyscale emoji by the score-SDE decoupling (issue 15 point 6).

A small RGB model trained on Noto colour emoji (``data.name = "emoji"``) colours the luminance
(equal-weight mean of R, G, B) of emoji with ``Replacement(Greyscale(), y)`` on DDPM, and with
RePaint's resampling. Colour error against the true colours, per pixel: RMSE in RGB (0..255) and in
CIELAB a*b* (D65), for one sample per image and for the mean of ``--draws`` samples (an estimate
of the posterior mean, which a squared error favours), against the greyscale baseline (R = G = B =
luminance, a*b* near 0) that has the same luminance. "chroma" is the mean a*b* norm of the output
(truth's is in the header line): a colourless result scores well on RMSE only through its
chroma being 0. Luminance error: the largest |luminance(result) - luminance(truth)| (0 up to
float rounding; measured before the clamping to [-1, 1] of the metrics and the grid).

Run: ``python benchmarks/colorization_emoji.py --run runs/emoji16`` (writes
benchmarks/results/colorization_emoji.json/.md and colorization_emoji.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusekit.colorize import colorize
from diffusekit.data import load_dataset
from diffusekit.files import atomic_write_text
from diffusekit.image_grid import save_image_grid
from diffusekit.pipeline import load_run
from diffusekit.tasks.colorization import Greyscale

OUT = Path(__file__).resolve().parent / "results"


def to_lab(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> CIELAB (N, 3, H, W) (sRGB, D65 white)."""
    rgb = ((x.double().clamp(-1, 1) + 1) / 2)
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=torch.float64)
    xyz = torch.einsum("ij,njhw->nihw", m, lin) / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)[None, :, None, None]
    f = torch.where(xyz > (6 / 29) ** 3, xyz ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def errors(out: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    rgb = ((out.clamp(-1, 1) - truth) * 127.5).pow(2).mean().sqrt()
    ab_out, ab_true = to_lab(out)[:, 1:], to_lab(truth)[:, 1:]
    return {"rgb_rmse": float(rgb), "ab_rmse": float((ab_out - ab_true).pow(2).sum(1).mean().sqrt()),
            "chroma": float(ab_out.norm(dim=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/emoji16")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--nfe", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run)
    size = run.info.data_shape[-1]
    data, _ = load_dataset("emoji", size=size)
    pick = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))[: args.images]
    truth = data[pick]
    op = Greyscale("mean")
    grey = op.luminance(truth)
    rows = [{"method": "greyscale baseline (R = G = B = luminance)", "nfe": 0, "seconds": 0.0,
             **errors(op.grey_image(grey), truth), "mean_of_draws": float("nan"), "luminance_error": 0.0}]
    methods = {f"replacement (DDPM {args.nfe})": {"nfe": args.nfe},
               f"RePaint (DDPM {args.nfe // 2}, j=5, r=3)": {"nfe": args.nfe // 2, "resamples": 3, "jump_length": 5}}
    grids = [op.grey_image(grey)[:16]]
    for name, kw in methods.items():
        start = time.perf_counter()
        res = colorize(run.denoiser, grey.repeat(args.draws, 1, 1, 1), seed=1, **kw)
        seconds = time.perf_counter() - start
        draws = res.colour.reshape(args.draws, *truth.shape)
        mean = errors(draws.mean(0), truth)
        one = errors(draws[0], truth)
        lum = float((op.luminance(draws[0]) - grey).abs().max())  # before clamping for display
        rows.append({"method": name, "nfe": res.nfe, "seconds": round(seconds, 1), **one,
                     "mean_of_draws": mean["ab_rmse"], "luminance_error": lum})
        grids.append(draws[0, :16].clamp(-1, 1))
        print(rows[-1], flush=True)
    grids.append(truth[:16])
    OUT.mkdir(exist_ok=True)
    save_image_grid(torch.cat(grids), OUT / "colorization_emoji.png", nrow=16, scale=4,
                    row_labels=["grey", *[n.split(" (")[0] for n in methods], "truth"])
    true_chroma = errors(truth, truth)["chroma"]
    meta = {"run": args.run, "size": size, "images": args.images, "draws": args.draws, "truth_chroma": true_chroma}
    atomic_write_text(OUT / "colorization_emoji.json", json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"{args.images} emoji at {size}x{size}; truth chroma (mean a*b* norm) {true_chroma:.1f}",
             "", f"| method | NFE | RGB RMSE (0..255) | a*b* RMSE | a*b* RMSE, mean of {args.draws} draws | chroma | "
             "max luminance error | seconds |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['nfe']} | {r['rgb_rmse']:.1f} | {r['ab_rmse']:.1f} | {r['mean_of_draws']:.1f} | "
              f"{r['chroma']:.1f} | {r['luminance_error']:.1e} | {r['seconds']} |" for r in rows]
    atomic_write_text(OUT / "colorization_emoji.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
