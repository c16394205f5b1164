"""Step-grid study for the deterministic solvers (issue 4, "Grids and accuracy").

    python benchmarks/grid_search.py search --solver unipc            # fit the shared tuned_lambda warp
    python benchmarks/grid_search.py search --solver unipc --nfe 5    # fit one step count's table row
    python benchmarks/grid_search.py compare --solver unipc           # warp vs table row, per NFE
    python benchmarks/grid_search.py survey                           # solvers x grids x NFE, benchmark oracle
    python benchmarks/grid_search.py gaussian --nfe 5                 # fit gaussian_lambda's row for 5 steps
    python benchmarks/grid_search.py ablation                         # what each part of gaussian_pc gains

``search`` fits ``diffusekit.schedules.grids.tuned_lambda`` by Nelder-Mead on mixtures that
are NOT the benchmark's (``TRAIN``: other seeds and dimensions of the same sharp-mode
family, 256 trajectories each): either the knots of its piecewise-linear warp of the
log-SNR span, jointly over NFE 5, 8, 10, 15, 20, or (``--nfe``) the log-SNR fraction of
every point for one step count (``TUNED_TABLE``; started from the best of the family
f_i = end * (i / (n - 1))^power, so the grid may stop above t_min before the clean end).
The objective is the mean over (mixture, NFE) of log MSE to the exact ODE solution, plus a
penalty when the within-component spread leaves [0.97, 1.03] at NFE >= 10. ``compare``
decides, per NFE, whether the table row beats the warp on the training objective.
``gaussian`` fits one row of ``GAUSSIAN_TABLE`` (the log-SNRs of the ``gaussian_lambda`` grid
for ``gaussian_pc``) by Nelder-Mead on the mean squared error to the exact ODE solution over
``GAUSSIAN_TRAIN`` (four mixtures x 2,048 trajectories, float64; mode switches dominate
it at few steps, so it needs many trajectories), started from the power-law default.
``ablation`` measures the parts of ``gaussian_pc`` one at a time on the same trajectories.
``survey`` reports on the held-out benchmark oracle (``problems.sharp_mixture()``). Exact
ODE references are cached under ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from problems import Quality, quality, sharp_mixture, start_points
from scipy.optimize import minimize

import diffusekit as dk
from diffusekit.schedules.grids import gaussian_lam_end
from diffusekit.tuned import TUNED_TABLE, TUNED_WARP
from diffusekit.oracle import GaussianMixture

CACHE = Path(__file__).parent / ".cache"  # exact ODE references (gitignored)
NFES = (5, 8, 10, 15, 20)
TRAIN = ((64, 101), (64, 102), (32, 103))  # (dim, seed): never the benchmark's (64, 0)
GAUSSIAN_TRAIN = ((64, 101), (64, 102), (64, 104), (32, 103))


def problem(dim: int, seed: int, n: int) -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    """A sharp mixture, n start points and their exact ODE solutions (cached on disk)."""
    oracle = sharp_mixture(dim=dim, seed=seed)
    x_T = start_points(oracle, n, seed=seed + 1)
    path = CACHE / f"ref_d{dim}_s{seed}_n{n}.pt"
    if path.exists():
        return oracle, x_T, torch.load(path)
    ref = oracle.ode_solution(x_T, oracle.schedule.t_max, rtol=1e-9, atol=1e-9)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    return oracle, x_T, ref


def run(oracle: GaussianMixture, solver: dk.Solver, x_T: torch.Tensor, grid: dk.Grid, dtype: torch.dtype) -> torch.Tensor:
    return dk.sample(oracle, solver, x_T.to(dtype), grid=grid, progress=False).x


def steps_for(solver: dk.Solver, nfe: int) -> int:
    """Grid steps giving at most ``nfe`` model calls (Heun: 2N - 1)."""
    return nfe if solver.nfe_per_step == 1 else (nfe + 1) // 2


def warp_of(theta: np.ndarray) -> list[float]:
    """Unconstrained parameters -> increasing knots from 0 to 1 (softmax increments)."""
    inc = np.exp(theta - theta.max())
    return [0.0, *np.cumsum(inc / inc.sum()).tolist()[:-1], 1.0]


def fractions_of(theta: np.ndarray) -> list[float]:
    """Unconstrained parameters -> per-point fractions 0 = f_0 < ... < f_{n-1} <= 1 (the last
    softmax increment is the part of the span left out, so the grid may stop above t_end)."""
    inc = np.exp(theta - theta.max())
    return [0.0, *np.cumsum(inc / inc.sum()).tolist()[:-1]]


Problem = tuple[GaussianMixture, torch.Tensor, torch.Tensor]


def training_objective(solver: dk.Solver, probs: list[Problem], nfes: tuple[int, ...], grid_opts: dict, dtype: torch.dtype) -> float:
    """Mean over (mixture, NFE) of log MSE, plus a penalty for spread outside [0.97, 1.03] at NFE >= 10."""
    total = 0.0
    for oracle, x_T, ref in probs:
        for k in nfes:
            grid = dk.make_grid("tuned_lambda", oracle.schedule, steps_for(solver, k), **grid_opts)
            q = quality(oracle, run(oracle, solver, x_T, grid, dtype), ref)
            total += math.log(q.rmse**2 + 1e-12)
            if k >= 10:
                total += 100.0 * max(0.0, abs(q.spread - 1.0) - 0.03) ** 2
    return total / (len(probs) * len(nfes))


def search(solver_name: str, n: int, iters: int, dtype: torch.dtype, nfe: int | None) -> dict:
    """Nelder-Mead on the training mixtures: the shared warp (``nfe`` None) or one NFE's fractions."""
    solver = dk.make_solver(solver_name)
    probs = [problem(d, s, n) for d, s in TRAIN]
    nfes = NFES if nfe is None else (nfe,)
    grid_opts = (lambda th: {"warp": warp_of(th)}) if nfe is None else (lambda th: {"fractions": fractions_of(th)})

    def objective(theta: np.ndarray) -> float:
        return training_objective(solver, probs, nfes, grid_opts(theta), dtype)

    start = time.time()
    if nfe is None:
        theta0 = np.log(np.diff(TUNED_WARP))
    else:  # the best of the family f_i = end * (i / (n - 1))^power, then refine every point
        u = np.linspace(0.0, 1.0, steps_for(solver, nfe))
        family = [(e, p) for e in (0.45, 0.55, 0.65, 0.75, 0.85, 1.0) for p in (0.7, 0.85, 1.0, 1.2, 1.4)]
        scores = []
        for e, p in family:
            f = e * u**p
            theta = np.log(np.append(np.diff(f), max(1.0 - e, 1e-3)))
            scores.append((objective(theta), theta))
        theta0 = min(scores, key=lambda s: s[0])[1]
    simplex = np.vstack([theta0, theta0 + 0.5 * np.eye(len(theta0))])  # steps of ~60% in each increment
    res = minimize(
        objective, theta0, method="Nelder-Mead",
        options={"maxfev": iters, "xatol": 1e-3, "fatol": 1e-4, "initial_simplex": simplex},
    )
    best = grid_opts(res.x)
    return {
        "solver": solver_name,
        "nfe": nfe,
        "start_objective": objective(theta0),
        "objective": float(res.fun),
        "evaluations": int(res.nfev),
        "seconds": time.time() - start,
        **{k: [round(w, 4) for w in v] for k, v in best.items()},
    }


