"""Deterministic and stochastic samplers: diffusekit vs diffusers vs k-diffusion on the exact oracle.

Problem (``problems.py``): 64-d, 8-component mixture with sharp modes on the DDPM linear
schedule; the exact model for every method (``anchors.py``: diffusers gets eps at its
timestep, k-diffusion the denoiser at its sigma). All start from the same x_T at t_max
(float64). Reported per method and NFE (5, 8, 10, 15, 20, 50): RMSE to the exact ODE solution
from the same x_T (first ``--trajectories`` starts), the fraction ending in another component
than the exact ODE, RMSE over the rest, within-component spread (1 = exact) and mean
log-likelihood of all ``--samples`` samples (exact samples give the ceiling), the NFE
actually used, and per-call overhead outside the model (the loop timed with a zero-cost
model that returns a cached tensor) at batch 1 and 4,096 (median of repeats; the machine
is shared, so these are timings on a loaded machine).

diffusekit methods run with their defaults (solver default grid and options: whatever they
are when this runs) plus option sweeps (orders, grids); diffusers every scheduler with its
default spacing, Karras sigmas off and on; k-diffusion every fixed-step sampler on its
discrete sigmas and on Karras sigmas. Step counts: ``steps_for`` maps a target NFE to steps
(2N - 1 calls for the two-stage samplers); the table's NFE column is the measured count.

Run: ``python benchmarks/solvers_vs_anchors.py`` (full, ~10-20 min on 2 loaded cores) or
``--quick``; writes benchmarks/results/solvers.json, solvers.md and solvers_rmse.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.solvers import DEFAULT_SOLVER, SOLVERS, make_solver

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import anchor_helpers as anchors  # noqa: E402
import problems  # noqa: E402
from problems import quality, reference, sharp_mixture, start_points  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / ".cache"  # exact ODE references (gitignored)


@dataclass
class Method:
    library: str
    name: str
    stochastic: bool
    calls_per_step: int  # 2 for two-stage samplers (2N - 1 calls), else 1
    run: Callable[[Tensor, int, int, bool], tuple[Tensor, int]]  # (x_T, steps, seed, zero_cost) -> (x, nfe)

    def steps_for(self, nfe: int) -> int:
        return max(1, (nfe + 1) // 2) if self.calls_per_step == 2 else nfe


# ---------------------------------------------------------------------------
# zero-cost models: return a cached output of the right shape (no model time)
# ---------------------------------------------------------------------------


class CachedNet(torch.nn.Module):
    """A 'network' whose output is a fixed tensor: timing it measures the loop, not the model."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: Tensor, c_noise: Tensor, cond: object = None) -> Tensor:
        return self.out


# ---------------------------------------------------------------------------
# the three libraries
# ---------------------------------------------------------------------------


def diffusekit_method(oracle, name: str, solver: dk.Solver, grid_name: str | None, **grid_options: object) -> Method:
    """``solver`` on ``grid_name`` (its default grid when None) with the exact model; labelled
    'name [grid]' unless the grid is the default."""
    schedule = oracle.schedule

    def run(x_T: Tensor, steps: int, seed: int, zero_cost: bool) -> tuple[Tensor, int]:
        model = dk.Denoiser(CachedNet(0.1 * x_T), schedule, "eps") if zero_cost else oracle
        grid = dk.make_grid(grid_name or solver.default_grid, schedule, steps, **grid_options)
        sol = dk.sample(model, solver, x_T, grid=grid, seed=seed, progress=False, dtype=x_T.dtype)
        return sol.x, sol.nfe

    label = name if grid_name is None else f"{name} [{grid_name}{''.join(f' {k}={v}' for k, v in grid_options.items())}]"
    return Method("diffusekit", label, solver.stochastic, 2 if solver.nfe_per_step == 2 else 1, run)


def diffusekit_methods(oracle, quick: bool, sweeps: bool = True) -> list[Method]:
    def make(name: str, solver: dk.Solver, grid_name: str | None) -> Method:
        return diffusekit_method(oracle, name, solver, grid_name)

    out = []
    for name in SOLVERS.names():  # every fixed-step solver with its defaults
        solver = make_solver(name)
        if solver.adaptive or name == "annealed_langevin":  # NCSN's sampler needs hundreds of levels
            continue
        out.append(make(name, solver, None))
    for name in ("ddim", "heun", "deis", "lms", "ipndm", "plms", "dpmpp_2m", "unipc"):  # the Gaussian clean end
        out.append(make(f"{name} end=gaussian", make_solver(name, end="gaussian"), None))
    if quick or not sweeps:
        return out
    grids = ("uniform_lambda", "karras", "quadratic_t")
    sweeps = [
        ("dpm_solver order=2", {"order": 2}, "dpm_solver"),
        ("dpm_solver order=3", {"order": 3}, "dpm_solver"),
        ("dpm_solver singlestep order=3", {"order": 3, "method": "singlestep"}, "dpm_solver"),
        ("unipc order=3", {"order": 3}, "unipc"),
        ("unipc order=4", {"order": 4}, "unipc"),
        ("unipc bh1 order=3", {"order": 3, "variant": "bh1"}, "unipc"),
        ("deis order=3", {"order": 3}, "deis"),
    ]
    for label, options, name in sweeps:
        for g in grids:
            out.append(make(label, make_solver(name, **options), g))
    return out


