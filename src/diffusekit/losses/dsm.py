"""Denoising score matching in one form (Vincent 2011; Ho et al. 2020; Song et al. 2021; Karras et al. 2022).

Per sample, with t ~ p(t), eps ~ N(0, I), x_t = alpha(t) x0 + sigma(t) eps and the
network called once on the preconditioned input,

    loss = w(t) * J(t) * ||F_theta(c_in x_t, c_noise) - F*||^2 / D,
    F*   = Parameterization.target(x0, eps),

where J = c_out^2 or e_out^2 is the exact Jacobian factor that turns the error in F's
space into the error in the weighting's canonical space (x0 or eps; see ``weighting.py``).
The time distribution p(t) and the weighting w are separate choices; with
``importance=True`` the loss is divided by p(t), so its expectation is the integral
int w(t) E||.||^2 dt over [t_min, t_max] whatever p is (an importance-sampled estimate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..denoiser import Cond, Denoiser
from ..parameterization import Coefficients
from ..schedules.base import NoiseSchedule
from ..utils import append_dims
from .time_sampling import TimeSampler, make_time_sampler
from .weighting import Weighting, make_weighting


class LossOutput(NamedTuple):
    """The batch loss (0-d), the per-sample losses (B,) and the times they were drawn at (B,)."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor


