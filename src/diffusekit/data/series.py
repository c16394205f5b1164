"""Multivariate time series as (T, K) float64 arrays with column names, and their windows.

``load_macrodata``: statsmodels' US macroeconomic data (1959Q1-2009Q3, 203 quarters), with the
eight level series (real GDP, consumption, investment, government spending, disposable income,
CPI, M1, population) as quarterly growth in percent, 100 (log x_t - log x_{t-1}), and the four
rates (T-bill rate, unemployment, inflation, real interest rate) as they are: 202 x 12.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

GROWTH_COLUMNS: tuple[str, ...] = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop")
RATE_COLUMNS: tuple[str, ...] = ("tbilrate", "unemp", "infl", "realint")


def load_macrodata() -> tuple[np.ndarray, list[str]]:
    """US macro data as (202, 12) float64 and the column names (``<name>_growth`` for growth rates)."""
    try:
        from statsmodels.datasets import macrodata
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the macrodata set ships with statsmodels (pip install statsmodels)") from None
    frame = macrodata.load_pandas().data
    growth = 100 * np.diff(np.log(frame[list(GROWTH_COLUMNS)].to_numpy(dtype=np.float64)), axis=0)
    rates = frame[list(RATE_COLUMNS)].to_numpy(dtype=np.float64)[1:]
    return np.concatenate([growth, rates], 1), [f"{c}_growth" for c in GROWTH_COLUMNS] + list(RATE_COLUMNS)


def windows(series: Tensor, length: int, stride: int = 1) -> Tensor:
    """Windows (N, K, length) of a series (T, K), starting every ``stride`` steps."""
    if series.ndim != 2 or not 1 <= length <= series.shape[0]:
        raise ValueError(f"need a series (T, K) with T >= window length {length}, got shape {tuple(series.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    return series.unfold(0, length, stride).contiguous()  # (N, K, length)


__all__ = ["GROWTH_COLUMNS", "RATE_COLUMNS", "load_macrodata", "windows"]
