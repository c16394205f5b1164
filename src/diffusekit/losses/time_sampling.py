"""Training-time distributions p(t), kept apart from the loss weighting.

Every distribution is an inverse-CDF map applied to a uniform variate u in [0, 1):

- ``uniform``: t = t_min + u (t_max - t_min) (Song et al. 2021; Kingma et al. 2021);
- ``lognormal``: ln(sigma / alpha) ~ N(P_mean, P_std^2) as in EDM (Karras et al. 2022,
  sec. 5, Table 1: P_mean = -1.2, P_std = 1.2), truncated (not clipped) to the
  schedule's range so p(t) has a density, mapped to t with ``schedule.t_of_log_snr``;
- ``discrete``: a uniform DDPM index n in {0, ..., N-1}, t = (n + 1) / N (Ho et al. 2020, Alg. 1).

The variates u are drawn independently (``iid``), or as a batch of low-discrepancy
variates: ``stratified`` u_i = (u_0 + i / B) mod 1 (VDM, Kingma et al. 2021, appendix
"low-discrepancy sampler") or ``antithetic`` pairs (u, 1 - u). Each sample's marginal
is unchanged, so the loss stays unbiased while its variance drops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry
from ..schedules.base import NoiseSchedule
from ..utils import check_positive_int

UNIFORM_KINDS = ("iid", "stratified", "antithetic")


def uniform_variates(
    batch: int, kind: str = "iid", generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """B float64 variates in [0, 1), each marginally uniform: iid, stratified (VDM) or antithetic."""
    check_positive_int("batch", batch)
    if kind == "iid":
        return torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    if kind == "stratified":
        u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        return torch.remainder(u0 + torch.arange(batch, device=device, dtype=torch.float64) / batch, 1.0)
    if kind == "antithetic":
        half = torch.rand((batch + 1) // 2, generator=generator, device=device, dtype=torch.float64)
        # 1 - u lies in (0, 1]; map an exact 1 back to 0 so the support stays [0, 1).
        return torch.cat([half, torch.remainder(1.0 - half, 1.0)])[:batch]
    raise ValueError(f"unknown variate kind {kind!r}; allowed: {', '.join(UNIFORM_KINDS)}")


def _log_snr_derivative(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """d lambda / dt by forward-mode differentiation (negative for every schedule)."""
    t = t.contiguous()
    return torch.func.jvp(schedule.log_snr, (t,), (torch.ones_like(t),))[1]


@dataclass(frozen=True)
class TimeSampler:
    """p(t) for training: ``kind`` in (uniform, lognormal, discrete) and variates ``u`` in (iid, stratified, antithetic).

    ``sampler(batch, schedule, generator, device)`` returns (B,) times in
    [t_min, t_max] (float64 unless ``dtype`` says otherwise). ``density(t, schedule)``
    is p(t) (the probability mass 1/N for ``discrete``), for importance weighting.
    """

    kind: str = "uniform"
    u: str = "iid"
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "lognormal", "discrete"):
            raise ValueError(f"unknown time distribution {self.kind!r}; allowed: uniform, lognormal, discrete")
        if self.u not in UNIFORM_KINDS:
            raise ValueError(f"unknown variate kind {self.u!r}; allowed: {', '.join(UNIFORM_KINDS)}")
        if not self.p_std > 0:
            raise ValueError(f"p_std must be positive, got {self.p_std}")

    # ---- the log-normal's truncation to the schedule's noise range -----------------
    def _z_range(self, schedule: NoiseSchedule, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        """Standardised ln(sigma/alpha) = -lambda at t_min and t_max (float64)."""
        ends = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64, device=device)
        z = (-schedule.log_snr(ends) - self.p_mean) / self.p_std
        return z[0], z[1]

    def __call__(
        self,
        batch: int,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        u = uniform_variates(batch, self.u, generator, device)
        if self.kind == "uniform":
            t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
        elif self.kind == "discrete":
            n_steps = num_steps(schedule)
            t = ((u * n_steps).floor().clamp(max=n_steps - 1) + 1) / n_steps
        else:
            z_lo, z_hi = self._z_range(schedule, u.device)
            c_lo, c_hi = torch.special.ndtr(z_lo), torch.special.ndtr(z_hi)
            z = torch.special.ndtri(c_lo + u * (c_hi - c_lo))
            lam = -(self.p_mean + self.p_std * z)
            t = schedule.t_of_log_snr(lam)
        return t.clamp(schedule.t_min, schedule.t_max).to(dtype)

    def density(self, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """p(t) of the marginal distribution (for ``discrete``: the mass 1/N of each index)."""
        if self.kind == "uniform":
            return torch.full_like(t, 1.0 / (schedule.t_max - schedule.t_min))
        if self.kind == "discrete":
            return torch.full_like(t, 1.0 / num_steps(schedule))
        t64 = t.to(torch.float64)
        z_lo, z_hi = self._z_range(schedule, t.device)
        mass = torch.special.ndtr(z_hi) - torch.special.ndtr(z_lo)
        z = (-schedule.log_snr(t64) - self.p_mean) / self.p_std
        pdf_z = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        # ln(sigma/alpha) = -lambda(t), so |d ln(sigma/alpha)/dt| = -lambda'(t); where lambda = -inf
        # (alpha = 0) the Gaussian tail wins: p = 0.
        dens = pdf_z / (self.p_std * mass) * -_log_snr_derivative(schedule, t64)
        return torch.where(pdf_z > 0, dens, torch.zeros_like(dens)).to(t.dtype)


def num_steps(schedule: NoiseSchedule, needs: str = "the 'discrete' time distribution needs") -> int:
    """N of a discrete schedule, or a TypeError "<needs> a DiscreteSchedule (N steps), got ..."."""
    n = getattr(schedule, "num_steps", None)
    if not isinstance(n, int):
        raise TypeError(f"{needs} a DiscreteSchedule (N steps), got {schedule!r}")
    return n


def step_index(t: Tensor, n: int) -> Tensor:
    """The 0-based DDPM step n - 1 in 0..N-1 of times t = n / N (CPU int64; Ho et al. 2020's t = n)."""
    return (t.detach().to("cpu", torch.float64) * n).round().long().clamp(1, n) - 1


TIME_SAMPLERS: Registry[TimeSampler] = Registry("time distribution")
TIME_SAMPLERS.register("uniform")(TimeSampler("uniform"))
TIME_SAMPLERS.register("stratified")(TimeSampler("uniform", u="stratified"))
TIME_SAMPLERS.register("antithetic")(TimeSampler("uniform", u="antithetic"))
TIME_SAMPLERS.register("lognormal")(TimeSampler("lognormal"))
TIME_SAMPLERS.register("discrete")(TimeSampler("discrete"))


def make_time_sampler(name: str | TimeSampler, **kwargs: object) -> TimeSampler:
    """A time distribution by name: uniform, stratified, antithetic, lognormal (p_mean, p_std, u), discrete (u)."""
    if isinstance(name, TimeSampler):
        return name
    base = TIME_SAMPLERS.get(name)
    if not kwargs:
        return base
    return TimeSampler(base.kind, **{"u": base.u, "p_mean": base.p_mean, "p_std": base.p_std, **kwargs})  # type: ignore[arg-type]
