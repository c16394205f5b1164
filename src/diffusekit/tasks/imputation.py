"""Time-series imputation and forecasting with a conditional diffusion model, CSDI-style
(Tashiro et al. 2021, sec. 4).

Windows x0 (B, K, L) of K series over L steps. Training (``ImputationLoss``): per window a random
observed mask m is drawn -- random entries hidden at a uniformly drawn rate (CSDI's random
strategy, sec. 4.3) or, with probability ``p_forecast``, the last 1 .. L/3 steps hidden (the
forecast mask) -- the network gets (x_t, m, x0 m) (``models.series.SeriesNet``) and the DSM
loss is averaged over the hidden entries only (CSDI eq. 6). Sampling (``impute``): the same
conditioning, any solver, and ``KeepObserved`` on the loop, so the observed entries of every
sample equal the given values exactly; a forecast is the imputation of hidden future steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser, DenoiserLike
from ..losses.dsm import LossOutput, batch_normal, batch_rows, loss_scale
from ..losses.time_sampling import TimeSampler, make_time_sampler
from ..losses.weighting import Weighting, make_weighting
from ..parameterization import Prediction
from ..sample import grid_rule, sample, steps_for_nfe
from ..schedules import make_grid
from ..solvers import make_solver
from ..stepping import Step, StepContext


def training_masks(shape: tuple[int, ...], p_forecast: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """Observed masks (B, K, L) float (1 = observed), each with at least one hidden entry and one observed one."""
    b, k, length = shape
    rate = torch.rand(b, 1, 1, generator=generator, device=device)
    u = torch.rand(b, k, length, generator=generator, device=device)
    point = u >= rate
    horizon = (torch.rand(b, 1, 1, generator=generator, device=device) * (length // 3)).long() + 1
    future = torch.arange(length, device=device).expand(b, k, length) < length - horizon
    forecast = torch.rand(b, 1, 1, generator=generator, device=device) < p_forecast
    m = torch.where(forecast, future, point)
    flat = m.flatten(1)
    first, last = u.flatten(1).argmin(1), u.flatten(1).argmax(1)  # force one hidden and one observed entry
    rows = torch.arange(b, device=device)
    flat[rows, first] = False
    flat[rows, torch.where(first == last, (last + 1) % flat.shape[1], last)] = True
    return flat.reshape(b, k, length).float()


def condition(mask: Tensor, values: Tensor) -> Tensor:
    """The network's condition (B, 2K, L): the observed mask, then the observed values (0 elsewhere)."""
    return torch.cat([mask, values * mask], 1)


class ImputationLoss:
    """DSM on the hidden entries of windows under random observed masks (see the module docstring).

    ``weighting``/``time`` as in ``DSMLoss``. Random draws, in order: t, eps, the masks; made for the global
    batch of ``global_batch`` rows when ``x0`` is its rows ``offset`` to ``offset + B``, as ``DSMLoss``'s.
    """

    def __init__(self, weighting: str | Weighting = "eps", time: str | TimeSampler = "uniform",
                 p_forecast: float = 0.5) -> None:
        if not 0 <= p_forecast <= 1:
            raise ValueError(f"p_forecast must be in [0, 1], got {p_forecast!r}")
        self.weighting, self.time, self.p_forecast = make_weighting(weighting), make_time_sampler(time), p_forecast

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: object = None, generator: torch.Generator | None = None,
                 offset: int = 0, global_batch: int | None = None) -> LossOutput:
        if x0.ndim != 3:
            raise ValueError(f"imputation trains on windows (B, K, L), got shape {tuple(x0.shape)}")
        schedule = denoiser.schedule
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        t = self.time(n, schedule, generator, x0.device, torch.float64)[rows]  # type: ignore[operator]
        noise = batch_normal(x0, n, rows, generator)
        mask = training_masks((n, *x0.shape[1:]), self.p_forecast, generator, x0.device)[rows].to(x0.dtype)
        x_t = schedule.add_noise(x0, t.to(x0.device), noise)
        coeffs, c_noise, _, _ = denoiser.precondition(x_t, t)
        f = denoiser.network(coeffs.c_in * x_t, c_noise, condition(mask, x0)).to(x0.dtype)
        target = denoiser.parameterization.target(x0, noise, coeffs, x_t)
        err = loss_scale(self.weighting, coeffs, t, schedule, f.ndim, f.dtype) * (f - target) ** 2
        hidden = 1 - mask
        per_sample = (err * hidden).flatten(1).sum(1) / hidden.flatten(1).sum(1)
        return LossOutput(per_sample.mean(), per_sample, t)


class KeepObserved:
    """Constraint: the data prediction equals ``values`` where ``mask`` is 1.

    Per-sample masks (B, K, L) -- the elementwise form of DDNM's range-null correction for a mask
    (``tasks.ddnm``): x0 <- m values + (1 - m) x0_hat at every call. The last step of every solver
    returns its data prediction at the clean end, so the observed entries come out exact
    (tests/test_imputation.py checks this for DDPM, DDIM, UniPC, Heun and Euler-Maruyama).
    """

    def __init__(self, mask: Tensor, values: Tensor) -> None:
        if mask.shape != values.shape:
            raise ValueError(f"mask and values must have one shape, got {tuple(mask.shape)} and {tuple(values.shape)}")
        self.mask, self.values = mask.bool(), values

    def _keep(self, x: Tensor) -> Tensor:
        return torch.where(self.mask.to(x.device), self.values.to(device=x.device, dtype=x.dtype), x)

    def on_prediction(self, pred: Prediction, t: float | Tensor) -> Prediction:
        return pred.with_x0(self._keep(pred.x0))

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        return x


#: The sampler ``impute`` uses by default: DPM-Solver++(2M) SDE draws the exact conditional law of a
#: Gaussian window prior at 100 NFE, where DDPM (small variance, uniform t) draws it up to 23% too narrow
#: (tests/test_imputation.py; benchmarks/RESULTS.md, "Time-series imputation on macrodata").
SOLVER = "dpmpp_2m_sde"


def impute(denoiser: DenoiserLike, values: Tensor, mask: Tensor, samples: int = 100, *, solver: str = SOLVER,
           nfe: int = 100, seed: int = 0, progress: bool = False) -> Tensor:
    """``samples`` draws (S, B, K, L) of windows given ``values`` where ``mask`` (B, K, L) is 1 (observed
    entries exact in every draw; ``values`` elsewhere are ignored)."""
    if values.ndim != 3 or mask.shape != values.shape:
        raise ValueError(f"values and mask must be windows (B, K, L) of one shape, got {tuple(values.shape)} "
                         f"and {tuple(mask.shape)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    b = values.shape[0]
    m = mask.float().to(values.dtype).repeat(samples, 1, 1)  # sample-major: row s * B + i
    v = torch.where(mask.bool(), values, torch.zeros_like(values)).repeat(samples, 1, 1)
    s = make_solver(solver)
    g = make_grid(grid_rule(s), denoiser.schedule, steps_for_nfe(s, denoiser.schedule, nfe))
    sol = sample(denoiser, s, shape=tuple(values.shape[1:]), batch=b * samples, grid=g, cond=condition(m, v),
                 constraints=[KeepObserved(m, v)], seed=seed, dtype=values.dtype, device=values.device, progress=progress)
    return sol.x.reshape(samples, b, *values.shape[1:])