def diffusers_methods(oracle, quick: bool) -> list[Method]:
    if anchors.load_diffusers() is None:
        print("diffusers missing: skipped", file=sys.stderr)
        return []
    schedule = oracle.schedule
    if isinstance(schedule, (dk.EDMSchedule, dk.VESchedule)):
        return diffusers_edm_methods(oracle)
    two_stage = {"heun", "kdpm2", "kdpm2_ancestral", "dpmsolver_sde"}

    def make(name: str, karras: bool) -> Method:
        def run(x_T: Tensor, steps: int, seed: int, zero_cost: bool) -> tuple[Tensor, int]:
            extra = {"noise_sampler_seed": seed} if name == "dpmsolver_sde" else {}  # its Brownian tree
            scheduler = anchors.diffusers_scheduler(name, schedule, karras=karras, **extra)
            if zero_cost:
                cached = 0.1 * x_T
                calls = [0]

                def model(x_in: Tensor, t: Tensor) -> Tensor:
                    calls[0] += 1
                    return cached
            else:
                model = anchors.DiffusersOracle(oracle)
            x = anchors.run_diffusers(scheduler, model, x_T, steps, generator=torch.Generator().manual_seed(seed))
            return x.double(), (calls[0] if zero_cost else model.calls)

        label = name + (" karras" if karras else "")
        return Method("diffusers", label, name in anchors.DIFFUSERS_STOCHASTIC, 2 if name in two_stage else 1, run)

    out = []
    for name in anchors.DIFFUSERS_SCHEDULERS:
        out.append(make(name, False))
        if not quick and anchors.has_karras(name):
            out.append(make(name, True))
    return out


def diffusers_edm_methods(oracle) -> list[Method]:
    """diffusers' EDM schedulers (Euler, DPM-Solver++ 2M / 3M) on Karras and exponential sigmas (EDM, VE)."""
    schedule = oracle.schedule

    def make(name: str, spacing: str) -> Method:
        def run(x_T: Tensor, steps: int, seed: int, zero_cost: bool) -> tuple[Tensor, int]:
            scheduler = anchors.diffusers_edm_scheduler(name, schedule, spacing)
            model = anchors.DiffusersEDMOracle(oracle, scheduler.config.sigma_data)
            x = anchors.run_diffusers(scheduler, model, x_T / scheduler.init_noise_sigma, steps)
            return x.double(), model.calls

        return Method("diffusers", f"{name} {spacing}", False, 1, run)

    return [make(name, spacing) for name in anchors.DIFFUSERS_EDM_SCHEDULERS for spacing in ("karras", "exponential")]


K_SAMPLERS = {  # sampler -> (calls per step, stochastic)
    "sample_euler": (1, False),
    "sample_heun": (2, False),
    "sample_dpm_2": (2, False),
    "sample_lms": (1, False),
    "sample_dpmpp_2m": (1, False),
    "sample_euler_ancestral": (1, True),
    "sample_dpm_2_ancestral": (2, True),
    "sample_dpmpp_2s_ancestral": (2, True),
    "sample_dpmpp_sde": (2, True),
    "sample_dpmpp_2m_sde": (1, True),
    "sample_dpmpp_3m_sde": (1, True),
}


