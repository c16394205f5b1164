"""Reverse-process variances: the covariance of p(x_s | x_t) for s < t on any grid.

The mean of every ancestral step is the Gaussian posterior mean q(x_s | x_t, x0 = x0_hat)
(Ho et al. 2020, eq. 7; on any two grid points, Kingma et al. 2021, VDM eq. 10-11). What
varies between methods is the variance, a ``ReverseVariance``:

- ``small``: the posterior variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (beta tilde),
  Ho et al. 2020, sec. 3.2 (exact when x0 is a point mass);
- ``large``: the forward variance sigma_{t|s}^2 (beta), Ho et al. 2020, sec. 3.2
  (exact when x0 ~ N(0, I));
- ``learned``: a network head's log-domain interpolation between the two (Nichol & Dhariwal
  2021, eq. 15; ``learned_variance.py``);
- ``EtaVariance``: DDIM's lambda^2 = eta^2 beta tilde (Song et al. 2021, eq. 16);
- ``analytic``: Analytic-DPM's optimal scalar variance (Bao et al. 2022a, Thm 1 and its
  eta form, eq. 7-9), ``OptimalVariance`` from noise moments estimated once over training data
  (``likelihood/analytic.py``);
- ``sn`` / ``npr``: the optimal diagonal covariance from a head on a frozen eps model
  (Bao et al. 2022b, eq. 9-12), ``variance_heads.HeadVariance``.

Every eta-family reverse process (DDPM is eta = 1) has the mean of
q_lambda(x_s | x_t, x0) = N(alpha_s x0 + sqrt(sigma_s^2 - lambda^2) (x_t - alpha_t x0) / sigma_t, lambda^2)
with x0 -> x0_hat (Bao et al. 2022a, eq. 3), lambda^2 = eta^2 beta tilde; the mean's error is
``eps_gain`` (x) (eps - eps_hat), ``eps_gain`` = sigma_t alpha_s / alpha_t - sqrt(sigma_s^2 - lambda^2),
so the optimal variance is lambda^2 + eps_gain^2 Cov[eps | x_t] (scalar: its trace / d).

A rule may have ``eta`` (the DDIM eta it is for; absent: eta = 1) and ``decoder_var``, its own
variance of p(x0 | x_1) at the first grid point (absent: the bound's default).

A variance receives the step's numbers and the model's ``Prediction`` at x_t, and returns
the variance per sample or per element (anything that broadcasts against x). Rules that
need an estimate made once over training data (Analytic-DPM's Gamma_n) or an extra network
head (SN/NPR-DPM, a learned interpolation) keep it in themselves.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from .parameterization import Prediction
from .stepping import Number, Step


def transition_var(step: Step) -> Number:
    """sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2, the forward variance from s = t1 to t = t0."""
    var = step.sigma0**2 - (step.alpha0 / step.alpha1) ** 2 * step.sigma1**2
    return var.clamp(min=0.0) if isinstance(var, Tensor) else max(var, 0.0)


def posterior_var(step: Step) -> Number:
    """Var q(x_s | x_t, x0) = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (beta tilde, Ho et al. 2020, eq. 7)."""
    return transition_var(step) * step.sigma1**2 / step.sigma0**2


def eta_var(step: Step, eta: float) -> Number:
    """lambda^2 = eta^2 beta tilde, the variance of DDIM's q_lambda (Song et al. 2021, eq. 16), at most sigma_s^2."""
    var = eta**2 * posterior_var(step)
    return torch.minimum(var, step.sigma1**2) if isinstance(var, Tensor) else min(var, step.sigma1**2)


def eps_gain(step: Step, eta: float) -> Number:
    """sigma_t alpha_s / alpha_t - sqrt(sigma_s^2 - lambda^2): the mean's error per unit of eps error
    (Bao et al. 2022a, Thm 1's (sqrt(beta_bar_n / alpha_n) - sqrt(beta_bar_{n-1} - lambda^2)))."""
    return step.sigma0 * step.alpha1 / step.alpha0 - (step.sigma1**2 - eta_var(step, eta)) ** 0.5


def eps_cov_var(step: Step, eta: float, cov: Number) -> Number:
    """lambda^2 + eps_gain^2 cov: the optimal variance of the eta-family step for the noise's conditional
    covariance ``cov`` (scalar: Bao et al. 2022a, Thm 1 and eq. 9; diagonal: Bao et al. 2022b, eq. 9-12).
    At eta = 0 on the step t_1 -> 0 it is the decoder's (sigma_1 / alpha_1)^2 cov."""
    return eta_var(step, eta) + eps_gain(step, eta) ** 2 * cov


