"""Scale-out on this machine: training steps/s and samples/s for 1 vs 2 processes, bf16 vs fp32 (issue 17).

Every setting runs back to back in one invocation (each under ``torchrun``, one thread per process
unless said), on the digits preset's network (U-Net tiny, 8x8 images), global batch 64:

- train: optimiser steps per second over ``--steps`` steps after ``--warmup`` steps (rank 0's clock;
  every rank ends a step at the same all-reduce);
- sample: samples per second of ``sample_denoiser`` (default sampler, 20 model calls) for ``--samples``
  items, sharded over the processes and gathered, after one warm-up call.

Then a written estimate of the gradient all-reduce per step (ring all-reduce moves 2 (W-1)/W x the
gradient bytes per process) for the library's model presets on 8 GPUs and on 4 nodes.

    python benchmarks/scaling.py [--steps 40] [--samples 512] [--repeats 2] [--settings 0 2 3 4]

Writes ``results/scaling.json`` and ``results/scaling.md``; ``--worker`` is the torchrun side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"

#: (label, processes, threads per process, precision)
SETTINGS = [
    ("1 process, 1 thread, fp32", 1, 1, "fp32"),
    ("1 process, 2 threads, fp32", 1, 2, "fp32"),
    ("2 processes x 1 thread, fp32", 2, 1, "fp32"),
    ("1 process, 1 thread, bf16", 1, 1, "bf16"),
    ("2 processes x 1 thread, bf16", 2, 1, "bf16"),
]
#: Links for the estimate: name -> (bus bandwidth in GB/s a ring all-reduce reaches, latency per hop in s).
LINKS = {
    "8 GPUs, NVLink (A100 NVSwitch, ~230 GB/s bus bandwidth)": (230e9, 5e-6),
    "8 GPUs, PCIe 4.0 x16 (~20 GB/s)": (20e9, 10e-6),
    "4 nodes, 100 Gb/s Ethernet/InfiniBand (~11 GB/s), per node": (11e9, 20e-6),
}


def worker(args: argparse.Namespace) -> None:
    """One rank: train ``steps`` steps and sample, timing both; rank 0 prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from diffusekit.config import PRESETS
    from diffusekit.pipeline import prepare_run, sample_denoiser
    from diffusekit.train import Trainer
    from diffusekit.train.distributed import distributed_world

    with distributed_world() as world:
        cfg = PRESETS["digits"].with_overrides([f"optim.precision={args.precision}", "data.batch_size=64"])
        p = prepare_run(cfg, Path(args.tmp) / "unused", progress=False, world=world)
        trainer = Trainer(p.denoiser, p.loader, p.loss, p.train_config, world=world)
        for _ in trainer.steps(args.warmup):
            pass
        start = time.perf_counter()
        for info in trainer.steps(args.steps):
            pass
        float(info.loss)
        train_s = time.perf_counter() - start
        den = trainer.ema_denoiser.eval()
        precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
        with precision:
            sample_denoiser(den, p.info, cfg.sampling.solver, cfg.sampling.nfe, 2 * world.size, world=world)
            start = time.perf_counter()
            sample_denoiser(den, p.info, cfg.sampling.solver, cfg.sampling.nfe, args.samples, world=world)
            sample_s = time.perf_counter() - start
        if world.is_main:
            print(json.dumps({"steps_per_s": args.steps / train_s, "samples_per_s": args.samples / sample_s,
                              "params": sum(q.numel() for q in p.denoiser.net.parameters())}), flush=True)


def run_setting(procs: int, threads: int, precision: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--worker", "--threads", str(threads), "--precision", precision, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--samples", str(args.samples), "--tmp", args.tmp]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def allreduce_estimate() -> list[dict]:
    """Ring all-reduce of fp32 gradients: 2 (W-1)/W x bytes per process, plus 2 (W-1) hop latencies."""
    from diffusekit.models import count_parameters, unet_preset

    rows = []
    for preset, shape in (("tiny", (1, 8, 8)), ("small", (1, 28, 28)), ("base", (3, 32, 32))):
        params = count_parameters(unet_preset(preset, shape[0], shape[1]))
        nbytes = 4 * params
        for link, (bw, lat) in LINKS.items():
            w = 4 if link.startswith("4 nodes") else 8
            seconds = 2 * (w - 1) / w * nbytes / bw + 2 * (w - 1) * lat
            rows.append({"model": f"unet {preset} {shape}", "params": params, "grad_MB": nbytes / 1e6, "link": link,
                         "world": w, "allreduce_ms": 1e3 * seconds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", default="/tmp/diffusekit-scaling")
    ap.add_argument("--settings", type=int, nargs="*", default=None, help="indices into SETTINGS (default: all)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    load = os.getloadavg()
    results = []
    for r in range(args.repeats):  # interleaved: each setting sees the machine's load at several times
        for i, (label, procs, threads, precision) in enumerate(SETTINGS):
            if args.settings is not None and i not in args.settings:
                continue
            res = run_setting(procs, threads, precision, args)
            results.append({"setting": label, "repeat": r, **res})
            print(f"{label:<32} steps/s {res['steps_per_s']:7.2f}   samples/s {res['samples_per_s']:8.1f}", flush=True)
    best = {}
    for row in results:
        b = best.setdefault(row["setting"], {"steps_per_s": 0.0, "samples_per_s": 0.0})
        b["steps_per_s"] = max(b["steps_per_s"], row["steps_per_s"])
        b["samples_per_s"] = max(b["samples_per_s"], row["samples_per_s"])
    lines = [f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)", "",
             "| setting | train steps/s (best of repeats) | samples/s (best of repeats) |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['steps_per_s']:.2f} | {v['samples_per_s']:.1f} |" for k, v in best.items()]
    estimate = allreduce_estimate()
    lines += ["", "| model | parameters | fp32 gradient | link | processes | ring all-reduce per step |",
              "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {e['model']} | {e['params']:,} | {e['grad_MB']:.1f} MB | {e['link']} | {e['world']} | "
              f"{e['allreduce_ms']:.2f} ms |" for e in estimate]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps({"runs": results, "best": best, "estimate": estimate,
                                                      "load_before": load, "args": vars(args)}, indent=2) + "\n")
    (RESULTS / "scaling.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
