"""Digits: diffusekit's default pipeline vs a diffusers DDPM baseline, equal CPU budget and size.

(a) diffusekit: ``PRESETS["digits"]`` read at run time (schedule, parameterization,
    loss, U-Net preset, optimiser, EMA, solver and NFE), trained with ``train_run``.
(b) diffusers: ``UNet2DModel`` (two levels, attention at 4x4, like the tiny preset)
    whose width is chosen to match diffusekit's parameter count, trained with
    ``DDPMScheduler`` (1000 steps, linear betas; Ho et al. 2020, Alg. 1:
    epsilon-prediction MSE) and sampled with ``DDIMScheduler`` at 20 steps, eta = 0
    (Song et al. 2021, eq. 12). Same data (sklearn digits, 8x8, [-1, 1]) through the
    same ``ArrayLoader`` batches, same batch size, and the preset's AdamW settings
    (lr, warm-up, clipping, weight decay) and EMA half-life, so the comparison
    isolates process + network + sampler.

Budget: diffusekit trains its preset's steps (or, with ``--budget S``, the number of
steps a short probe predicts fits in S seconds); its measured training time T
(including data loading, checkpoints and the loss plot) is then the baseline's
time limit. ``--clock cpu`` measures process CPU time instead of wall time, which
is fairer on a machine shared with other jobs.

Reported for both: classifier-feature Frechet distance to the 1,797 real digits
(``diffusekit.metrics.classifier_frechet_distance``), the logistic-regression
confidence (mean top-class probability, classes covered), NFE and samples/s.

Run: ``python benchmarks/digits_vs_diffusers.py`` (writes
benchmarks/results/digits_vs_diffusers.{json,png} and its section of
benchmarks/RESULTS.md; ``--quick`` writes to runs/digits_vs_diffusers_quick/ only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusekit.config import PRESETS, RunConfig
from diffusekit.data import ArrayLoader
from diffusekit.metrics import classifier_frechet_distance, load_digits_split, logistic_digits_confidence
from diffusekit.models.presets import count_parameters
from diffusekit.pipeline import load_run, load_training_data, sample_denoiser, train_run
from diffusekit.train import TrainConfig
from diffusekit.train.ema import EMA
from diffusekit.image_grid import image_grid
from diffusekit.train import read_metrics

HERE = Path(__file__).resolve().parent
SECTION = "## Digits vs diffusers"
DDPM_STEPS = 1000
DDIM_STEPS = 20


def make_clock(kind: str) -> Callable[[], float]:
    """Seconds on the wall clock or of this process's CPU time (all threads)."""
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        return time.process_time
    raise ValueError(f"unknown clock {kind!r}; allowed: wall, cpu")


# ---------------------------------------------------------------------------- diffusekit


