"""Is every solver sound on its own default grid, on every schedule? (issue 11, part 2)

For each registered solver with its default options and grid, on six schedules and on
isotropic, anisotropic and rotated (full-covariance) mixtures, at a budget of 10, 15 and
20 model calls: the within-mode spread of 4,000 samples relative to the truth (1 = exact;
narrowest and widest third of each mode's directions separately where modes are
anisotropic) and the model calls used against those the solver declares
(``Solver.nfe``). The samples start from exact draws of p(t_max), so the exact sampler's
spread is 1 on every schedule. Target: spread within [0.95, 1.05] at every budget >= 10.

    python benchmarks/solver_defaults.py [--samples 4000] [--solvers ddim heun ...]

Writes ``results/solver_defaults.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.sample import steps_for_nfe
from diffusekit.solvers import SOLVERS

sys.path.insert(0, str(Path(__file__).parent))
from problems import FAMILIES, family_start, spreads  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SCHEDULES = {
    "ddpm": lambda: dk.DiscreteSchedule("linear", 1000),
    "cosine": lambda: dk.DiscreteSchedule("cosine", 1000),
    "vp": lambda: dk.VPSchedule(),
    "ve": lambda: dk.VESchedule(),
    "edm": lambda: dk.EDMSchedule(),
    "flow": lambda: dk.FlowSchedule(),
}
FAMILY_NAMES = ("iso64", "aniso64", "rot64")
BUDGETS = (10, 15, 20)
TOL = 0.05


def run(names: list[str], samples: int) -> list[dict]:
    rows = []
    for fam in FAMILY_NAMES:
        for sched_name, make_schedule in SCHEDULES.items():
            schedule = make_schedule()
            oracle = FAMILIES[fam](schedule)
            x_T = family_start(oracle, samples)
            for name in names:
                solver = dk.make_solver(name)
                for budget in BUDGETS:
                    row = {"family": fam, "schedule": sched_name, "solver": name, "grid": solver.default_grid, "budget": budget}
                    try:
                        steps = steps_for_nfe(solver, schedule, budget)
                        grid = dk.make_grid(solver.default_grid, schedule, steps)
                        start = time.perf_counter()
                        sol = dk.sample(oracle, solver, x_T, grid=grid, seed=3, progress=False, dtype=torch.float64)
                        row.update(steps=steps, nfe=sol.nfe, declared=solver.nfe(grid), seconds=time.perf_counter() - start)
                        finite = bool(torch.isfinite(sol.x).all())
                        s_all, s_narrow, s_wide = spreads(oracle, sol.x) if finite else (math.nan,) * 3
                        row.update(finite=finite, spread=s_all, spread_narrow=s_narrow, spread_wide=s_wide)
                    except ValueError as e:  # a refusal is a result
                        row.update(error=str(e))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def sound(row: dict) -> bool:
    keys = ("spread",) if row["family"] == "iso64" else ("spread_narrow", "spread_wide")
    return all(abs(row.get(k, math.nan) - 1) <= TOL for k in keys)


def table(rows: list[dict]) -> list[str]:
    """One line per family x solver: the worst spread per schedule over the budgets, misses marked."""
    out = ["| family | solver | grid | " + " | ".join(SCHEDULES) + " | NFE declared = used |",
           "|---|---|---|" + "---|" * len(SCHEDULES) + "---|"]
    for fam in FAMILY_NAMES:
        for name in sorted({r["solver"] for r in rows}):
            cells, nfe_ok, grid = [], True, ""
            for sched in SCHEDULES:
                mine = [r for r in rows if (r["family"], r["solver"], r["schedule"]) == (fam, name, sched)]
                grid = mine[0]["grid"] if mine else grid
                if not mine or any("error" in r for r in mine):
                    cells.append("refused")
                    continue
                nfe_ok &= all(r["nfe"] == r["declared"] for r in mine)
                key = "spread" if fam == "iso64" else None
                vals = [r[key] for r in mine] if key else [v for r in mine for v in (r["spread_narrow"], r["spread_wide"])]
                worst = max(vals, key=lambda v: abs(v - 1) if math.isfinite(v) else math.inf)
                mark = "" if all(sound(r) for r in mine) else " **x**"
                cells.append(f"{worst:.3f}{mark}")
            out.append(f"| {fam} | {name} | {grid} | " + " | ".join(cells) + f" | {'yes' if nfe_ok else '**no**'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--solvers", nargs="*", default=None, help="default: every registered non-adaptive solver")
    ap.add_argument("--out", default=str(RESULTS / "solver_defaults"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.solvers or [n for n in SOLVERS.names() if not dk.make_solver(n).adaptive]
    rows = run(names, args.samples)
    out = Path(args.out)
    command = "python benchmarks/solver_defaults.py " + " ".join(sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))
    lines = [f"Worst within-mode spread over budgets {BUDGETS} (1 = exact; **x**: some budget outside "
             f"[{1 - TOL}, {1 + TOL}]). Command: `{command.strip()}`", "", *table(rows)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
