"""Reverse-process variances: the covariance of p(x_s | x_t) for s < t on any grid.

The mean of every ancestral step is the Gaussian posterior mean q(x_s | x_t, x0 = x0_hat)
(Ho et al. 2020, eq. 7; on any two grid points, Kingma et al. 2021, VDM eq. 10-11). What
varies between methods is the variance, a ``ReverseVariance``:

- ``small``: the posterior variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (beta tilde),
  Ho et al. 2020, sec. 3.2 (exact when x0 is a point mass);
- ``large``: the forward variance sigma_{t|s}^2 (beta), Ho et al. 2020, sec. 3.2
  (exact when x0 ~ N(0, I));
- ``learned``: a network head's log-domain interpolation between the two (Nichol & Dhariwal
  2021, eq. 15; ``learned_variance.py``).

A variance receives the step's numbers and the model's ``Prediction`` at x_t, and returns
the variance per sample or per element (anything that broadcasts against x). Rules that
need an estimate made once over training data (Analytic-DPM's Gamma_n) or an extra network
head (SN/NPR-DPM, a learned interpolation) keep it in themselves.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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


@runtime_checkable
class ReverseVariance(Protocol):
    """The variance of p(x_s | x_t) on the step t = step.t0 -> s = step.t1 (s > 0).

    ``step`` has been shaped to x (``Step.like``); the result broadcasts against x.
    A rule may also define ``decoder_var(pred, step, clipped)`` for the step t_1 -> 0 (the
    decoder of the bound, where beta tilde is 0 and ``clipped`` is beta tilde of the step above).
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


#: The variances that need nothing beyond the schedule, by name.
FIXED_VARIANCES: dict[str, ReverseVariance] = {"small": SmallVariance(), "large": LargeVariance()}


#: Stateless variances by name: the fixed ones, and those read from the model's Prediction
#: (``learned``, registered by ``learned_variance.py``, which the package imports).
NAMED_VARIANCES: dict[str, ReverseVariance] = dict(FIXED_VARIANCES)


def make_variance(variance: "str | ReverseVariance") -> ReverseVariance:
    """A ``ReverseVariance`` from a name in ``NAMED_VARIANCES`` or an instance."""
    if isinstance(variance, str):
        if variance not in NAMED_VARIANCES:
            raise ValueError(f"variance must be one of {sorted(NAMED_VARIANCES)} or a ReverseVariance, got {variance!r}")
        return NAMED_VARIANCES[variance]
    if not isinstance(variance, ReverseVariance):
        raise TypeError(f"variance must be a name or a ReverseVariance, got {type(variance).__name__}")
    return variance