@runtime_checkable
class StatefulLoss(Protocol):
    """A training loss that owns state the trainer must keep (DESIGN: "trainer state owned by the loss").

    Examples: an importance-sampling table of past losses (Nichol & Dhariwal 2021, sec. 3.3),
    an EMA target network (consistency training, Song et al. 2023), a frozen teacher's stage.
    The trainer calls ``after_step(net, step)`` after each optimiser step (and EMA update),
    stores ``state_dict()`` in every checkpoint and hands it back to ``load_state_dict`` on resume.
    Plain losses (``DSMLoss``) need none of this.
    """

    def after_step(self, net: Any, step: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def loss_scale(
    weighting: Weighting, coeffs: Coefficients, t: Tensor, schedule: NoiseSchedule, ndim: int, dtype: torch.dtype
) -> Tensor:
    """w(t) times the Jacobian factor |c_out|^2 (x0 space) or |e_out|^2 (eps space), broadcast to ``ndim``."""
    w = append_dims(weighting.weight(t, schedule).to(device=coeffs.c_out.device, dtype=dtype), ndim)
    jac = coeffs.c_out if weighting.space == "x0" else coeffs.e_out
    return w * jac.to(dtype) ** 2


def weighted_error(
    f: Tensor, target: Tensor, coeffs: Coefficients, t: Tensor, schedule: NoiseSchedule, weighting: str | Weighting
) -> Tensor:
    """Per-sample w(t) J(t) ||f - target||^2 / D for a given network output ``f`` (B, ...)."""
    weighting = make_weighting(weighting)
    scale = loss_scale(weighting, coeffs, t, schedule, f.ndim, f.dtype)
    return (scale * (f - target) ** 2).flatten(1).mean(1)


def dsm_loss(
    denoiser: Denoiser,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    weighting: str | Weighting = "eps",
    cond: Cond = None,
) -> Tensor:
    """Per-sample DSM losses (B,) for given times ``t`` (B,) and noise ``noise`` (like ``x0``).

    The network is evaluated once, on ``c_in * x_t`` and ``c_noise`` from ``denoiser.precondition``.
    Its output is cast to ``x0``'s dtype, so bf16 autocast only affects the network.
    """
    schedule = denoiser.schedule
    t = t.to(x0.device)
    x_t = schedule.add_noise(x0, t, noise)
    coeffs, c_noise, _, _ = denoiser.precondition(x_t, t)
    f = denoiser.outputs(coeffs.c_in * x_t, c_noise, cond)[0].to(x0.dtype)
    target = denoiser.parameterization.target(x0, noise, coeffs, x_t)
    return weighted_error(f, target, coeffs, t, schedule, weighting)


def batch_rows(b: int, offset: int, global_batch: int | None) -> tuple[int, slice]:
    """The global batch size and the slice of its rows that a batch of ``b`` rows at ``offset`` is
    (one data-parallel shard or micro-batch; the whole batch when ``global_batch`` is None)."""
    n = b if global_batch is None else global_batch
    if not 0 <= offset <= n - b:
        raise ValueError(f"rows {offset} to {offset + b} do not lie in a global batch of {n} rows; "
                         f"allowed: 0 <= offset <= {n - b}")
    return n, slice(offset, offset + b)


def batch_normal(like: Tensor, n: int, rows: slice, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> Tensor:
    """eps ~ N(0, I) drawn for a global batch of ``n`` rows shaped like ``like``'s (on ``device``, default
    ``like``'s), cut to ``rows`` (see :func:`batch_rows`) and put on ``like``'s device and dtype."""
    eps = torch.randn((n, *like.shape[1:]), generator=generator, device=device or like.device, dtype=like.dtype)
    return eps[rows].to(like.device)


def check_label_dropout(p: float) -> None:
    """A condition-dropout probability in [0, 1)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1), got {p}")


def drop_labels(cond: Cond, p: float, null_label: int | None, generator: torch.Generator | None = None,
                rows: slice = slice(None), total: int | None = None) -> Cond:
    """The condition dropped with probability p per row (Ho & Salimans 2022, Algorithm 1): integer
    labels become ``null_label``, floating condition vectors all-NaN rows (the networks' null token).

    ``rows`` of a global batch of ``total`` rows (data-parallel ranks draw the whole batch's coins).
    """
    if p > 0 and isinstance(cond, Tensor):
        n = cond.shape[0] if total is None else total
        drop = torch.rand(n, generator=generator, device=cond.device)[rows] < p
        if cond.is_floating_point():
            return torch.where(append_dims(drop, cond.ndim), torch.full_like(cond, math.nan), cond)
        if null_label is None:
            raise ValueError("label_dropout > 0 on class labels needs null_label (the network's 'no class' label)")
        return torch.where(drop, torch.full_like(cond, null_label), cond)
    return cond


@dataclass(frozen=True)
class DSMLoss:
    """Denoising score matching with a time distribution and a weighting chosen independently.

    ``time``: uniform, stratified, antithetic, lognormal, discrete or a ``TimeSampler``;
    ``weighting``: eps, snr, min_snr, v, velocity, edm, likelihood or a ``Weighting``.
    ``importance`` divides by p(t) (the loss then estimates int w(t) E||err||^2 dt).
    ``label_dropout`` replaces integer labels by ``null_label`` with that probability, and
    floating condition vectors (B, ...) by all-NaN rows (the networks' null token), for
    classifier-free guidance (Ho & Salimans 2022).
    Random draws, in order: t (B variates), eps (like x0), then the label-dropout mask,
    all from ``generator``. ``x0`` may be rows ``offset`` to ``offset + B`` of a global batch of
    ``global_batch`` rows (one shard of a data-parallel step, one micro-batch): the draws are then
    made for the global batch and these rows taken, so the shards of a step see exactly the
    noise of the whole batch in one process.
    """

    weighting: str | Weighting = "eps"
    time: str | TimeSampler = "uniform"
    importance: bool = False
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weighting", make_weighting(self.weighting))
        object.__setattr__(self, "time", make_time_sampler(self.time))
        check_label_dropout(self.label_dropout)

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, cond: Cond = None, generator: torch.Generator | None = None,
        offset: int = 0, global_batch: int | None = None,
    ) -> LossOutput:
        schedule = denoiser.schedule
        n, rows = batch_rows(x0.shape[0], offset, global_batch)
        time_dtype = torch.float32 if x0.device.type == "mps" else torch.float64
        t = self.time(n, schedule, generator, x0.device, time_dtype)[rows]  # type: ignore[operator]
        noise = batch_normal(x0, n, rows, generator)
        cond = drop_labels(cond, self.label_dropout, self.null_label, generator, rows, n)
        per_sample = dsm_loss(denoiser, x0, t, noise, self.weighting, cond)
        if self.importance:
            per_sample = per_sample / self.time.density(t, schedule).to(per_sample)  # type: ignore[union-attr]
        return LossOutput(per_sample.mean(), per_sample, t)