def k_diffusion_methods(oracle, quick: bool) -> list[Method]:
    K = anchors.load_k_diffusion_sampling()
    if K is None:
        print("k-diffusion missing: skipped", file=sys.stderr)
        return []
    schedule = oracle.schedule

    def make(sampler: str, karras: bool, options: dict) -> Method:
        calls_per_step, stochastic = K_SAMPLERS[sampler]

        def run(x_T: Tensor, steps: int, seed: int, zero_cost: bool) -> tuple[Tensor, int]:
            if isinstance(schedule, (dk.EDMSchedule, dk.VESchedule)):  # karras or exponential sigmas over its range
                sigmas = anchors.k_edm_sigmas(schedule, steps, "karras" if karras else "exponential")
            else:  # the training sigmas: karras between their ends, or interpolated at equal index steps
                sigmas = (anchors.k_karras_sigmas if karras else anchors.k_discrete_sigmas)(schedule, steps)
            alpha_T = float(schedule.alpha_sigma(torch.tensor(schedule.t_max, dtype=torch.float64))[0])
            x_hat = x_T / alpha_T  # x / alpha at t_max
            if zero_cost:
                cached = 0.1 * x_T
                calls = [0]

                def model(x: Tensor, s: Tensor, **_: object) -> Tensor:
                    calls[0] += 1
                    return cached
            else:
                model = anchors.KDiffusionOracle(oracle)
            torch.manual_seed(seed)
            x = getattr(K, sampler)(model, x_hat, sigmas, disable=True, **options)
            return x.double(), (calls[0] if zero_cost else model.calls)

        spacing = " karras" if karras else (" exponential" if isinstance(schedule, (dk.EDMSchedule, dk.VESchedule)) else "")
        label = sampler.removeprefix("sample_") + "".join(f" {k}={v}" for k, v in options.items()) + spacing
        return Method("k-diffusion", label, stochastic and options.get("eta", 1) != 0, calls_per_step, run)

    out = []
    for sampler in K_SAMPLERS:
        for karras in (False, True) if not quick else (True,):
            out.append(make(sampler, karras, {}))
    for karras in (False, True) if not quick else (True,):  # the deterministic 3M rule
        out.append(make("sample_dpmpp_3m_sde", karras, {"eta": 0.0}))
    return out


# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------


