"""Time-series imputation and forecasting on statsmodels' US macrodata (CSDI-style, issue 15 point 7).

Data: 12 series (8 quarterly growth rates, 4 rates; ``data.series.load_macrodata``), 202 quarters.
The model (``tasks.imputation``, ``models.series.SeriesNet``) is trained on every 24-quarter window
of the first 150 quarters (1959Q3-1996Q4) under random and forecast masks; all numbers below are on
the last 52 quarters (1997Q1-2009Q3), never seen in training, in units of each series' training
standard deviation (z-scores).

- Imputation: 20% of the test cells are hidden at random (seeded); the model imputes them from the
  rest of the test table (``impute.impute_table``); baseline: linear interpolation in time per
  series (nearest value at the ends).
- The same 20% imputation on the training period (in-sample), to tell over-fitting and the shift
  of the test period from miscalibration.
- Forecasting: at 12 origins (every 2 quarters), the 20 quarters before the origin are observed and
  the next 4 are hidden in all 12 series; baseline: seasonal naive, y_{o+h} = y_{o+h-4}.

Scores on the hidden cells: CRPS (``metrics.forecast.crps_samples``; a point forecast's CRPS is its
absolute error), MAE of the median, and the share of true values inside the central 50% and 90%
intervals of the samples. 100 samples per cell, DPM-Solver++(2M) SDE at 100 NFE (``--solver``).

Run: ``python benchmarks/imputation_macrodata.py`` (writes benchmarks/results/imputation_macrodata.json/.md
and the run folder runs/imputer-macrodata).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusekit.data.series import load_macrodata
from diffusekit.files import atomic_write_text
from diffusekit.impute import impute_table, load_imputer, train_imputer
from diffusekit.metrics.forecast import crps_samples, interval_coverage
from diffusekit.tasks.imputation import SOLVER, impute

OUT = Path(__file__).resolve().parent / "results"
TRAIN_ROWS, WINDOW, HORIZON, SEASON = 150, 24, 4, 4


def linear_interpolation(table: torch.Tensor) -> torch.Tensor:
    """Fill NaN cells of (T, K) by linear interpolation in time per column (nearest value at the ends)."""
    out = table.clone()
    t = np.arange(table.shape[0])
    for k in range(table.shape[1]):  # one call per series
        col = table[:, k].numpy()
        seen = ~np.isnan(col)
        out[:, k] = torch.from_numpy(np.interp(t, t[seen], col[seen]))
    return out


def scores(draws: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean CRPS, MAE of the median, 50% and 90% coverage over the entries of ``truth``; draws (S, ...)."""
    return {
        "crps": float(crps_samples(draws, truth).mean()),
        "mae": float((draws.median(0).values - truth).abs().mean()),
        "coverage50": float(interval_coverage(draws, truth, 0.5).double().mean()),
        "coverage90": float(interval_coverage(draws, truth, 0.9).double().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--solver", default=SOLVER)
    parser.add_argument("--run", default="runs/imputer-macrodata-800")
    parser.add_argument("--out", default="imputation_macrodata", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    start = time.perf_counter()
    if not (run / "imputer.json").is_file():
        train_imputer(run, "macrodata", window=WINDOW, train_rows=TRAIN_ROWS, steps=args.steps, progress=False)
    train_seconds = time.perf_counter() - start
    den, spec = load_imputer(run)
    values, names = load_macrodata()
    table = torch.from_numpy(values)
    std = torch.tensor(spec.std, dtype=torch.float64)
    test = table[TRAIN_ROWS:]
    rows = []
    label = f"diffusion ({args.solver} {args.nfe} NFE, {args.samples} samples)"

    # imputation of 20% random cells
    hide = torch.rand(test.shape, generator=torch.Generator().manual_seed(0)) < 0.2
    given = torch.where(hide, torch.nan, test)
    start = time.perf_counter()
    draws = impute_table(den, spec, given, args.samples, solver=args.solver, nfe=args.nfe, seed=1)
    seconds = time.perf_counter() - start
    assert bool((draws[:, ~hide] == test[~hide]).all())
    z_draws, z_truth = draws[:, hide] / std.expand_as(test)[hide], test[hide] / std.expand_as(test)[hide]
    rows.append({"task": "impute 20% random cells", "method": label,
                 "cells": int(hide.sum()), "seconds": round(seconds, 1), **scores(z_draws, z_truth)})
    interp = linear_interpolation(given)[hide] / std.expand_as(test)[hide]
    rows.append({"task": "impute 20% random cells", "method": "linear interpolation", "cells": int(hide.sum()),
                 "seconds": 0.0, **scores(interp[None], z_truth)})

    # the same on the training period (in-sample: tells overfitting and shift from miscalibration)
    train_tab = table[:TRAIN_ROWS]
    hide_tr = torch.rand(train_tab.shape, generator=torch.Generator().manual_seed(3)) < 0.2
    start = time.perf_counter()
    tr_draws = impute_table(den, spec, torch.where(hide_tr, torch.nan, train_tab), args.samples, solver=args.solver,
                            nfe=args.nfe, seed=4)
    seconds = time.perf_counter() - start
    scale_tr = std.expand_as(train_tab)[hide_tr]
    rows.append({"task": "impute 20% random cells, training period", "method": label, "cells": int(hide_tr.sum()),
                 "seconds": round(seconds, 1),
                 **scores(tr_draws[:, hide_tr] / scale_tr, train_tab[hide_tr] / scale_tr)})

    # forecasts of the next 4 quarters at 12 origins
    origins = torch.arange(len(table) - 2 * 11 - HORIZON, len(table) - HORIZON + 1, 2)
    idx = origins[:, None] + torch.arange(-(WINDOW - HORIZON), HORIZON)  # (N, WINDOW)
    win = spec.scale(table)[idx].transpose(1, 2).float()  # (N, K, WINDOW)
    mask = torch.ones_like(win, dtype=torch.bool)
    mask[..., -HORIZON:] = False
    start = time.perf_counter()
    fdraws = impute(den, torch.where(mask, win, 0.0), mask, args.samples, solver=args.solver, nfe=args.nfe,
                    seed=2).double()
    seconds = time.perf_counter() - start
    truth_w = win.double()[..., -HORIZON:]
    rows.append({"task": "forecast 4 quarters, 12 origins", "method": label,
                 "cells": truth_w.numel(), "seconds": round(seconds, 1), **scores(fdraws[..., -HORIZON:], truth_w)})
    naive = win.double()[..., -HORIZON - SEASON : -SEASON]
    rows.append({"task": "forecast 4 quarters, 12 origins", "method": "seasonal naive (y[t-4])", "cells": truth_w.numel(),
                 "seconds": 0.0, **scores(naive[None], truth_w)})

    for r in rows:
        print(f"{r['task']:32s} {r['method']:36s} CRPS={r['crps']:.3f} MAE={r['mae']:.3f} "
              f"cov50={r['coverage50']:.2f} cov90={r['coverage90']:.2f} ({r['cells']} cells, {r['seconds']} s)")
    OUT.mkdir(exist_ok=True)
    meta = {"train_steps": args.steps, "train_seconds": round(train_seconds, 1), "samples": args.samples,
            "solver": args.solver, "nfe": args.nfe,
            "series": names, "train_rows": TRAIN_ROWS, "test_rows": int(test.shape[0])}
    atomic_write_text(OUT / f"{args.out}.json", json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = ["| task | method | CRPS | MAE | 50% coverage | 90% coverage | cells | seconds |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {r['crps']:.3f} | {r['mae']:.3f} | {r['coverage50']:.2f} | "
              f"{r['coverage90']:.2f} | {r['cells']} | {r['seconds']} |" for r in rows]
    atomic_write_text(OUT / f"{args.out}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