def fit_gaussian_row(nfe: int, n: int, iters: int) -> dict:
    """Log-SNRs of grid points 1..nfe-1 for ``gaussian_pc`` (point 0 is t_max), minimising the MSE."""
    solver = dk.make_solver("gaussian_pc")
    probs = [problem(d, s, n) for d, s in GAUSSIAN_TRAIN]
    schedule = probs[0][0].schedule
    lam0 = float(schedule.log_snr(torch.tensor(schedule.t_max, dtype=torch.float64)))

    def lams_of(theta: np.ndarray) -> list[float]:
        return (lam0 + np.cumsum(np.exp(theta))).tolist()

    def mse(theta: np.ndarray) -> float:
        t = schedule.t_of_log_snr(torch.tensor([lam0, *lams_of(theta)], dtype=torch.float64))
        t[0] = schedule.t_max
        grid = dk.Grid.from_times(schedule, t, to_zero=True)
        total = sum(float((run(o, solver, x_T, grid, torch.float64) - ref).pow(2).mean(1).sum()) for o, x_T, ref in probs)
        return total / sum(len(x_T) for _, x_T, _ in probs)

    start_grid = dk.make_grid("gaussian_lambda", schedule, nfe, lam_end=gaussian_lam_end(nfe))
    theta0 = np.log(np.diff(start_grid.lam[:-1].numpy()))
    start = time.time()
    res = minimize(lambda th: math.log(mse(th)), theta0, method="Nelder-Mead",
                   options={"maxfev": iters, "initial_simplex": np.vstack([theta0, theta0 + 0.3 * np.eye(len(theta0))])})
    return {"nfe": nfe, "rmse_start": math.sqrt(mse(theta0)), "rmse": math.sqrt(math.exp(res.fun)),
            "evaluations": int(res.nfev), "seconds": time.time() - start, "lams": [round(v, 3) for v in lams_of(res.x)]}


