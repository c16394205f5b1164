"""Every tuned constant of the samplers and grids, with where it came from.

A constant here was chosen by measurement, not taken from a paper; each says which script and
which data chose it, so that a default fitted to one setting is visible as such. The grid rules
(``schedules.grids``) and solvers (``solvers.*``) import them from here. The mixtures named
below are ``benchmarks/problems.py``'s oracles (exact model, DDPM linear schedule unless said).
Paper constants (Karras et al.'s rho = 7, the Adams-Bashforth coefficients, ...) stay with
the method they belong to.
"""

from __future__ import annotations

# ---- the default sampler (issue 11) ------------------------------------------------------

DEFAULT_SOLVER: str = "unipc_logsnr"
"""Registered name of the default sampler (``solvers.default.UniPCLogSNR``): UniPC (Zhao et al.
2023) with ``DEFAULT_SOLVER_OPTIONS`` on ``DEFAULT_GRID``, lower-order final steps, and the
Gaussian clean end from the schedule's t_min. Chosen by ``python benchmarks/solvers_vs_anchors.py
--families`` (4,000 trajectories per cell; chosen after seeing every DDPM cell, d16k3 / edm and
iso64 / edm; the other EDM cells and the VE cells are held out): among the configurations there,
the smallest largest RMSE ratio to the best diffusers / k-diffusion sampler (14.8 over 27 cells;
median 1.07: parity with the anchors, not the issue's 0.5) and the fewest within-mode spread
misses but one (the x0 jump of
the same solver collapses modes narrower than the schedule's smallest sigma / alpha to 0.6-0.8).
Every cell: ``benchmarks/RESULTS.md``."""

DEFAULT_SOLVER_OPTIONS: dict[str, object] = {"order": 4, "variant": "bh2"}
"""UniPC options of the default: B(h) = e^h - 1, UniP-3 + UniC (diffusers' ``solver_order=3``).
Same run: order 3 had larger errors at NFE 8-20 on the tuning cells (median ratio over all cells
1.23 vs 1.07); bh1 was 2-16x the best anchor on the first cell."""

DEFAULT_GRID: str = "uniform_lambda"
"""Grid rule of the default sampler: equal steps in log-SNR over the schedule's own range
[lambda(t_max), lambda(t_min)] (Lu et al. 2022's 'logSNR' spacing): no point depends on a
fitted constant or on the data's scale."""

DEFAULT_NFE: int = 20
"""Model calls of the default sampler (same run): the smallest of NFE 5 / 8 / 10 / 15 / 20 at which
its within-mode spread is 1.00-1.03 of the truth on every cell but the 2-d ring (1.05-1.08);
at 15 calls it is up to 1.21 (ring2d / ddpm), at 10 up to 1.55 (iso64_x10 / edm)."""

# ---- grids (schedules/grids.py) ------------------------------------------------------------

TUNED_WARP: tuple[float, ...] = (0.0, 0.1736, 0.355, 0.436, 0.501, 0.6318, 0.7415, 0.836, 1.0)
"""Knots of the ``tuned_lambda`` warp at u = 0, 1/8, ..., 1 (fractions of the log-SNR span of the
schedule): ``python benchmarks/grid_search.py search --solver unipc``, Nelder-Mead on mean log MSE
over NFE 5-20 plus a spread penalty, on sharp mixtures (d, seed) = (64, 101), (64, 102), (32, 103),
256 trajectories each, DDPM linear schedule only. Being fractions of the span, the same knot
lands at a different log-SNR on other schedules (issue 11)."""

TUNED_TABLE: dict[int, tuple[float, ...]] = {
    5: (0.0, 0.3482, 0.4338, 0.5013, 0.6684),
    6: (0.0, 0.362, 0.3915, 0.4692, 0.4938, 0.668),
    7: (0.0, 0.2877, 0.3901, 0.4654, 0.4816, 0.6234, 0.7566),
    8: (0.0, 0.2721, 0.3857, 0.429, 0.5272, 0.6801, 0.7373, 0.8773),
    9: (0.0, 0.1639, 0.2936, 0.3803, 0.45, 0.5567, 0.6864, 0.7706, 0.9454),
    10: (0.0, 0.1727, 0.2803, 0.3784, 0.4516, 0.5902, 0.6816, 0.8032, 0.8902, 0.9987),
    11: (0.0, 0.147, 0.3253, 0.3923, 0.4475, 0.5114, 0.6106, 0.6733, 0.8094, 0.8984, 0.9992),
    12: (0.0, 0.3359, 0.3853, 0.4302, 0.4842, 0.5066, 0.5547, 0.6156, 0.6548, 0.7498, 0.8976, 0.9989),
    13: (0.0, 0.2831, 0.3755, 0.42, 0.4649, 0.4919, 0.5269, 0.5804, 0.6391, 0.6917, 0.8067, 0.8989, 0.9986),  # rows 12, 14 averaged
    14: (0.0, 0.2484, 0.3668, 0.4092, 0.4561, 0.4786, 0.4978, 0.5484, 0.6038, 0.6723, 0.7156, 0.8636, 0.8943, 0.9983),
    15: (0.0, 0.2183, 0.3524, 0.4164, 0.4439, 0.4864, 0.5093, 0.5637, 0.6244, 0.6782, 0.7415, 0.7879, 0.8505, 0.9117, 0.9674),
    16: (0.0, 0.2513, 0.3594, 0.4155, 0.4559, 0.4841, 0.5072, 0.5532, 0.6067, 0.6538, 0.7021, 0.7733, 0.8094, 0.8629, 0.9144, 0.9988),
}
"""Per-step-count log-SNR fractions of ``tuned_lambda`` (first 0; a last one < 1 stops above t_end):
``python benchmarks/grid_search.py search --solver unipc --nfe N``, one count at a time, same
mixtures and objective as ``TUNED_WARP`` (row 13: rows 12 and 14 resampled and averaged)."""

