"""Imputation runs: train a CSDI-style model on a table of series, impute a CSV (`diffusekit impute`).

A run folder holds ``imputer.json`` (columns, window length, per-column mean and std of the
training rows, network size), ``checkpoints/`` and ``metrics.jsonl`` (the ``Trainer``'s). The
model works on standardised values; tables are cut into windows of the run's length
(``tasks.imputation``), blank cells are the values to impute, and blank rows at the end are a
forecast horizon.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import ArrayLoader
from .data.series import load_macrodata, windows
from .denoiser import Denoiser
from .files import atomic_write, atomic_write_text
from .models.series import SeriesNet
from .schedules import make_schedule
from .tasks.imputation import SOLVER, ImputationLoss, impute
from .train import TrainConfig, Trainer, newest_checkpoint
from .train.checkpoint import copy_weights

#: Quantile levels written by ``diffusekit impute`` next to each column.
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class ImputerSpec:
    """What rebuilds an imputation run's model and its scaling (``imputer.json``)."""

    columns: list[str]
    window: int
    mean: list[float]
    std: list[float]
    width: int = 64
    depth: int = 6
    schedule: str = "vp"
    parameterization: str = "eps"

    def denoiser(self) -> Denoiser:
        return Denoiser(SeriesNet(len(self.columns), self.width, self.depth), make_schedule(self.schedule),
                        self.parameterization)

    def scale(self, table: Tensor) -> Tensor:
        """Standardise (T, K) columns."""
        return (table - torch.tensor(self.mean, dtype=table.dtype)) / torch.tensor(self.std, dtype=table.dtype)

    def unscale(self, table: Tensor) -> Tensor:
        return table * torch.tensor(self.std, dtype=table.dtype) + torch.tensor(self.mean, dtype=table.dtype)


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """A CSV file as (header, rows of cells)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {p}")
    if p.suffix.lower() != ".csv":
        raise ValueError(f"input {p}: unsupported file type {p.suffix or '(none)'!r}; allowed: .csv")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{p} needs a header row and at least one data row")
    return rows[0], rows[1:]


def table_values(header: list[str], rows: list[list[str]], columns: list[str], where: str) -> Tensor:
    """The named ``columns`` of a CSV as (T, K) float64, blank cells as NaN; anything else unparsable is refused."""
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{where} lacks column(s) {', '.join(missing)}; the run needs {', '.join(columns)}")
    idx = [header.index(c) for c in columns]
    out = np.full((len(rows), len(columns)), np.nan)
    for r, row in enumerate(rows):
        for k, i in enumerate(idx):
            cell = row[i].strip() if i < len(row) else ""
            if cell == "" or cell.lower() == "nan":
                continue
            try:
                out[r, k] = float(cell)
            except ValueError:
                raise ValueError(f"{where}, row {r + 2}, column {columns[k]}: {cell!r} is not a number "
                                 "(allowed: a number, or a blank cell for a value to impute)") from None
            if not math.isfinite(out[r, k]):
                raise ValueError(f"{where}, row {r + 2}, column {columns[k]}: {cell!r} is not finite")
    return torch.from_numpy(out)


def load_series(data: str) -> tuple[Tensor, list[str]]:
    """``macrodata`` or a CSV path (every column numeric, no blank cells) as (T, K) and names."""
    if data == "macrodata":
        values, names = load_macrodata()
        return torch.from_numpy(values), names
    header, rows = read_table(data)
    table = table_values(header, rows, header, str(data))
    if bool(table.isnan().any()):
        raise ValueError(f"training data {data} has blank cells; allowed: a complete table")
    return table, header


def train_imputer(run_dir: str | os.PathLike[str], data: str = "macrodata", *, window: int = 24, train_rows: int | None = None,
                  steps: int = 800, batch_size: int = 64, lr: float = 1e-3, width: int = 64, depth: int = 6,
                  seed: int = 0, progress: bool = True) -> Trainer:
    """Train an imputation model on the first ``train_rows`` rows (all by default) of ``data``, on every
    window of ``window`` steps, under random and forecast masks (``tasks.imputation.ImputationLoss``)."""
    table, names = load_series(data)
    rows = table.shape[0] if train_rows is None else train_rows
    if not window <= rows <= table.shape[0]:
        raise ValueError(f"train_rows must be from the window length {window} to the {table.shape[0]} rows of {data}, "
                         f"got {rows}")
    train = table[:rows]
    std = train.std(0)
    if bool((std == 0).any()):
        raise ValueError(f"column(s) {', '.join(n for n, s in zip(names, std.tolist()) if s == 0)} are constant in the "
                         "training rows; allowed: columns that vary")
    spec = ImputerSpec(names, window, train.mean(0).tolist(), std.tolist(), width, depth)
    x = windows(spec.scale(train), window).float()
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ValueError(f"run folder {run} is a file; allowed: a folder")
    if any((run / "checkpoints").glob("step-*")):
        raise ValueError(f"{run} already holds a trained run; choose another folder")
    den = spec.denoiser()
    loader = ArrayLoader(x, batch_size=min(batch_size, x.shape[0]), seed=seed)
    cfg = TrainConfig(lr=lr, warmup_steps=min(100, steps // 10), decay_steps=steps, ema_half_life=steps / 20,
                      seed=seed, log_every=max(1, steps // 20), checkpoint_every=steps, keep_checkpoints=1,
                      progress=progress)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "imputer.json", json.dumps(asdict(spec), indent=1) + "\n")
    trainer = Trainer(den, loader, ImputationLoss(), cfg, run_dir=run, meta={"kind": "imputer"})
    trainer.fit(steps)
    return trainer


def load_imputer(run_dir: str | os.PathLike[str]) -> tuple[Denoiser, ImputerSpec]:
    """The EMA model and spec of an imputation run folder."""
    run = Path(run_dir)
    if not (run / "imputer.json").is_file():
        raise FileNotFoundError(f"{run} is not an imputation run folder (no imputer.json); "
                                "train one with diffusekit train-imputer")
    try:
        spec = ImputerSpec(**json.loads((run / "imputer.json").read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{run / 'imputer.json'} is unreadable ({e})") from None
    den = spec.denoiser()
    ckpt, _ = newest_checkpoint(run / "checkpoints", with_state=False)
    if ckpt is None:
        raise FileNotFoundError(f"{run} has no readable checkpoint")
    copy_weights(ckpt, den.net, "ema")  # type: ignore[arg-type]
    den.eval()
    return den, spec


def impute_table(den: Denoiser, spec: ImputerSpec, table: Tensor, samples: int = 100, *, solver: str = SOLVER,
                 nfe: int = 100, seed: int = 0) -> Tensor:
    """Draws (S, T, K) of a table (T, K) with NaN for the values to impute, in its own units; the observed
    cells are kept exactly. The table is cut into windows starting every ``window`` rows (the last one
    ending at row T); a row is taken from the last window that holds it."""
    t, w = table.shape[0], spec.window
    if t < w:
        raise ValueError(f"the table has {t} rows; this run needs at least its window length {w}")
    starts = torch.tensor(sorted({*range(0, t - w + 1, w), t - w}))
    observed = ~table.isnan()
    scaled = torch.where(observed, spec.scale(torch.nan_to_num(table)), torch.zeros_like(table))
    idx = starts[:, None] + torch.arange(w)  # (N, w)
    vals, mask = scaled[idx].transpose(1, 2), observed[idx].transpose(1, 2)  # (N, K, w)
    draws = impute(den, vals.float(), mask, samples, solver=solver, nfe=nfe, seed=seed).double()  # (S, N, K, w)
    owner = torch.searchsorted(starts, torch.arange(t), right=True) - 1  # the last window starting at or before r
    rows = draws.permute(1, 3, 0, 2)[owner, torch.arange(t) - starts[owner]].transpose(0, 1)  # (S, T, K)
    out = spec.unscale(rows)
    return torch.where(observed, table, out)  # observed cells bit-exact in the table's units


def write_imputed(path: str | os.PathLike[str], header: list[str], rows: list[list[str]], columns: list[str],
                  draws: Tensor) -> Path:
    """The input CSV with every blank cell of ``columns`` filled by the median draw, plus one column
    ``<name>_q<level>`` per quantile level of ``QUANTILES`` (observed cells: the value itself)."""
    q = torch.quantile(draws, torch.tensor(QUANTILES, dtype=draws.dtype), dim=0)  # (Q, T, K)
    median = draws.median(0).values
    idx = {c: header.index(c) for c in columns}
    extra = [f"{c}_q{lv:g}" for c in columns for lv in QUANTILES]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(header + extra)
            for r, row in enumerate(rows):
                cells = list(row) + [""] * (len(header) - len(row))
                for k, c in enumerate(columns):
                    if cells[idx[c]].strip() in ("", "nan", "NaN"):
                        cells[idx[c]] = repr(float(median[r, k]))
                out.writerow(cells + [repr(float(q[j, r, k])) for k in range(len(columns)) for j in range(len(QUANTILES))])

    return atomic_write(path, write)


def impute_command(run_dir: str, input_path: str, out: str | None, *, samples: int = 100, solver: str = SOLVER,
                   nfe: int = 100, seed: int = 0) -> str:
    """The body of `diffusekit impute`: checks the run, table and output, imputes, writes; returns the line to print."""
    from .solvers import make_solver

    den, spec = load_imputer(run_dir)
    make_solver(solver)
    header, rows = read_table(input_path)
    table = table_values(header, rows, spec.columns, input_path)
    target = Path(out) if out is not None else Path(input_path).with_name(Path(input_path).stem + "-imputed.csv")
    if target.suffix.lower() != ".csv" or target.is_dir():
        raise ValueError(f"--out {target}: allowed a file name ending in .csv")
    draws = impute_table(den, spec, table, samples, solver=solver, nfe=nfe, seed=seed)
    write_imputed(target, header, rows, spec.columns, draws)
    return f"{int(table.isnan().sum())} cells imputed with {samples} draws each ({solver}, {nfe} NFE) -> {target}"