def overhead_us(method: Method, dim: int, batch: int, repeats: int) -> float | None:
    """Median wall time per model call of the loop with a zero-cost model (microseconds)."""
    x_T = torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = method.steps_for(10)
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                _, nfe = method.run(x_T, steps, 0, True)
            times.append((time.perf_counter() - start) / max(nfe, 1))
    except Exception as e:  # noqa: BLE001 - a failing anchor is a result, not a crash
        print(f"  timing failed: {method.library} {method.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return 1e6 * statistics.median(times)


def measure(method: Method, oracle, x_T: Tensor, ref: Tensor, nfe: int, seed: int) -> dict:
    row = {"library": method.library, "method": method.name, "stochastic": method.stochastic, "nfe_target": nfe}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, used = method.run(x_T, method.steps_for(nfe), seed, False)
    except Exception as e:  # noqa: BLE001 - refusals and crashes of a method are results
        return {**row, "error": f"{type(e).__name__}: {str(e)[:120]}"}
    row["nfe"] = used
    finite = torch.isfinite(x).all(1)
    row["finite_fraction"] = float(finite.double().mean())
    if not bool(finite.all()):
        return {**row, "error": f"non-finite output in {int((~finite).sum())} samples"}
    n_ref = ref.shape[0]
    q_ref = quality(oracle, x[:n_ref], ref)
    q_all = quality(oracle, x, x)  # spread and log-likelihood of all samples (no reference needed)
    if not method.stochastic:
        row.update(rmse=q_ref.rmse, wrong_component=q_ref.wrong_component, rmse_right=q_ref.rmse_right)
    row.update(spread=q_all.spread, spread_narrow=q_all.spread_narrow, spread_wide=q_all.spread_wide, log_lik=q_all.log_lik)
    return row


def cached_reference(oracle, x_T: Tensor, tag: str) -> Tensor:
    """The exact ODE solutions of x_T, cached in benchmarks/.cache (checked against x_T on load)."""
    path = CACHE / f"solvers_reference_{tag}.pt"
    if path.exists():
        saved = torch.load(path)
        if torch.equal(saved["x_T"], x_T):
            return saved["ref"]
    start = time.perf_counter()
    ref = reference(oracle, x_T)
    print(f"reference ODE for {len(x_T)} trajectories: {time.perf_counter() - start:.1f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x_T": x_T, "ref": ref}, path)
    return ref


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def fmt(v: object, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def best_table(rows: list[dict], nfes: list[int]) -> list[str]:
    """Best deterministic configuration (lowest RMSE, NFE used <= target) per library and NFE."""
    lines = ["| NFE | library | best configuration | NFE used | RMSE | wrong comp. | RMSE right | spread | log-lik |", "|---|---|---|---|---|---|---|---|---|"]
    for nfe in nfes:
        for lib in ("diffusekit", "diffusers", "k-diffusion"):
            cand = [r for r in rows if r["library"] == lib and r["nfe_target"] == nfe and "rmse" in r and r["nfe"] <= nfe]
            if not cand:
                continue
            b = min(cand, key=lambda r: r["rmse"])
            lines.append(
                f"| {nfe} | {lib} | {b['method']} | {b['nfe']} | {fmt(b['rmse'])} | {fmt(b['wrong_component'], '.3f')} | "
                f"{fmt(b['rmse_right'])} | {fmt(b['spread'], '.3f')} | {fmt(b['log_lik'], '.2f')} |"
            )
    return lines


def full_table(rows: list[dict], timing: dict) -> list[str]:
    lines = [
        "| library | method | NFE | NFE used | RMSE | wrong comp. | RMSE right | spread | log-lik | us/call b=1 | us/call b=4096 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = timing.get(f"{r['library']}|{r['method']}", {})
        if "error" in r:
            lines.append(f"| {r['library']} | {r['method']} | {r['nfe_target']} | {fmt(r.get('nfe'))} | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['library']} | {r['method']} | {r['nfe_target']} | {r['nfe']} | {fmt(r.get('rmse'))} | "
            f"{fmt(r.get('wrong_component'), '.3f')} | {fmt(r.get('rmse_right'))} | {fmt(r['spread'], '.3f')} | "
            f"{fmt(r['log_lik'], '.2f')} | {fmt(t.get('batch_1'), '.0f')} | {fmt(t.get('batch_4096'), '.0f')} |"
        )
    return lines


def plot(rows: list[dict], nfes: list[int], path: Path) -> None:
    """Log-log error vs NFE: RMSE over all trajectories, and over those ending in the right component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    colors = {"diffusekit": "tab:blue", "diffusers": "tab:orange", "k-diffusion": "tab:green"}
    for ax, key, title in zip(axes, ("rmse", "rmse_right"), ("all trajectories", "trajectories ending in the right component")):
        for lib, color in colors.items():
            best = []
            for nfe in nfes:
                cand = [r[key] for r in rows if r["library"] == lib and r["nfe_target"] == nfe and key in r and r["nfe"] <= nfe]
                best.append(min(cand) if cand else math.nan)
            ax.loglog(nfes, best, "o-", color=color, lw=2.5, label=f"{lib} (best configuration)")
        defaults = [r for r in rows if r["library"] == "diffusekit" and "[" not in r["method"] and key in r]
        for name in sorted({r["method"] for r in defaults}):
            pts = sorted((r["nfe"], r[key]) for r in defaults if r["method"] == name)
            ax.loglog(*zip(*pts), "-", color="tab:blue", alpha=0.25, lw=1)
        ax.set_xlabel("NFE")
        ax.set_title(f"RMSE to the exact ODE solution, {title}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("RMSE (thin: diffusekit solvers with defaults)")
    axes[0].legend()
    fig.suptitle("64-d sharp 8-mode mixture, DDPM linear schedule, exact model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(data: dict, out: Path) -> None:
    """solvers.md (best per library and NFE, then every row) and the error-vs-NFE plot."""
    rows, timing, nfes = data["rows"], data["overhead_us"], data["setup"]["nfes"]
    ceiling, model_us = data["exact_samples"], data["model_call_us"]
    md = [f"Exact samples: log-lik {ceiling['log_lik']:.2f} +- {ceiling['log_lik_se']:.2f} (1 s.e.), spread {ceiling['spread']:.3f}. "
          f"Oracle call: {model_us['batch_1']:.0f} us (batch 1), {model_us['batch_4096']:.0f} us (batch 4096). "
          f"Command: `{data['setup']['command']}`", "",
          "### Best deterministic configuration per library and NFE", "", *best_table(rows, nfes), "",
          "### All methods", "", *full_table(rows, timing), ""]
    out.with_suffix(".md").write_text("\n".join(md))
    plot(rows, nfes, out.parent / f"{out.name}_rmse.png")


def time_overheads(keys: list[str], repeats: int) -> None:
    """Per-call overhead at batch 1 and 4,096 of the named methods, interleaved over repeats."""
    oracle = sharp_mixture()
    methods = {f"{m.library}|{m.name}": m for lib in (diffusekit_methods, diffusers_methods, k_diffusion_methods)
               for m in lib(oracle, True)}
    unknown = [k for k in keys if k not in methods]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(methods)}")
    table = {k: {"batch_1": [], "batch_4096": []} for k in keys}
    for _ in range(repeats):  # interleaved, so a load change hits every method alike
        for k in keys:
            table[k]["batch_1"].append(overhead_us(methods[k], oracle.dim, 1, 5))
            table[k]["batch_4096"].append(overhead_us(methods[k], oracle.dim, 4096, 1))
    result = {k: {b: statistics.median(v) for b, v in row.items()} for k, row in table.items()}
    for k, row in result.items():
        print(f"{k:<32} {row['batch_1']:8.0f} us {row['batch_4096']:10.0f} us")
    (RESULTS / "solvers_overhead.json").write_text(json.dumps(
        {"command": " ".join(["python", *sys.argv]), "load_average": list(os.getloadavg()), "us_per_call": result}, indent=1))


# ---------------------------------------------------------------------------
# issue 11: mixture families x schedules, deterministic samplers, all trajectories
# ---------------------------------------------------------------------------

FAMILY_NFES = [5, 8, 10, 15, 20]
TUNING = {*((f, "ddpm") for f in problems.FAMILIES), ("d16k3", "edm"), ("iso64", "edm")}
"""(family, schedule) cells whose results had been seen when the default was chosen (iso64 / ddpm,
aniso64 / ddpm and d16k3 / edm were the intended tuning cells; the other DDPM cells and iso64 / edm
had been looked at too); the other EDM cells are held out."""

FAMILY_ANCHORS = {
    "diffusers": {"dpm++2m", "dpm++3m", "dpm2m", "dpm3m", "unipc_bh2", "deis", "lms", "edm_euler", "edm_dpm++2m", "edm_dpm++3m"},
    "k-diffusion": {"euler", "heun", "lms", "dpmpp_2m", "dpmpp_3m_sde eta=0.0"},
}
"""Anchor configurations of the family run (each with its spacings: default / Karras, or Karras / exponential
on EDM). Dropped after the first full cell (iso64 / ddpm, all configurations) and a 200-trajectory pilot on
d16k3 and ring2d: never best at any NFE there (DDIM, Euler, PNDM, PLMS, KDPM2, Heun, DPM++ 2S / 3S in
diffusers, DPM-2 in k-diffusion) or non-finite (diffusers UniPC bh1)."""

CANDIDATES: list[tuple[str, dict, str | None, dict]] = [  # (solver, options, grid (None: its default), grid options)
    ("unipc", {}, None, {}),
    *[("unipc", {"order": o}, "uniform_lambda", {}) for o in (3, 4)],
    ("dpm_solver", {}, None, {}),
    ("dpm_solver", {"order": 3}, "uniform_lambda", {}),
    ("gaussian_pc", {}, None, {}),
    ("gaussian_pc", {}, "uniform_lambda", {}),
    ("ipndm", {}, "uniform_lambda", {}),
    ("deis", {"order": 3}, "uniform_lambda", {}),
    ("dpm_solver", {"order": 2}, "uniform_lambda", {}),
    *[("unipc", {"order": o, "end": "gaussian"}, "uniform_lambda", {}) for o in (3, 4)],
    ("dpm_solver", {"order": 3, "end": "gaussian"}, "uniform_lambda", {}),
]
"""The diffusekit configurations tried for the default (issue 11, "Find and build a default"). Karras-grid
and UniPC-bh1 variants were dropped after the first full cell (2-16x the best anchor there)."""


DEFAULT_LABEL = "default"


def default_method(oracle) -> Method:
    """The library's default sampler (``diffusekit.solvers.DEFAULT_SOLVER`` on its default grid),
    labelled ``DEFAULT_LABEL``."""
    method = diffusekit_method(oracle, DEFAULT_SOLVER, make_solver(DEFAULT_SOLVER), None)
    method.name = DEFAULT_LABEL
    return method


def candidate_methods(oracle) -> list[Method]:
    """``CANDIDATES`` as methods, labelled 'solver opt=v [grid]'."""
    out = []
    for name, options, grid, grid_options in CANDIDATES:
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        out.append(diffusekit_method(oracle, label, make_solver(name, **options), grid, **grid_options))
    return out


def family_methods(oracle) -> list[Method]:
    """Every deterministic diffusers and k-diffusion configuration for the oracle's schedule, then the candidates."""
    anchored = [m for lib in (diffusers_methods, k_diffusion_methods) for m in lib(oracle, False)
                if not m.stochastic and m.name.removesuffix(" karras").removesuffix(" exponential") in FAMILY_ANCHORS[m.library]]
    return anchored + [default_method(oracle), *candidate_methods(oracle)]


def run_families(families: list[str], schedules: list[str], n: int, nfes: list[int], out: Path, only: str | None) -> None:
    """Every (family, schedule) cell: n exact p_T draws, their exact ODE end points (cached),
    every method at every NFE; rows appended to ``out``.json after each cell (resumable)."""
    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"setup": {}, "rows": []}
    data["setup"] = {"families": sorted({*data["setup"].get("families", []), *families}),
                     "schedules": sorted({*data["setup"].get("schedules", []), *schedules}),
                     "trajectories": n, "nfes": nfes, "dtype": "float64", "threads": 1,
                     "start": "exact draws from p_{t_max} (problems.family_start), seed 1",
                     "tuning_cells": sorted(map(list, TUNING)), "command": " ".join(["python", *sys.argv])}
    for schedule_name in schedules:
        for family in families:
            oracle = problems.FAMILIES[family](problems.SCHEDULES[schedule_name]())
            x_T = problems.family_start(oracle, n)
            ref = cached_reference(oracle, x_T, f"{family}_{schedule_name}_{n}")
            methods = [m for m in family_methods(oracle) if only is None or only in m.name]
            done = {(r["family"], r["schedule"], r["library"], r["method"]) for r in data["rows"]}
            t0 = time.perf_counter()
            for m in methods:
                if (family, schedule_name, m.library, m.name) in done:
                    continue
                for nfe in nfes:
                    data["rows"].append({"family": family, "schedule": schedule_name, **measure(m, oracle, x_T, ref, nfe, seed=3)})
            print(f"{family} / {schedule_name}: {len(methods)} methods, {time.perf_counter() - t0:.0f} s", flush=True)
            path.write_text(json.dumps(data, indent=1))
    write_family_report(data, out)


def best_anchor(rows: list[dict], library: str | None, nfe: int) -> dict | None:
    """The lowest-RMSE anchor row (of ``library``, or of both) at a target NFE, its NFE used within it."""
    cand = [r for r in rows if r["library"] != "diffusekit" and (library is None or r["library"] == library)
            and r["nfe_target"] == nfe and "rmse" in r and r["nfe"] <= nfe]
    return min(cand, key=lambda r: r["rmse"]) if cand else None


def family_cells(data: dict) -> list[tuple[str, str, list[dict]]]:
    keys = sorted({(r["family"], r["schedule"]) for r in data["rows"]},
                  key=lambda k: (list(problems.FAMILIES).index(k[0]), list(problems.SCHEDULES).index(k[1])))
    return [(f, s, [r for r in data["rows"] if r["family"] == f and r["schedule"] == s]) for f, s in keys]


def ratio_cell(rows: list[dict], method: str, nfe: int) -> tuple[float, dict | None]:
    """(RMSE / best anchor RMSE, the method's row) at a target NFE; inf when the method failed."""
    best = best_anchor(rows, None, nfe)
    row = next((r for r in rows if r["library"] == "diffusekit" and r["method"] == method and r["nfe_target"] == nfe), None)
    if best is None or row is None or "rmse" not in row or row["nfe"] > nfe:
        return math.inf, row
    return row["rmse"] / best["rmse"], row


def meets_goal(ratio: float, row: dict, nfe: int) -> bool:
    """Issue 11's goal for the default: ratio <= 0.5, and at NFE >= 10 every spread within 0.95-1.05."""
    spreads = [v for v in (row["spread"], row["spread_narrow"], row["spread_wide"]) if not math.isnan(v)]
    return ratio <= 0.5 and (nfe < 10 or all(abs(v - 1) <= 0.05 for v in spreads))


def summary_cell(rows: list[dict], nfe: int) -> str:
    """'ratio (wrong; spread n/w)' of the default at one NFE, with **MISS** when it misses the goal."""
    ratio, r = ratio_cell(rows, DEFAULT_LABEL, nfe)
    if r is None or "rmse" not in r:
        return "not run **MISS**" if r is None else f"{r.get('error', 'failed')} **MISS**"
    text = (f"{ratio:.2f} ({r['wrong_component']:.4f}; {r['spread']:.2f}"
            + (f" {r['spread_narrow']:.2f}/{r['spread_wide']:.2f}" if abs(r["spread_narrow"] - r["spread_wide"]) > 0.02 else "") + ")")
    return text if meets_goal(ratio, r, nfe) else f"{text} **MISS**"


def write_family_report(data: dict, out: Path) -> None:
    """solver_families.md: per cell the best anchors and the default; then every candidate's ratio."""
    nfes = data["setup"]["nfes"]
    cells = family_cells(data)
    md = [f"Command: `{data['setup']['command']}`; {data['setup']['trajectories']} trajectories per cell, "
          f"{data['setup']['start']}; RMSE per coordinate over ALL trajectories to the exact PF-ODE end point. "
          "Ratio = default RMSE / best anchor RMSE (best of every deterministic diffusers and k-diffusion "
          "configuration at that NFE, NFE used <= target). Goal: ratio <= 0.5, spread within 0.95-1.05 at NFE >= 10; "
          "cells missing it are marked **MISS**. Tuning cells (seen when the default was chosen; the others are held out): "
          + ", ".join(f"{f}/{s}" for f, s in data["setup"]["tuning_cells"]) + ".", ""]
    md += ["### The default: RMSE / best anchor RMSE (wrong-mode fraction; spread overall, narrowest / widest third)", "",
           "| family / schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for family, schedule, rows in cells:
        tag = " (tuning)" if [family, schedule] in data["setup"]["tuning_cells"] else ""
        md.append(f"| {family} / {schedule}{tag} | " + " | ".join(summary_cell(rows, nfe) for nfe in nfes) + " |")
    md.append("")
    for family, schedule, rows in cells:
        tag = " (tuning cell)" if [family, schedule] in data["setup"]["tuning_cells"] else " (held out)"
        md += [f"### {family} / {schedule}{tag}", "",
               "| NFE | best diffusers | RMSE | wrong | best k-diffusion | RMSE | wrong | default RMSE | ratio | wrong | "
               "spread | narrow | wide | goal |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for nfe in nfes:
            bd, bk = best_anchor(rows, "diffusers", nfe), best_anchor(rows, "k-diffusion", nfe)
            ratio, r = ratio_cell(rows, DEFAULT_LABEL, nfe)
            cols = []
            for b in (bd, bk):
                cols += ["-", "-", "-"] if b is None else [b["method"], fmt(b["rmse"], ".2e"), fmt(b["wrong_component"], ".4f")]
            if r is None or "rmse" not in r:
                md.append(f"| {nfe} | {' | '.join(cols)} | {r.get('error', 'not run') if r else 'not run'} | | | | | | **MISS** |")
                continue
            spreads = (r["spread"], r["spread_narrow"], r["spread_wide"])
            ok = meets_goal(ratio, r, nfe)
            md.append(f"| {nfe} | {' | '.join(cols)} | {fmt(r['rmse'], '.2e')} | {ratio:.2f} | {fmt(r['wrong_component'], '.4f')} | "
                      + " | ".join(fmt(v, ".3f") for v in spreads) + f" | {'ok' if ok else '**MISS**'} |")
        md.append("")
    labels = sorted(set.intersection(*({r["method"] for r in rows if r["library"] == "diffusekit"} for _, _, rows in cells)))
    md += ["### Every diffusekit configuration: RMSE / best anchor RMSE per cell and NFE", "",
           "Worst = largest ratio over all cells and NFEs (inf: failed or used more calls); 'spread miss' = cells x NFE >= 10 "
           "with any spread (overall, narrow, wide) outside 0.95-1.05.", "",
           "| configuration | worst | median | spread misses | " + " | ".join(f"{f}/{s}" for f, s, _ in cells) + " |",
           "|---|---|---|---|" + "---|" * len(cells)]
    for label in labels:
        per_cell, allr, misses = [], [], 0
        for _, _, rows in cells:
            ratios = []
            for nfe in nfes:
                ratio, r = ratio_cell(rows, label, nfe)
                ratios.append(ratio)
                if nfe >= 10 and r is not None and "spread" in r and any(
                        abs(r[k] - 1) > 0.05 for k in ("spread", "spread_narrow", "spread_wide") if not math.isnan(r[k])):
                    misses += 1
            allr += ratios
            per_cell.append("/".join("x" if math.isinf(v) else f"{v:.2f}" for v in ratios))
        md.append(f"| {label} | {max(allr):.2f} | {statistics.median(allr):.2f} | {misses} | " + " | ".join(per_cell) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="defaults only, NFE 5/10/20, 1,000 samples, 64 trajectories")
    ap.add_argument("--nfe", type=int, nargs="*", default=None)
    ap.add_argument("--samples", type=int, default=None, help="samples for spread and log-likelihood (4,000)")
    ap.add_argument("--trajectories", type=int, default=None, help="trajectories with a reference ODE solution (256)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--libraries", nargs="*", default=["diffusekit", "diffusers", "k-diffusion"])
    ap.add_argument("--no-sweeps", action="store_true", help="diffusekit solvers with their defaults only")
    ap.add_argument("--out", default=str(RESULTS / "solvers"), help="output prefix (.json, .md, _rmse.png)")
    ap.add_argument("--report-only", action="store_true", help="rewrite .md and .png from the existing .json")
    ap.add_argument("--families", nargs="*", default=None, metavar="FAMILY",
                    help=f"issue 11 run over mixture families ({', '.join(problems.FAMILIES)}; none listed: all) "
                         "-> results/solver_families.json/.md")
    ap.add_argument("--schedules", nargs="*", default=list(problems.SCHEDULES), help="with --families")
    ap.add_argument("--only", default=None, help="with --families: only methods whose label contains this")
    ap.add_argument("--overhead", nargs="*", default=None, metavar="LIBRARY|METHOD",
                    help="only time these methods (e.g. 'diffusers|dpm++2m') -> results/solvers_overhead.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.families is not None:
        out = Path(args.out) if args.out != str(RESULTS / "solvers") else RESULTS / "solver_families"
        if args.report_only:
            write_family_report(json.loads(out.with_suffix(".json").read_text()), out)
            return
        torch.set_num_threads(1)
        run_families(args.families or list(problems.FAMILIES), args.schedules, args.trajectories or 4000,
                     args.nfe or FAMILY_NFES, out, args.only)
        return
    if args.report_only:
        write_reports(json.loads(out.with_suffix(".json").read_text()), out)
        return
    torch.set_num_threads(1)
    if args.overhead is not None:
        time_overheads(args.overhead, args.repeats)
        return
    nfes = args.nfe or ([5, 10, 20] if args.quick else [5, 8, 10, 15, 20, 50])
    n_samples = args.samples or (1000 if args.quick else 4000)
    n_traj = min(args.trajectories or (64 if args.quick else 256), n_samples)

    oracle = sharp_mixture()
    x_T = start_points(oracle, n_samples)
    ref = cached_reference(oracle, x_T[:n_traj], f"{n_traj}")
    exact = oracle.sample(n_samples, seed=2)
    exact_ll = oracle.log_prob(exact)
    ceiling = {"log_lik": float(exact_ll.mean()), "log_lik_se": float(exact_ll.std() / math.sqrt(n_samples)),
               "spread": quality(oracle, exact, exact).spread}
    print(f"exact samples: log-lik {ceiling['log_lik']:.2f} +- {ceiling['log_lik_se']:.2f} (1 s.e.), spread {ceiling['spread']:.3f}")

    builders = {"diffusekit": diffusekit_methods, "diffusers": diffusers_methods, "k-diffusion": k_diffusion_methods}
    methods = [m for lib in args.libraries for m in builders[lib](oracle, args.quick)]
    if args.no_sweeps:
        methods = [m for m in methods if not (m.library == "diffusekit" and "[" in m.name)]
    rows: list[dict] = []
    timing: dict[str, dict] = {}
    model_us = {}
    for batch in (1, 4096):
        xb = torch.randn(batch, oracle.dim, dtype=torch.float64)
        ts = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            oracle(xb, 0.5)
            ts.append(time.perf_counter() - start)
        model_us[f"batch_{batch}"] = 1e6 * statistics.median(ts)
    print(f"oracle model call: {model_us['batch_1']:.0f} us (batch 1), {model_us['batch_4096']:.0f} us (batch 4096)")

    for m in methods:
        t0 = time.perf_counter()
        for nfe in nfes:
            rows.append(measure(m, oracle, x_T, ref, nfe, seed=3))
        timing[f"{m.library}|{m.name}"] = {
            "batch_1": overhead_us(m, oracle.dim, 1, args.repeats),
            "batch_4096": overhead_us(m, oracle.dim, 4096, max(2, args.repeats // 2)),
        }
        summary = " ".join(
            f"{r['nfe_target']}:{fmt(r.get('rmse'), '.3f') if not m.stochastic else fmt(r.get('log_lik'), '.1f')}"
            if "error" not in r else f"{r['nfe_target']}:ERR" for r in rows[-len(nfes):]
        )
        t = timing[f"{m.library}|{m.name}"]
        print(f"{m.library:<11} {m.name:<40} {summary}  overhead {fmt(t['batch_1'], '.0f')}/{fmt(t['batch_4096'], '.0f')} us"
              f"  ({time.perf_counter() - t0:.1f} s)", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {"problem": "problems.sharp_mixture(): 64-d, 8 components, std 0.02-0.1, DDPM linear 1000 steps",
             "nfes": nfes, "samples": n_samples, "trajectories": n_traj, "dtype": "float64", "threads": 1,
             "timing": "median per model call of the loop with a zero-cost cached model; shared 2-core machine",
             "command": " ".join(["python", *sys.argv])}
    data = {"setup": setup, "exact_samples": ceiling, "model_call_us": model_us, "rows": rows, "overhead_us": timing}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    write_reports(data, out)
    print(f"wrote {out}.json, {out}.md, {out}_rmse.png")


if __name__ == "__main__":
    main()