GAUSSIAN_POWER: float = 0.35
"""Exponent of the ``gaussian_lambda`` power law, chosen with ``gaussian_pc`` on ``grid_search.py``'s
``GAUSSIAN_TRAIN`` mixtures (d, seed) = (64, 101), (64, 102), (64, 104), (32, 103), DDPM linear."""

GAUSSIAN_TABLE: dict[int, tuple[float, ...]] = {
    5: (-1.717, -0.856, -0.027, 0.818),
    6: (-1.933, -0.975, -0.453, 0.151, 0.957),
    7: (-1.873, -0.994, -0.439, 0.026, 0.386, 1.132),
    8: (-1.981, -1.114, -0.626, -0.273, 0.395, 0.896, 1.204),
}
"""Absolute log-SNRs of ``gaussian_lambda``'s points 1..n-1 for few steps: ``python
benchmarks/grid_search.py gaussian --nfe N`` (Nelder-Mead on MSE to the exact ODE solution,
``GAUSSIAN_TRAIN`` x 2,048 trajectories, data in about [-1, 1]). Absolute: they assume that
data scale (issue 11)."""

GAUSSIAN_LAM_END: tuple[float, float, int] = (0.75, 0.1, 6)
"""(base, per-step increase, steps before it increases) of ``gaussian_lam_end``: last log-SNR
0.75 up to 6 steps, then 0.1 higher per step. Chosen between the sharp oracle mixtures (best
0.75-1.0 at 5-15 steps, ``grid_search.py gaussian``) and the trained digits model (classifier FD
best at 1.5-2.0 for 8-15 steps, ``benchmarks/solvers_on_digits.py``). An absolute log-SNR: it
assumes data scaled to about [-1, 1] (issue 11)."""

# ---- solvers ---------------------------------------------------------------------------------

NOISE_FORM_MAX_H: float = 3.0
"""Noise-form (eps) steps longer than this in log-SNR are first order (DDIM): the noise form
multiplies its eps-polynomial error by sigma1 (e^h - 1). Set from the oracle benchmark
(``benchmarks/solvers_vs_anchors.py``, DDPM linear): a 2-stage step from lambda = -10 to 0.5
otherwise reaches |x| ~ 1e7."""

SHORT_GRID_STEPS: int = 15
"""Grids with fewer steps than this use ``lower_order_final`` (multistep orders capped by the
remaining steps, the x0 jump at the clean end): DPM-Solver++'s threshold (Lu et al. 2022b,
reference code), kept after the oracle benchmark."""

FINAL_STEPS_MAX_ORDER: tuple[int, int] = (4, 2)
"""(remaining steps, order): on short grids the last ``4`` steps before the clean end are at most
order ``2``. Measured on the oracle benchmark (``benchmarks/solvers_vs_anchors.py``, 64-d sharp
mixture, DDPM linear): the within-mode spread at 8-10 steps went from 1.2-1.8x to 0.93-0.98x."""

HEUN_MAX_RATIO: float = 10.0
"""Heun steps with s0 / s1 above this are Euler steps (one call): without the guard few-step runs
overshoot (NFE 5 on Karras grids, oracle benchmark); EDM's own grids have s0 / s1 <= 10 from 11
steps on, where Heun is Karras et al.'s Alg. 1 exactly."""

GAUSSIAN_PC_ORDER: int = 4
"""Default order of ``gaussian_pc`` (predictor on 3 outputs + corrector): ``python
benchmarks/grid_search.py ablation`` on ``GAUSSIAN_TRAIN`` (8,192 trajectories)."""

GAUSSIAN_PC_SIGMA_DATA: float = 1.0
"""Default interpolation scale of ``gaussian_pc`` (c_in = 1 / sqrt(rho^2 + sigma_data^2)): same
ablation, where 0.5-2 were within noise of each other; a data scale, so an explicit option."""
