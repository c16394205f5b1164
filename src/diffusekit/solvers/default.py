"""The default sampler: UniPC on equal log-SNR steps over the schedule's own range, Gaussian clean end.

Issue 11 asked for a deterministic default that holds on every mixture family and schedule.
No diffusekit design tried (``gaussian_pc`` and its ``gaussian_lambda`` grid, c_in-interpolated
Adams steps on other grids, a step exact for Gaussians of every variance, log-SNR grids dense
around a data scale) did so in ``benchmarks/solvers_vs_anchors.py --families``; this is the
best standard method on a grid with no fitted constant, as issue 11 allows:

- UniPC (Zhao et al. 2023), B(h) = e^h - 1, UniP-3 + UniC (``order=4``), lower-order final steps;
- ``uniform_lambda``: equal steps in log-SNR from t_max to the schedule's t_min (Lu et al.
  2022's 'logSNR' spacing), so no point depends on the data's scale or on a fitted table;
- the step from t_min to the clean end is ``dpm_solver.gaussian_end`` (exact for a locally
  isotropic Gaussian mode; from t_min the modes of data resolved by the schedule are decided),
  which keeps the within-mode spread where the x0 jump collapses modes narrower than the
  schedule's smallest sigma / alpha.

It is at parity with the best diffusers / k-diffusion sampler (RMSE ratio median 1.07, 0.46-14.8
over 27 family x schedule cells x NFE 5-20), not at the issue's 0.5; every cell is in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from typing import Any

from ..tuned import DEFAULT_GRID, DEFAULT_SOLVER_OPTIONS
from .base import register
from .gaussian_end import GaussianEnd
from .unipc import UniPC


@register
class UniPCLogSNR(GaussianEnd):
    """``UniPC(**options)`` (default ``DEFAULT_SOLVER_OPTIONS``) with the Gaussian clean end, on
    ``DEFAULT_GRID`` by default (see the module docstring)."""

    name = "unipc_logsnr"

    def __init__(self, **options: Any) -> None:
        super().__init__(UniPC(**{**DEFAULT_SOLVER_OPTIONS, **options}))
        self.name = type(self).name
        self.default_grid = DEFAULT_GRID

    def __repr__(self) -> str:
        return f"UniPCLogSNR({self.inner!r})"
