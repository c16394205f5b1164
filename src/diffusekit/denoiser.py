"""The Denoiser: any network + a schedule + a parameterization -> a Prediction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .parameterization import Coefficients, Parameterization, Prediction, make_parameterization
from .schedules.base import NoiseSchedule
from .utils import append_dims

Cond = Any  # class labels (LongTensor (B,)), embeddings, or None


@runtime_checkable
class DenoiserLike(Protocol):
    """What ``sample`` and the likelihoods need of a model: its noise schedule, and a call
    ``(x_t, t, cond) -> Prediction`` where ``t`` is a number or one time per sample (B,).

    ``Denoiser``, the exact oracle and any wrapper (guidance, a network from another
    library, a distilled student) qualify. An optional ``cache_times(t)`` lets ``sample``
    hand over the grid's times before the first step.
    """

    schedule: NoiseSchedule

    def __call__(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction: ...


class DenoiserWrapper(nn.Module):
    """Base for wrappers around a denoiser (guidance, rescaling, caching): keeps its schedule,
    forwards ``cache_times``, and its ``forward`` defaults to the inner call."""

    def __init__(self, inner: DenoiserLike) -> None:
        super().__init__()
        self.inner = inner
        self.schedule = inner.schedule

    def cache_times(self, t: Tensor | Sequence[float]) -> None:
        cache = getattr(self.inner, "cache_times", None)
        if cache is not None:
            cache(t)

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        return self.inner(x, t, cond)


def device_of(model: object) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for plain callables)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


class Denoiser(nn.Module):
    """Wraps ``net(x, c_noise, cond=None) -> F`` so that one call gives x0, eps, v and score.

    Works for any data shape (vectors, sequences, images): coefficients are
    broadcast with ``append_dims``. Schedule coefficients are computed in
    float64 when ``t`` is on the CPU (the sampling loop's case) and in ``t``'s
    own dtype otherwise (training with random per-sample times).
    """

    def __init__(self, net: nn.Module | None, schedule: NoiseSchedule, parameterization: str | Parameterization = "eps") -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.parameterization = (
            make_parameterization(parameterization) if isinstance(parameterization, str) else parameterization
        )
        self._scalar_cache: dict[float, tuple[float, ...]] = {}

    def _time(self, t: float | Tensor, x: Tensor) -> Tensor:
        t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)  # never via float32
        if t.device.type == "cpu":
            t = t.to(torch.float64)
            self.schedule.validate_t(t)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        elif t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def _terms(self, t: Tensor) -> tuple[Coefficients, Tensor, Tensor, Tensor]:
        """(coefficients, c_noise, alpha, sigma) at times ``t`` in ``t``'s dtype, unbroadcast."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        d_alpha = d_sigma = None
        if self.parameterization.needs_derivatives:
            d_alpha, d_sigma = self.schedule.dalpha_dsigma(t)
        coeffs = self.parameterization.coefficients(alpha, sigma, d_alpha, d_sigma)
        return coeffs, self.parameterization.c_noise(self.schedule.model_time(t), alpha, sigma), alpha, sigma

    def cache_times(self, t: Tensor | Sequence[float]) -> None:
        """Compute the coefficient numbers at these times in one vectorised schedule call and keep them.

        The sampling loop calls this with its grid, so a step costs no schedule arithmetic.
        Schedules and parameterizations are immutable, so kept values never go stale.
        """
        tt = torch.as_tensor(t, dtype=torch.float64).flatten().cpu()
        if all(v in self._scalar_cache for v in tt.tolist()):  # a grid sampled before
            return
        self.schedule.validate_t(tt)
        coeffs, c_noise, alpha, sigma = self._terms(tt)
        columns = [torch.as_tensor(v, dtype=torch.float64).expand(tt.shape) for v in (*coeffs, c_noise, alpha, sigma)]
        rows = torch.stack(columns, 1).tolist()
        if len(self._scalar_cache) + len(rows) > 65_536:
            self._scalar_cache.clear()
        self._scalar_cache.update(zip(tt.tolist(), map(tuple, rows)))

    def _scalar_coefficients(self, t: float) -> tuple[float, ...]:
        """(c_in, c_skip, c_out, e_skip, e_out, c_noise, alpha, sigma) at one time, as float64 numbers."""
        if t not in self._scalar_cache:
            self.cache_times([t])
        return self._scalar_cache[t]

    def precondition(
        self, x: Tensor, t: float | Tensor
    ) -> tuple[Coefficients, Tensor, Tensor | float, Tensor | float]:
        """(coefficients, c_noise, alpha, sigma) at time ``t``, broadcastable to ``x`` and in its dtype.

        For a Python-number ``t`` the coefficients, alpha and sigma are float64 numbers.
        """
        if isinstance(t, (int, float)):
            *c, c_noise, alpha, sigma = self._scalar_coefficients(float(t))
            return Coefficients(*c), torch.full((x.shape[0],), c_noise, dtype=x.dtype, device=x.device), alpha, sigma
        coeffs, c_noise, alpha, sigma = self._terms(self._time(t, x))

        def cast(v: Tensor) -> Tensor:
            return append_dims(v.to(device=x.device, dtype=x.dtype), x.ndim)

        return (
            Coefficients(*(cast(c) for c in coeffs)),
            c_noise.to(device=x.device, dtype=x.dtype),
            cast(alpha),
            cast(sigma),
        )

    def network(self, x_in: Tensor, c_noise: Tensor, cond: Cond = None) -> Tensor:
        """The raw network output F."""
        if self.net is None:
            raise ValueError("this Denoiser has no network")
        return self.net(x_in, c_noise) if cond is None else self.net(x_in, c_noise, cond)

    @property
    def learns_variance(self) -> bool:
        """Whether the network has a reverse-variance head (``learn_variance``; Nichol & Dhariwal 2021)."""
        return bool(getattr(self.net, "learn_variance", False))

    def outputs(self, x_in: Tensor, c_noise: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor | None]:
        """(F, v): the mean output F and, for a network with a variance head, the interpolation
        v = (r + 1) / 2 of its second half r of channels (Nichol & Dhariwal 2021, eq. 15, with their
        released code's map of an output near [-1, 1] to [0, 1]); v is None otherwise."""
        f = self.network(x_in, c_noise, cond)
        if not self.learns_variance:
            return f, None
        mean, r = f.chunk(2, dim=1)
        return mean, (r + 1) / 2

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        c, c_noise, alpha, sigma = self.precondition(x, t)
        x_in = x if isinstance(c.c_in, float) and c.c_in == 1.0 else c.c_in * x  # no copy for c_in = 1
        f, v = self.outputs(x_in, c_noise, cond)
        if not isinstance(alpha, Tensor):  # one shared time: 0-d coefficients in x's dtype
            alpha, sigma = x.new_tensor(alpha), x.new_tensor(sigma)
        return Prediction(x, alpha, sigma, raw=(f, c), var_interp=v)