def train_diffusekit(cfg: RunConfig, run_dir: Path, clock: Callable[[], float]) -> dict[str, float]:
    """Train the preset in ``run_dir``; return wall and CPU seconds."""
    wall0, cpu0, t0 = time.perf_counter(), time.process_time(), clock()
    train_run(cfg, run_dir, resume=False, progress=False)
    return {"budget_clock": clock() - t0, "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}


def steps_for_budget(cfg: RunConfig, budget: float, work: Path, clock: Callable[[], float], probe_steps: int = 20) -> int:
    """Steps of the preset that fit in ``budget`` seconds, from a short probe run.

    The probe's metrics log gives the time spent in the training loop; the rest of its
    time (data, model, checkpoint, plot) is treated as a fixed overhead.
    """
    probe = cfg.with_overrides([f"steps={probe_steps}", f"checkpoint_every={probe_steps}"])
    total = train_diffusekit(probe, work / "probe", clock)
    loop = read_metrics(work / "probe" / "metrics.jsonl")[-1]["elapsed"]  # wall seconds of the loop
    per_step = total["budget_clock"] * (loop / total["wall"]) / probe_steps
    overhead = total["budget_clock"] - per_step * probe_steps
    return max(1, int((budget - overhead) / per_step))


def sample_diffusekit(run_dir: Path, n: int, seed: int) -> tuple[Tensor, int, float, int]:
    """``n`` samples from the run's EMA network with its configured solver; (samples, NFE, wall seconds, params)."""
    run = load_run(run_dir)
    sc = run.config.sampling
    start = time.perf_counter()
    with torch.no_grad():
        sol = sample_denoiser(run.denoiser, run.info, sc.solver, sc.nfe, n, seed=seed, grid=sc.grid)
    return sol.x, sol.nfe, time.perf_counter() - start, count_parameters(run.denoiser.net)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- diffusers


def diffusers_unet(width: int) -> nn.Module:
    """UNet2DModel for 1x8x8: levels (width, 2 width), one res block each, attention at 4x4."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=None,
    )


def matched_width(target: int) -> tuple[int, int]:
    """The UNet2DModel width (multiple of 4) whose parameter count is closest to ``target``; (width, count)."""
    counts = {w: count_parameters(diffusers_unet(w)) for w in range(8, 129, 4)}
    width = min(counts, key=lambda w: abs(counts[w] - target))
    return width, counts[width]


def train_diffusers(
    model: nn.Module, cfg: RunConfig, budget: float, clock: Callable[[], float], seed: int
) -> tuple[nn.Module, dict[str, float]]:
    """Epsilon-prediction DDPM training (Ho et al. 2020, Alg. 1) until ``budget`` seconds have passed.

    Returns the EMA network and the wall / CPU / budget-clock seconds and step count.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_constant_schedule_with_warmup

    wall0, cpu0, t0 = time.perf_counter(), time.process_time(), clock()
    scheduler = DDPMScheduler(num_train_timesteps=DDPM_STEPS, beta_schedule="linear", prediction_type="epsilon")
    x, _ = load_training_data(cfg)
    loader = iter(ArrayLoader(x, None, batch_size=cfg.data.batch_size, seed=cfg.seed))
    oc = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
    lr_schedule = get_constant_schedule_with_warmup(opt, num_warmup_steps=oc.warmup_steps)
    ema = EMA(model, half_life=oc.ema_half_life, rampup=TrainConfig().ema_rampup)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    while clock() - t0 < budget:
        x0, _ = next(loader)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, DDPM_STEPS, (x0.shape[0],), generator=gen)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
        opt.step()
        lr_schedule.step()
        step += 1
        ema.update(model, step)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"diffusers baseline loss became {loss.item()} at step {step}")
    seconds = {"budget_clock": clock() - t0, "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}
    return ema.module, {**seconds, "steps": step}


@torch.no_grad()
def sample_diffusers(model: nn.Module, n: int, seed: int) -> tuple[Tensor, int, float]:
    """DDIM (eta = 0) with diffusers' default settings for the training scheduler; (samples, NFE, wall seconds)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train_sched = DDPMScheduler(num_train_timesteps=DDPM_STEPS, beta_schedule="linear", prediction_type="epsilon")
    ddim = DDIMScheduler.from_config(train_sched.config)
    ddim.set_timesteps(DDIM_STEPS)
    start = time.perf_counter()
    x = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        x = ddim.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    return x, len(ddim.timesteps), time.perf_counter() - start


# ---------------------------------------------------------------------------- report


def evaluate(samples: Tensor, nfe: int, sample_seconds: float) -> dict[str, Any]:
    """The metrics of one method; samples are clipped to the data range [-1, 1] first (as when saved as images)."""
    samples = samples.clamp(-1, 1)
    conf = logistic_digits_confidence(samples)
    return {
        "classifier_fd": classifier_frechet_distance(samples),
        "logistic_confidence": conf.mean_confidence,
        "classes_covered": int((conf.histogram > 0).sum()),
        "class_counts": conf.histogram.tolist(),
        "nfe": nfe,
        "sample_seconds": sample_seconds,
        "samples_per_sec": samples.shape[0] / sample_seconds,
    }


def save_side_by_side(grids: dict[str, Tensor], path: Path) -> None:
    """The first 100 samples of each method as 10x10 grids in one PNG, titled by method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(grids), 4.6))
    for ax, (title, x) in zip(fig.subplots(1, len(grids), squeeze=False)[0], grids.items()):
        ax.imshow(image_grid(x[:100], nrow=10)[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(result: dict[str, Any]) -> str:
    """This benchmark's RESULTS.md section: command, machine load, goal and the table."""
    rows = result["methods"]
    lines = [
        SECTION, "",
        f"Command: `{result['command']}`  ",
        f"Clock: {result['clock']}; torch threads {result['threads']}; load average at start/end "
        f"{result['loadavg_start']} / {result['loadavg_end']} on {result['cpus']} CPUs"
        + (" — **timings taken on a loaded machine**" if result["loaded_machine"] else "") + ".  ",
        f"{result['n']} samples per method; Frechet distance in the 128-d features of the digits classifier "
        f"vs all 1,797 real digits (held-out real test split: {result['real_test_split_fd']:.2f}). "
        f"Goal: diffusekit <= 0.5 x baseline -> ratio {result['fd_ratio']:.3f} "
        f"({'met' if result['goal_met'] else 'not met'}).",
        *([f"Budget mode (--budget {result['budget_s']:g}): diffusekit trained "
           f"{rows[next(iter(rows))]['train_steps']} of the preset's {result['preset_steps']} steps."]
          if result["budget_s"] is not None else []),
        "",
        "| method | params | train steps | train wall s | train CPU s | NFE | samples/s | classifier FD | "
        "logistic conf. | classes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['train_steps']} | {r['train_wall_s']:.1f} | {r['train_cpu_s']:.1f} | "
            f"{r['nfe']} | {r['samples_per_sec']:.0f} | {r['classifier_fd']:.2f} | {r['logistic_confidence']:.3f} | "
            f"{r['classes_covered']}/10 |"
        )
    lines += ["", f"Samples (first 100 of each): `{result['png']}`", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving other sections alone."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=None,
                    help="training seconds for both (default: diffusekit's preset steps, baseline gets its time)")
    ap.add_argument("--n", type=int, default=None, help="samples per method (default 1000, --quick 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 s budget, 200 samples, outputs in runs/ (a smoke run)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="budget clock: wall time, or process CPU time (fairer on a shared machine)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    budget = 20.0 if args.quick and args.budget is None else args.budget
    n = args.n if args.n is not None else (200 if args.quick else 1000)
    if n < 2:
        raise SystemExit(f"--n must be >= 2 (a covariance needs two samples), got {n}")
    if budget is not None and not budget > 0:
        raise SystemExit(f"--budget must be positive seconds, got {budget}")
    out_dir = Path("runs/digits_vs_diffusers_quick") if args.quick else HERE / "results"
    torch.set_num_threads(args.threads)
    clock = make_clock(args.clock)
    exe = sys.executable
    exe = os.path.relpath(exe) if exe.startswith(os.getcwd() + os.sep) else Path(exe).name
    command = shlex.join([exe, *sys.argv])
    print(f"command: {command}", flush=True)
    load_start = [round(v, 2) for v in os.getloadavg()]

    cfg = PRESETS["digits"].with_overrides([f"seed={args.seed}"])
    with tempfile.TemporaryDirectory(prefix="dk-digits-bench-") as tmp:
        work = Path(tmp)
        if budget is not None:
            cfg = cfg.with_overrides([f"steps={steps_for_budget(cfg, budget, work, clock)}"])
        print(f"diffusekit: training {cfg.steps} steps of the digits preset ...", flush=True)
        dk_time = train_diffusekit(cfg, work / "diffusekit", clock)
        dk_x, dk_nfe, dk_sec, dk_params = sample_diffusekit(work / "diffusekit", n, args.seed)

    width, hf_params = matched_width(dk_params)
    torch.manual_seed(args.seed)
    print(f"diffusers: UNet2DModel width {width} ({hf_params:,} vs {dk_params:,} params), "
          f"training for {dk_time['budget_clock']:.1f} {args.clock} seconds ...", flush=True)
    hf_model, hf_time = train_diffusers(diffusers_unet(width), cfg, dk_time["budget_clock"], clock, args.seed)
    hf_x, hf_nfe, hf_sec = sample_diffusers(hf_model, n, args.seed)

    dk_name = f"diffusekit digits preset ({cfg.diffusion.parameterization}, {cfg.sampling.solver})"
    hf_name = f"diffusers UNet2DModel + DDPM, DDIM {DDIM_STEPS}"
    methods = {
        dk_name: {"params": dk_params, "train_steps": cfg.steps, "train_wall_s": dk_time["wall"],
                  "train_cpu_s": dk_time["cpu"], **evaluate(dk_x, dk_nfe, dk_sec)},
        hf_name: {"params": hf_params, "train_steps": hf_time["steps"], "train_wall_s": hf_time["wall"],
                  "train_cpu_s": hf_time["cpu"], "unet_width": width, **evaluate(hf_x, hf_nfe, hf_sec)},
    }
    fd_dk, fd_hf = methods[dk_name]["classifier_fd"], methods[hf_name]["classifier_fd"]
    load_end = [round(v, 2) for v in os.getloadavg()]
    cpus = os.cpu_count() or 1
    png = out_dir / "digits_vs_diffusers.png"
    save_side_by_side({f"{dk_name}\nFD {fd_dk:.2f}": dk_x, f"{hf_name}\nFD {fd_hf:.2f}": hf_x}, png)
    result = {
        "command": command, "clock": args.clock, "threads": args.threads, "n": n, "seed": args.seed,
        "budget_s": budget, "preset_steps": PRESETS["digits"].steps, "preset": cfg.to_dict(), "cpus": cpus, "loadavg_start": load_start,
        "loadavg_end": load_end, "loaded_machine": max(load_start[0], load_end[0]) > cpus * 0.75,
        "platform": platform.platform(), "torch": torch.__version__,
        "diffusers_setup": {"train_scheduler": f"DDPMScheduler({DDPM_STEPS}, linear, epsilon)",
                            "sampler": f"DDIMScheduler {DDIM_STEPS} steps, eta 0", "optimizer": "AdamW (preset lr, "
                            "warm-up, grad clip, weight decay) + EMA (preset half-life)"},
        "real_test_split_fd": classifier_frechet_distance(load_digits_split().test_images),
        "methods": methods, "fd_ratio": fd_dk / fd_hf, "goal_met": fd_dk <= 0.5 * fd_hf,
        "png": str(png.relative_to(Path.cwd()) if png.is_relative_to(Path.cwd()) else png),
    }
    json_path = out_dir / "digits_vs_diffusers.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    section = markdown(result)
    print(section)
    if not args.quick:
        write_section(HERE / "RESULTS.md", section)
    print(f"wrote {json_path} and {png}" + ("" if args.quick else f" and {HERE / 'RESULTS.md'}"))


if __name__ == "__main__":
    main()