ABLATION: tuple[tuple[str, dict, dict], ...] = (  # (label, make_solver options, make_grid options)
    ("unipc, own grid and x0 jump", {"name": "unipc"}, {}),
    ("unipc end=gaussian (lambda polynomials), gaussian_lambda power law", {"name": "unipc", "end": "gaussian"},
     {"power": 0.35}),
    ("gaussian_pc (c_in polynomials), power law", {"name": "gaussian_pc"}, {"power": 0.35}),
    ("gaussian_pc, fitted rows (default)", {"name": "gaussian_pc"}, {}),
    ("gaussian_pc without corrector (order 3)", {"name": "gaussian_pc", "order": 3, "corrector": False}, {}),
    ("gaussian_pc sigma_data 0.5", {"name": "gaussian_pc", "sigma_data": 0.5}, {}),
    ("gaussian_pc sigma_data 2", {"name": "gaussian_pc", "sigma_data": 2.0}, {}),
)


def ablation(nfes: tuple[int, ...]) -> list[dict]:
    """Mode switches, RMSE over the rest, spread and RMSE on ``GAUSSIAN_TRAIN`` (8,192 trajectories)."""
    probs = [problem(d, s, 2048) for d, s in GAUSSIAN_TRAIN]
    rows = []
    for label, solver_opts, grid_opts in ABLATION:
        opts = dict(solver_opts)
        solver = dk.make_solver(opts.pop("name"), **opts)
        for nfe in nfes:
            wrong, err_right, err_all, spreads, n = 0, 0.0, 0.0, [], 0
            for oracle, x_T, ref in probs:
                grid = dk.make_grid(solver.default_grid, oracle.schedule, steps_for(solver, nfe), **grid_opts)
                q = quality(oracle, run(oracle, solver, x_T, grid, torch.float64), ref)
                k = len(x_T)
                wrong += round(q.wrong_component * k)
                err_right += q.rmse_right**2 * (k - round(q.wrong_component * k))
                err_all += q.rmse**2 * k
                spreads.append(q.spread)
                n += k
            row = {"config": label, "nfe": nfe, "wrong": wrong, "trajectories": n, "rmse_right": math.sqrt(err_right / (n - wrong)),
                   "rmse": math.sqrt(err_all / n), "spread": sum(spreads) / len(spreads)}
            rows.append(row)
            print(f"{label:70s} {nfe:3d} wrong {wrong:4d}/{n} rmse_right {row['rmse_right']:.4f} "
                  f"rmse {row['rmse']:.4f} spread {row['spread']:.3f}", flush=True)
    return rows