def check_eta(eta: float) -> float:
    """eta as a float, refused unless 0 <= eta (DDIM's stochasticity)."""
    if not (isinstance(eta, (int, float)) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


@runtime_checkable
class ReverseVariance(Protocol):
    """The variance of p(x_s | x_t) on the step t = step.t0 -> s = step.t1 (s > 0).

    ``step`` has been shaped to x (``Step.like``); the result broadcasts against x.
    A rule may also define ``decoder_var(pred, step, clipped)`` for the step t_1 -> 0 (the
    decoder of the bound, where beta tilde is 0; ``clipped`` is the bound's fixed decoder variance,
    by default beta tilde of the step above, else what ``decoder_variance`` asks).
    """

    name: str

    def __call__(self, pred: Prediction, step: Step) -> Number: ...


class SmallVariance:
    """beta tilde: the posterior variance (Ho et al. 2020, sec. 3.2)."""

    name = "small"

    def __call__(self, pred: Prediction, step: Step) -> Number:
        return posterior_var(step)


class LargeVariance:
    """beta: the forward transition variance (Ho et al. 2020, sec. 3.2)."""

    name = "large"

    def __call__(self, pred: Prediction, step: Step) -> Number:
        return transition_var(step)


class EtaVariance:
    """DDIM's variance lambda^2 = eta^2 beta tilde (Song et al. 2021, eq. 16); eta = 1 is ``small``."""

    name = "eta"

    def __init__(self, eta: float = 0.0) -> None:
        self.eta = check_eta(eta)

    def __call__(self, pred: Prediction, step: Step) -> Number:
        return eta_var(step, self.eta)


def clamp_eps_var(m: Tensor, alpha_t: Number, sigma_t: Number, data_var: float) -> Tensor:
    """E tr Cov[eps | x_t] / d clamped to Bao et al. 2022a, Thm 2: [0, min(1, alpha_t^2 / sigma_t^2 tr Cov[x0] / d)]."""
    snr = torch.as_tensor((alpha_t / sigma_t) ** 2, dtype=m.dtype, device=m.device)
    return torch.minimum(m.clamp(min=0.0), (snr * data_var).clamp(max=1.0))


def check_clip(clip: float | None) -> float | None:
    """A first-step clip: a positive number (data units) or None."""
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"first_step_clip must be a positive number or None, got {clip!r}")
    return clip


def clip_first_step(var: Number, step: Step, clip: float | None) -> Number:
    """On the step into the first grid point (``step.remaining == 2``; sampling only), at most
    (clip alpha_1 / 2)^2: two of the noise's standard deviations move x_1 / alpha_1 by at most ``clip``
    (Bao et al. 2022a clip this step so the decoded pixels stay within a bin, 2/255 in [-1, 1])."""
    if clip is None or step.remaining != 2:
        return var
    top = (clip * step.alpha1 / 2) ** 2
    return torch.clamp(var, max=top) if isinstance(var, Tensor) else min(var, top)


class OptimalVariance:
    """Analytic-DPM: lambda^2 + gain^2 E||eps - eps_hat||^2 / d, Bao et al. 2022a, Thm 1 (eta = 1, DDPM)
    and its DDIM form (eta, eq. 9), clamped to Thm 2's bounds [lambda^2, lambda^2 + gain^2 c_t] with
    c_t = min(1, alpha_t^2 / sigma_t^2 tr Cov[x0] / d).

    ``moments``: a ``likelihood.analytic.NoiseMoments`` (interpolated in t for any trajectory).
    ``first_step_clip`` (data units, sampling only; ``clip_first_step``): give the data's bin width,
    e.g. 2/255 for 8-bit images in [-1, 1]. The decoder p(x0 | x_1) uses the same rule at eta = 0, s = 0.
    """

    name = "analytic"

    def __init__(self, moments: Any, eta: float = 1.0, first_step_clip: float | None = None) -> None:
        self.moments = moments
        self.eta = check_eta(eta)
        self.first_step_clip = check_clip(first_step_clip)

    def eps_var(self, pred: Prediction, step: Step) -> Tensor:
        """E tr Cov[eps | x_t] / d, estimated and clamped (Thm 2), at t = step.t0, against pred.x_t."""
        m = self.moments.residual_at(torch.as_tensor(step.t0)).to(pred.x_t.device)
        if m.numel() > 1:  # one time per sample
            m = m.reshape(-1, *[1] * (pred.x_t.ndim - 1))
        return clamp_eps_var(m, step.alpha0, step.sigma0, self.moments.data_var).to(pred.x_t.dtype)

    def __call__(self, pred: Prediction, step: Step) -> Number:
        return clip_first_step(eps_cov_var(step, self.eta, self.eps_var(pred, step)), step, self.first_step_clip)

    def decoder_var(self, pred: Prediction, step: Step, clipped: Number | None = None) -> Number:
        """Var p(x0 | x_1) = (sigma_1 / alpha_1)^2 E tr Cov[eps | x_1] / d (= E tr Cov[x0 | x_1] / d);
        ``clipped`` (the fixed rules' decoder variance) is not used."""
        return eps_cov_var(step, 0.0, self.eps_var(pred, step))


#: The variances that need nothing beyond the schedule, by name.
FIXED_VARIANCES: dict[str, ReverseVariance] = {"small": SmallVariance(), "large": LargeVariance()}


#: Stateless variances by name: the fixed ones, and those read from the model's Prediction
#: (``learned``, registered by ``learned_variance.py``, which the package imports).
NAMED_VARIANCES: dict[str, ReverseVariance] = dict(FIXED_VARIANCES)

#: Rules that need something more (estimates, a head), by name: a builder taking keyword options
#: (``sn`` and ``npr`` registered by ``variance_heads.py``, which the package imports).
VARIANCE_BUILDERS: dict[str, Callable[..., ReverseVariance]] = {"analytic": OptimalVariance}


def make_variance(variance: "str | ReverseVariance", **options: Any) -> ReverseVariance:
    """A ``ReverseVariance`` from a name in ``NAMED_VARIANCES``, a name in ``VARIANCE_BUILDERS``
    built with ``options`` (e.g. ``make_variance("analytic", moments=m, eta=0.0)``), or an instance."""
    if isinstance(variance, str):
        if variance in VARIANCE_BUILDERS:
            return VARIANCE_BUILDERS[variance](**options)
        if variance not in NAMED_VARIANCES:
            allowed = [*NAMED_VARIANCES, *VARIANCE_BUILDERS]
            raise ValueError(f"variance must be one of {allowed} or a ReverseVariance, got {variance!r}")
        if options:
            raise ValueError(f"variance {variance!r} takes no options, got {sorted(options)}")
        return NAMED_VARIANCES[variance]
    if not isinstance(variance, ReverseVariance):
        raise TypeError(f"variance must be a name or a ReverseVariance, got {type(variance).__name__}")
    return variance

