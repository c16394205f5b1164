"""Importance sampling of the DDPM step by the loss's second moment (Nichol & Dhariwal 2021, sec. 3.3, eq. 17).

    L = E_{t ~ p_t}[L_t / (N p_t)],   p_t proportional to sqrt(E[L_t^2]),

with E[L_t^2] estimated from the last ``history`` (10) losses seen at each of the N steps;
until every step has that many, p_t is uniform. A small uniform share ``uniform_mix`` keeps
every p_t > 0, so the estimate stays unbiased however the history looks. The history is
state the trainer must keep: the sampler stores the losses of a batch when the loss is
computed (``observe``) and adds them after the optimiser step (``after_step``); its
``state_dict`` goes into every checkpoint (``losses.dsm.StatefulLoss``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schedules.base import NoiseSchedule
from ..utils import check_positive_int
from .time_sampling import num_steps, step_index, uniform_variates


class ImportanceTimeSampler:
    """p_t over the N steps of a discrete schedule from each step's last ``history`` losses (eq. 17).

    Same call as ``TimeSampler``: ``sampler(batch, schedule, generator, device, dtype)`` gives
    times t = n / N, ``density(t, schedule)`` their probability p_t. The tables are sized at the
    first call (or by ``load_state_dict``).
    """

    def __init__(self, history: int = 10, uniform_mix: float = 1e-3) -> None:
        check_positive_int("history", history)
        if not 0.0 <= uniform_mix < 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1), got {uniform_mix!r}")
        self.history, self.uniform_mix = history, uniform_mix
        self.losses: Tensor | None = None  # (N, history) float64, a ring buffer per step
        self.count: Tensor | None = None  # (N,) int64, losses seen per step
        self._pending: list[tuple[Tensor, Tensor]] = []

    def _tables(self, schedule: NoiseSchedule) -> int:
        n = num_steps(schedule, "importance sampling of t needs")
        if self.losses is None:
            self.losses = torch.zeros(n, self.history, dtype=torch.float64)
            self.count = torch.zeros(n, dtype=torch.int64)
        elif self.losses.shape[0] != n:
            raise ValueError(f"this importance sampler holds {self.losses.shape[0]} steps, the schedule has {n}")
        return n

    def probabilities(self, schedule: NoiseSchedule) -> Tensor:
        """p_t (N,) float64: sqrt(mean of the kept L_t^2), normalised and mixed with uniform; uniform until full."""
        n = self._tables(schedule)
        assert self.losses is not None and self.count is not None
        if bool((self.count < self.history).any()):
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        w = self.losses.pow(2).mean(1).sqrt()
        return (1 - self.uniform_mix) * w / w.sum() + self.uniform_mix / n

    def _index(self, t: Tensor) -> Tensor:
        """The step index n - 1 in 0..N-1 of times t = n / N (CPU int64)."""
        if self.losses is None:
            raise ValueError("this importance sampler has not seen a schedule yet; draw times with it first")
        return step_index(t, self.losses.shape[0])

    def __call__(
        self,
        batch: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        p = self.probabilities(schedule)
        u = uniform_variates(batch, "iid", generator, device).cpu()
        idx = torch.searchsorted(p.cumsum(0), u, right=True).clamp(max=p.numel() - 1)
        return ((idx + 1).to(torch.float64) / p.numel()).to(device=device, dtype=dtype)

    def density(self, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """p_t of each time (the mass of its step), on t's device and in its dtype."""
        return self.probabilities(schedule)[self._index(t)].to(device=t.device, dtype=t.dtype)

    def observe(self, t: Tensor, losses: Tensor) -> None:
        """Keep a batch's per-sample losses at times t until ``after_step`` adds them to the history
        (every micro-batch of a step, with gradient accumulation)."""
        self._pending.append((t.detach(), losses.detach()))

    def record(self, t: Tensor, losses: Tensor) -> None:
        """Push per-sample losses at times t into their steps' ring buffers (the newest ``history`` per step win)."""
        idx = self._index(t)
        assert self.losses is not None and self.count is not None
        n = self.losses.shape[0]
        order = torch.argsort(idx, stable=True)
        idx, vals = idx[order], losses.detach().to("cpu", torch.float64)[order]
        rank = torch.arange(idx.numel()) - torch.searchsorted(idx, idx)  # position within its step's group
        seen = torch.bincount(idx, minlength=n)
        keep = rank >= seen[idx] - self.history
        pos = (self.count[idx] + rank) % self.history
        self.losses[idx[keep], pos[keep]] = vals[keep]
        self.count += seen

    def after_step(self) -> None:
        """Add the observed batch to the history (called once per optimiser step)."""
        if self._pending:
            self.record(torch.cat([t for t, _ in self._pending]), torch.cat([v for _, v in self._pending]))
            self._pending = []

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.count = state["losses"], state["count"]
        self._pending = []