SURVEY_SOLVERS: dict[str, dict] = {
    "dpm_solver(2M)": {"name": "dpm_solver", "order": 2},
    "dpm_solver(3M)": {"name": "dpm_solver", "order": 3},
    "dpm_solver(3S)": {"name": "dpm_solver", "order": 3, "method": "singlestep"},
    "unipc(bh1,3)": {"name": "unipc", "order": 3, "variant": "bh1"},
    "unipc(bh2,3)": {"name": "unipc", "order": 3},
    "unipc(bh2,4)": {"name": "unipc", "order": 4},
    "deis(3)": {"name": "deis", "order": 3},
    "ipndm": {"name": "ipndm"},
    "heun": {"name": "heun"},
}
SURVEY_GRIDS = ("uniform_t", "quadratic_t", "uniform_lambda", "karras", "trailing", "tuned_warp", "tuned_lambda")


def survey(n: int, dtype: torch.dtype, grids: tuple[str, ...], solvers: list[str]) -> list[dict]:
    oracle, x_T, ref = problem(64, 0, n)
    rows = []
    for label in solvers:
        opts = dict(SURVEY_SOLVERS[label])
        solver = dk.make_solver(opts.pop("name"), **opts)
        for grid_name in grids:
            for nfe in NFES:
                grid = dk.make_grid(grid_name, oracle.schedule, steps_for(solver, nfe))
                sol = dk.sample(oracle, solver, x_T.to(dtype), grid=grid, progress=False)
                q: Quality = quality(oracle, sol.x, ref)
                rows.append({"solver": label, "grid": grid_name, "nfe": sol.nfe, **q.__dict__})
                print(f"{label:15s} {grid_name:15s} {sol.nfe:3d} rmse={q.rmse:.4f} wrong={q.wrong_component:.3f} "
                      f"rmse_right={q.rmse_right:.4f} spread={q.spread:.3f}", flush=True)
    return rows


def compare(solver_name: str, n: int, dtype: torch.dtype, nfes: tuple[int, ...]) -> list[dict]:
    """Training objective of the shared warp vs this NFE's table row (which one ``tuned_lambda`` should use)."""
    solver = dk.make_solver(solver_name)
    probs = [problem(d, s, n) for d, s in TRAIN]
    rows = []
    for k in nfes:
        row = {"nfe": k, "warp": training_objective(solver, probs, (k,), {"warp": TUNED_WARP}, dtype)}
        if steps_for(solver, k) in TUNED_TABLE:
            row["table"] = training_objective(solver, probs, (k,), {"fractions": TUNED_TABLE[steps_for(solver, k)]}, dtype)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("survey", "search", "compare", "gaussian", "ablation"))
    ap.add_argument("--n", type=int, default=512, help="trajectories per mixture")
    ap.add_argument("--solver", default="unipc")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--nfe", type=int, default=None, help="search: fit this NFE's own fractions (default: the shared warp)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--nfes", default="5,6,7,8,9,10,12,15,20", help="compare: NFEs")
    ap.add_argument("--grids", default=",".join(SURVEY_GRIDS))
    ap.add_argument("--solvers", default=";".join(SURVEY_SOLVERS), help="labels separated by ;")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    if args.mode == "ablation":
        out = ablation((5, 8, 10, 15))
    elif args.mode == "gaussian":
        out = fit_gaussian_row(args.nfe or 5, 2048, args.iters)
        print(json.dumps(out, indent=1))
    elif args.mode == "search":
        out = search(args.solver, args.n, args.iters, dtype, args.nfe)
        print(json.dumps(out, indent=1))
    elif args.mode == "compare":
        out = compare(args.solver, args.n, dtype, tuple(int(k) for k in args.nfes.split(",")))
    else:
        out = survey(args.n, dtype, tuple(args.grids.split(",")), args.solvers.split(";"))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
