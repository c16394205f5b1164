"""Improved DDPM's objectives for a network with a variance head (Nichol & Dhariwal 2021, sec. 3.1-3.3).

On a discrete schedule of N steps, with t = n / N and the bound's terms (``likelihood/vlb.py``)

    L_t = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))     (n >= 2),
    L_1 = -log p_theta(x0 | x_1)   (the decoder: discretised Gaussian on the data's lattice,
                                    or a Gaussian density for continuous data),

p_theta having the posterior mean with the model's x0 and the learned variance
Sigma = exp(v log beta_t + (1 - v) log beta_tilde_t) (eq. 15; ``learned_variance.py``):

- ``simple``: L_simple, the eps error (eq. 14 of Ho et al. 2020; any ``Weighting``);
- ``vlb``:    L_vlb = N L_t per sample in bits/dim, an unbiased estimate of the bound's
              sum over t (without the constant prior term); trains mean and variance;
- ``hybrid``: L_simple + lambda L_vlb (eq. 16, lambda = 0.001) with a stop-gradient on the
              mean in L_vlb, so L_simple alone drives the mean and L_vlb the variance.

``time``: t uniform over the N steps, or ``importance`` (``ImportanceTimeSampler``, eq. 17):
the per-sample loss is then divided by N p_t, so its mean still estimates the same objective,
and its values at each t feed the sampler's history (the loss is a ``StatefulLoss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Cond, Denoiser
from ..learned_variance import interpolated_variance, var_interp
from ..likelihood.analytic import schedule_times
from ..likelihood.vlb import Transitions, decoder_nll, posterior_kl, transitions
from ..parameterization import Prediction
from ..schedules.base import NoiseSchedule
from ..utils import append_dims
from .dsm import LossOutput, batch_normal, batch_rows, check_label_dropout, drop_labels, weighted_error
from .importance import ImportanceTimeSampler
from .time_sampling import make_time_sampler, num_steps, step_index
from .weighting import Weighting, make_weighting

LOSS_KINDS: tuple[str, ...] = ("simple", "hybrid", "vlb")
TIME_KINDS: tuple[str, ...] = ("uniform", "importance")


def step_transitions(schedule: NoiseSchedule) -> Transitions:
    """The ``Transitions`` of every knot 1/N, ..., 1 of a discrete schedule (a clear error otherwise)."""
    num_steps(schedule, "the hybrid and vlb losses need")
    return transitions(schedule, schedule_times(schedule))


def vlb_term(pred: Prediction, x0: Tensor, index: Tensor, table: Transitions, decoder: str = "discretized",
             n_bits: float = 8) -> Tensor:
    """L_t per sample in nats (float64): the KL for rows ``index`` >= 1 of ``table``, the decoder NLL for row 0.

    The reverse variance is eq. 15 between the row's beta tilde (row 0: clipped) and beta, read from
    ``pred.var_interp``; the mean uses ``pred.x0``.
    """
    v = var_interp(pred)
    idx = index.cpu()

    def pick(col: Tensor) -> Tensor:
        return append_dims(col[idx].to(x0.device), x0.ndim)

    small, large = pick(table.small), pick(table.large)
    var_p = interpolated_variance(v.double(), small, large)
    x0d, hat = x0.double(), pred.x0.double()
    kl = posterior_kl(x0d, hat, pick(table.c_x0), small, var_p).flatten(1).sum(1)
    first = (idx == 0).nonzero().squeeze(1).to(x0.device)  # the decoder's rows, about B / N of them
    if first.numel() == 0:
        return kl
    dec = decoder_nll(x0d[first], hat[first], var_p.expand_as(x0d)[first], decoder, n_bits)
    return kl.index_copy(0, first, dec)


@dataclass(frozen=True)
class HybridLoss:
    """L_simple, L_vlb or L_hybrid (Nichol & Dhariwal 2021, eq. 16) on a discrete schedule; see the module doc.

    ``kind``: simple | hybrid | vlb; ``vlb_weight``: lambda; ``weighting``: L_simple's weighting;
    ``time``: uniform | importance | an ``ImportanceTimeSampler``; ``decoder``/``n_bits``: the
    decoder of L_1 ('discretized' on the n-bit lattice, 'gaussian'); label dropout as ``DSMLoss``.
    Random draws, in order: t (B variates), eps (like x0), then the label-dropout mask.
    """

    kind: str = "hybrid"
    vlb_weight: float = 0.001
    weighting: str | Weighting = "eps"
    time: str | ImportanceTimeSampler = "uniform"
    decoder: str = "discretized"
    n_bits: float = 8
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.vlb_weight) and self.vlb_weight >= 0):
            raise ValueError(f"vlb_weight must be a finite number >= 0, got {self.vlb_weight!r}")
        if self.decoder not in ("discretized", "gaussian"):
            raise ValueError(f"decoder must be 'discretized' or 'gaussian', got {self.decoder!r}")
        if isinstance(self.time, str):
            if self.time not in TIME_KINDS:
                raise ValueError(f"time sampling must be one of {', '.join(TIME_KINDS)}, got {self.time!r}")
            if self.time == "importance":
                object.__setattr__(self, "time", ImportanceTimeSampler())
        object.__setattr__(self, "weighting", make_weighting(self.weighting))
        check_label_dropout(self.label_dropout)

    @property
    def importance(self) -> ImportanceTimeSampler | None:
        return self.time if isinstance(self.time, ImportanceTimeSampler) else None

    def per_time(self, denoiser: Denoiser, x0: Tensor, t: Tensor, noise: Tensor, cond: Cond = None,
                 table: Transitions | None = None) -> Tensor:
        """The per-sample loss (B,) at given step times t = n / N and noise (t uniform: the objective's
        integrand); ``table``: the schedule's ``step_transitions`` if already at hand."""
        schedule = denoiser.schedule
        table = step_transitions(schedule) if table is None else table
        x_t = schedule.add_noise(x0, t.to(x0.device), noise)
        coeffs, c_noise, alpha, sigma = denoiser.precondition(x_t, t)
        f, v = denoiser.outputs(coeffs.c_in * x_t, c_noise, cond)
        f = f.to(x0.dtype)
        target = denoiser.parameterization.target(x0, noise, coeffs, x_t)
        simple = weighted_error(f, target, coeffs, t.to(x0.device), schedule, self.weighting)  # type: ignore[arg-type]
        if self.kind == "simple":
            return simple
        if v is None:
            raise ValueError(f"loss {self.kind!r} needs a network with a variance head (model.learn_variance = true)")
        mean = f.detach() if self.kind == "hybrid" else f  # eq. 16: L_vlb does not move the mean
        pred = Prediction(x_t, alpha, sigma, raw=(mean, coeffs), var_interp=v)
        n = table.large.numel()
        index = step_index(t, n)
        vlb = n * vlb_term(pred, x0, index, table, self.decoder, self.n_bits) / (x0[0].numel() * math.log(2))
        vlb = vlb.to(x0.dtype)
        return vlb if self.kind == "vlb" else simple + self.vlb_weight * vlb

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, cond: Cond = None, generator: torch.Generator | None = None,
        offset: int = 0, global_batch: int | None = None,
    ) -> LossOutput:
        """The loss of a batch; ``offset``/``global_batch``: these rows of a larger batch whose draws are
        made whole, as ``DSMLoss`` (data-parallel ranks, gradient accumulation)."""
        schedule = denoiser.schedule
        table = step_transitions(schedule)
        n_rows, rows = batch_rows(x0.shape[0], offset, global_batch)
        sampler = self.importance or make_time_sampler("discrete")
        t = sampler(n_rows, schedule, generator, x0.device, torch.float64)[rows]
        noise = batch_normal(x0, n_rows, rows, generator)
        cond = drop_labels(cond, self.label_dropout, self.null_label, generator, rows, n_rows)
        per_sample = self.per_time(denoiser, x0, t, noise, cond, table)
        if self.importance is not None:
            self.importance.observe(t, per_sample)
            n = table.large.numel()
            per_sample = per_sample / (n * self.importance.density(t, schedule)).to(per_sample)
        return LossOutput(per_sample.mean(), per_sample, t)

    # ---- StatefulLoss: the importance sampler's history --------------------------------------------
    def after_step(self, net: Any, step: int) -> None:
        if self.importance is not None:
            self.importance.after_step()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.importance is None else {"importance": self.importance.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "importance" in state:
            if self.importance is None:
                raise ValueError("this checkpoint holds an importance-sampling history but the loss samples t uniformly")
            self.importance.load_state_dict(state["importance"])
