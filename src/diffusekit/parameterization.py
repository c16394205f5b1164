"""What a network predicts, and every conversion between predictions, in one place.

A parameterization is a preconditioning in the sense of EDM (Karras et al. 2022,
sec. 5 and Table 1): the network F sees ``c_in * x_t`` and ``c_noise``, and its
output is mapped linearly to the clean-data estimate and the noise estimate,

    x0_hat  = c_skip * x_t + c_out * F,        eps_hat = e_skip * x_t + e_out * F.

Both maps are written without dividing by alpha or sigma where the prediction
type allows it, so v- and velocity-models stay finite at zero terminal SNR
(alpha = 0) and at the clean end (sigma = 0). Samplers never branch on the
prediction type: they read ``Prediction.x0`` / ``.eps`` / ``.score`` / ``.v``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from .registry import Registry


class Prediction:
    """One model evaluation at (x_t, alpha, sigma), viewed in every parameterization.

    ``alpha`` and ``sigma`` broadcast against ``x_t``. ``x0`` and ``eps`` are both
    available, each computed on first use only: from the network output through the
    parameterization's linear maps (``raw``, see ``Coefficients``), or from the other
    one through ``x_t = alpha x0 + sigma eps``. A solver that reads only ``x0`` thus
    never pays for ``eps``, and neither estimate needs a division that may be singular
    when it comes from the network output.

    ``var_interp`` is the learned reverse-variance interpolation v of a network with a
    variance head (Nichol & Dhariwal 2021, eq. 15; ``learned_variance.py``), else None.
    """

    __slots__ = ("x_t", "alpha", "sigma", "_x0", "_eps", "_raw", "var_interp")

    def __init__(
        self,
        x_t: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        x0: Tensor | None = None,
        eps: Tensor | None = None,
        *,
        raw: tuple[Tensor, "Coefficients"] | None = None,
        var_interp: Tensor | None = None,
    ) -> None:
        if x0 is None and eps is None and raw is None:
            raise ValueError("a Prediction needs x0, eps or the raw network output")
        self.x_t, self.alpha, self.sigma = x_t, alpha, sigma
        self._x0, self._eps, self._raw = x0, eps, raw
        self.var_interp = var_interp

    @property
    def x0(self) -> Tensor:
        """E[x0 | x_t] (Tweedie; the data prediction)."""
        if self._x0 is None:
            if self._raw is not None:
                f, c = self._raw
                self._x0 = _affine(c.c_skip, self.x_t, c.c_out, f)
            else:
                self._x0 = (self.x_t - self.sigma * self._eps) / self.alpha
        return self._x0

    @property
    def eps(self) -> Tensor:
        """E[eps | x_t] (the noise prediction)."""
        if self._eps is None:
            if self._raw is not None:
                f, c = self._raw
                self._eps = _affine(c.e_skip, self.x_t, c.e_out, f)
            else:
                self._eps = (self.x_t - self.alpha * self._x0) / self.sigma
        return self._eps

    @property
    def score(self) -> Tensor:
        """grad log p_t(x_t) = -eps / sigma (Tweedie; Vincent 2011)."""
        return -self.eps / self.sigma

    @property
    def v(self) -> Tensor:
        """v = alpha * eps - sigma * x0 (Salimans & Ho 2022, sec. 4)."""
        return self.alpha * self.eps - self.sigma * self.x0

    def velocity(self, d_alpha: Tensor, d_sigma: Tensor) -> Tensor:
        """dx_t/dt along the probability-flow ODE: alpha' x0 + sigma' eps (flow matching)."""
        return d_alpha * self.x0 + d_sigma * self.eps

    def with_x0(self, x0: Tensor) -> "Prediction":
        """The same point with a new data estimate (clipping, constraints); eps follows from x_t."""
        return Prediction(self.x_t, self.alpha, self.sigma, x0, var_interp=self.var_interp)

    def with_eps(self, eps: Tensor) -> "Prediction":
        """The same point with a new noise estimate (guidance); x0 follows from x_t."""
        return Prediction(self.x_t, self.alpha, self.sigma, None, eps, var_interp=self.var_interp)

    def __repr__(self) -> str:
        return f"Prediction(shape={tuple(self.x_t.shape)}, dtype={self.x_t.dtype})"


def _affine(a: Tensor | float, x: Tensor, b: Tensor | float, f: Tensor) -> Tensor:
    """a x + b f; with number coefficients (one shared time) one new tensor and two passes."""
    if isinstance(a, float) and isinstance(b, float):
        if a == 0.0:
            return f * b
        return torch.add(x, f, alpha=b) if a == 1.0 else (x * a).add_(f, alpha=b)
    return a * x + b * f


class Coefficients(NamedTuple):
    """The linear maps of one parameterization at one noise level (broadcastable tensors)."""

    c_in: Tensor
    c_skip: Tensor
    c_out: Tensor
    e_skip: Tensor
    e_out: Tensor


class Parameterization(ABC):
    """Maps a raw network output F to (x0, eps) and a training pair (x0, eps) back to F's target."""

    name: str

    @abstractmethod
    def coefficients(self, alpha: Tensor, sigma: Tensor, d_alpha: Tensor | None, d_sigma: Tensor | None) -> Coefficients:
        """(c_in, c_skip, c_out, e_skip, e_out) at the given noise level."""

    needs_derivatives: bool = False

    def c_noise(self, model_time: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The noise input of the network; the schedule's model time unless overridden."""
        return model_time

    def target(self, x0: Tensor, eps: Tensor, c: Coefficients, x_t: Tensor) -> Tensor:
        """The network output that reproduces (x0, eps) exactly: F* = (x0 - c_skip x_t) / c_out,
        or from the eps map where c_out vanishes."""
        safe = c.c_out != 0
        from_x0 = (x0 - c.c_skip * x_t) / torch.where(safe, c.c_out, torch.ones_like(c.c_out))
        from_eps = (eps - c.e_skip * x_t) / torch.where(safe, torch.ones_like(c.e_out), c.e_out)
        return torch.where(safe, from_x0, from_eps)


def _ones(a: Tensor) -> Tensor:
    return torch.ones_like(a)


def _scaled(alpha: Tensor, sigma: Tensor, s: Tensor, c_in: Tensor, c_skip: Tensor, c_out: Tensor) -> Coefficients:
    """Coefficients of x0 = c_skip x_hat + c_out F(c_in x_hat) in the scaled coordinates x_hat = x_t / alpha,
    s = sigma / alpha (Karras et al. 2022, eq. 7), with eps = (x_t - alpha x0) / sigma."""
    return Coefficients(c_in / alpha, c_skip / alpha, c_out, (1 - c_skip) / sigma, -c_out / s)


class EpsParam(Parameterization):
    """F predicts the noise eps (Ho et al. 2020, eq. 11): x0 = (x_t - sigma F) / alpha."""

    name = "eps"

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return Coefficients(_ones(alpha), 1 / alpha, -sigma / alpha, torch.zeros_like(alpha), _ones(alpha))


class X0Param(Parameterization):
    """F predicts the clean data x0: eps = (x_t - alpha F) / sigma."""

    name = "x0"

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return Coefficients(_ones(alpha), torch.zeros_like(alpha), _ones(alpha), 1 / sigma, -alpha / sigma)


class VParam(Parameterization):
    """F predicts v = alpha eps - sigma x0 (Salimans & Ho 2022).

    Inverting [x_t; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]:
    x0 = (alpha x_t - sigma v) / r^2, eps = (sigma x_t + alpha v) / r^2, r^2 = alpha^2 + sigma^2.
    """

    name = "v"

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        r2 = alpha**2 + sigma**2
        return Coefficients(_ones(alpha), alpha / r2, -sigma / r2, sigma / r2, alpha / r2)


class ScoreParam(Parameterization):
    """F predicts the score grad log p_t = -eps / sigma (Song & Ermon 2019)."""

    name = "score"

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return Coefficients(_ones(alpha), 1 / alpha, sigma**2 / alpha, torch.zeros_like(alpha), -sigma)


class VelocityParam(Parameterization):
    """F predicts the ODE velocity u = alpha' x0 + sigma' eps (flow matching, Lipman et al. 2022).

    Inverting [x_t; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps] with
    det = alpha sigma' - sigma alpha' (= 1 on the rectified-flow path).
    """

    name = "velocity"
    needs_derivatives = True

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        if d_alpha is None or d_sigma is None:
            raise ValueError("the velocity parameterization needs d_alpha and d_sigma")
        det = alpha * d_sigma - sigma * d_alpha
        return Coefficients(_ones(alpha), d_sigma / det, -sigma / det, -d_alpha / det, alpha / det)


@dataclass(frozen=True)
class EDMParam(Parameterization):
    """EDM-form preconditioning (Karras et al. 2022, Table 1, eq. 7) on any schedule.

    In the scaled coordinates x_hat = x_t / alpha, s = sigma / alpha the network
    output F gives D = c_skip x_hat + c_out F(c_in x_hat, c_noise). ``kind``
    picks a column of Table 1:

    - ``edm``: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2),
      c_in = 1/sqrt(s^2+sd^2), c_noise = log(s)/4 (sd = ``sigma_data``);
    - ``vp``: c_skip = 1, c_out = -s, c_in = 1/sqrt(s^2+1), c_noise = model time
      (equals the eps-parameterization on a VP schedule);
    - ``ve``: c_skip = 1, c_out = s, c_in = 1, c_noise = model time.
    """

    kind: str = "edm"
    sigma_data: float = 0.5
    name = "edm"

    def __post_init__(self) -> None:
        if self.kind not in ("edm", "vp", "ve"):
            raise ValueError(f"unknown EDM preconditioning kind {self.kind!r}; allowed: edm, vp, ve")

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        s = sigma / alpha
        if self.kind == "edm":
            sd = self.sigma_data
            r = (s**2 + sd**2).sqrt()
            c_skip, c_out, c_in = sd**2 / r**2, s * sd / r, 1 / r
        elif self.kind == "vp":
            c_skip, c_out, c_in = _ones(s), -s, 1 / (s**2 + 1).sqrt()
        else:
            c_skip, c_out, c_in = _ones(s), s, _ones(s)
        return _scaled(alpha, sigma, s, c_in, c_skip, c_out)

    def c_noise(self, model_time: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return 0.25 * torch.log(sigma / alpha) if self.kind == "edm" else model_time


@dataclass(frozen=True)
class ConsistencyParam(Parameterization):
    """The boundary-condition preconditioning of consistency models (Song et al. 2023, eq. 3 and App. C),
    in the scaled coordinates x_hat = x_t / alpha, s = sigma / alpha, around the clean-data estimate D of an
    ``inner`` parameterization (its c_in, c_noise and output map; ``edm`` by default):

        f(x, s) = a(s) x_hat + b(s) D(x, s),  b = (s - s_min) / s,  a = sd^2 / ((s - s_min)^2 + sd^2) - b sd^2 / (s^2 + sd^2),

    so f(x, s_min) = x_hat exactly: the consistency function's boundary condition. ``x0`` of the Prediction is
    f. With the EDM inner this is c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = (s - s_min) sd / sqrt(s^2 + sd^2),
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = log(s) / 4 (App. C); with the teacher's own inner (``consistency_eps``,
    ... as in latent consistency models, Luo et al. 2023, eq. 9) the network keeps the inputs and output meaning it
    was trained with, so a teacher's weights carry over: f is D blended with x_hat only near s_min.
    """

    sigma_min: float = 0.002
    sigma_data: float = 0.5
    inner: str = "edm"

    def __post_init__(self) -> None:
        if self.inner not in CONSISTENCY_INNERS:
            raise ValueError(f"unknown inner parameterization {self.inner!r} of a consistency model; allowed: "
                             f"{', '.join(CONSISTENCY_INNERS)}")

    @property  # type: ignore[override]
    def name(self) -> str:
        return "consistency" if self.inner == "edm" else f"consistency_{self.inner}"

    @property
    def needs_derivatives(self) -> bool:  # type: ignore[override]
        return self._inner().needs_derivatives

    def _inner(self) -> Parameterization:
        return make_parameterization(self.inner, **({"sigma_data": self.sigma_data} if self.inner == "edm" else {}))

    def coefficients(self, alpha, sigma, d_alpha=None, d_sigma=None):
        s, sd = sigma / alpha, self.sigma_data
        b = (s - self.sigma_min) / s
        a = sd**2 / ((s - self.sigma_min) ** 2 + sd**2) - b * sd**2 / (s**2 + sd**2)
        inner = self._inner().coefficients(alpha, sigma, d_alpha, d_sigma)
        c_skip, c_out = a / alpha + b * inner.c_skip, b * inner.c_out
        return Coefficients(inner.c_in, c_skip, c_out, (1 - alpha * c_skip) / sigma, -alpha * c_out / sigma)

    def c_noise(self, model_time: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return self._inner().c_noise(model_time, alpha, sigma)


#: Parameterizations a consistency model can wrap (``consistency`` = EDM's, ``consistency_<inner>`` the others).
CONSISTENCY_INNERS = ("edm", "eps", "x0", "v", "velocity")


def consistency_name(teacher: str) -> str:
    """The consistency parameterization around a teacher's ``teacher`` parameterization (its weights carry over)."""
    return ConsistencyParam(inner=teacher).name


PARAMETERIZATIONS: Registry[Callable[..., Parameterization]] = Registry("parameterization")
for _cls in (EpsParam, X0Param, VParam, ScoreParam, VelocityParam, EDMParam):
    PARAMETERIZATIONS.register(_cls.name)(_cls)
PARAMETERIZATIONS.register("consistency")(ConsistencyParam)
for _inner in CONSISTENCY_INNERS[1:]:
    PARAMETERIZATIONS.register(f"consistency_{_inner}")(partial(ConsistencyParam, inner=_inner))


def make_parameterization(name: str, **kwargs) -> Parameterization:
    """Build a parameterization by name: eps, x0, v, score, velocity, edm, consistency, consistency_<inner>."""
    return PARAMETERIZATIONS.get(name)(**kwargs)
