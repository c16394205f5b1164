"""The learned reverse variance of Improved DDPM (Nichol & Dhariwal 2021, sec. 3.1, eq. 15).

A network with a variance head (``model.learn_variance``; ``Denoiser.outputs``) predicts,
per element, an interpolation v between the two fixed choices of Ho et al. 2020 in the log
domain:

    Sigma_theta(x_t, t) = exp(v log beta_t + (1 - v) log beta_tilde_t),

with beta_t the forward variance of the step and beta_tilde_t the posterior variance
(``variances.transition_var`` / ``posterior_var``). On a respaced K-step trajectory the same
v interpolates the respaced step's beta and beta tilde (sec. 4), so one trained head serves
every grid. At the first step (t_1 -> x0, the decoder) beta_tilde_1 = 0, so the lower end is
clipped to beta_tilde of the step above (as the fixed 'clipped' decoder of ``likelihood/vlb.py``).
The head is trained by the hybrid loss (``losses/hybrid.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import Prediction
from .stepping import Number, Step
from .variances import NAMED_VARIANCES, posterior_var, transition_var


def interpolated_variance(v: Tensor, small: Number, large: Number) -> Tensor:
    """exp(v log large + (1 - v) log small): Nichol & Dhariwal 2021, eq. 15 (large = beta, small = beta tilde)."""
    log_small = torch.as_tensor(small, dtype=v.dtype, device=v.device).log()
    log_large = torch.as_tensor(large, dtype=v.dtype, device=v.device).log()
    return torch.exp(log_small + v * (log_large - log_small))


def var_interp(pred: Prediction) -> Tensor:
    """The prediction's v, or a clear error for a model without a variance head."""
    if pred.var_interp is None:
        raise ValueError("variance 'learned' needs a model with a variance head (model.learn_variance = true, "
                         "trained with diffusion.loss = 'hybrid' or 'vlb'); allowed for this model: small, large")
    return pred.var_interp


class LearnedVariance:
    """The ``ReverseVariance`` 'learned': eq. 15 between the step's beta tilde and beta."""

    name = "learned"

    def __call__(self, pred: Prediction, step: Step) -> Tensor:
        return interpolated_variance(var_interp(pred), posterior_var(step), transition_var(step))

    def decoder_var(self, pred: Prediction, step: Step, clipped: Number) -> Tensor:
        """The decoder's variance on the step t_1 -> 0: eq. 15 between ``clipped`` (the bound's fixed
        decoder variance; by default beta tilde of the step above, as in training) and beta_1 = sigma_1^2
        (the forward variance from 0 to t_1)."""
        return interpolated_variance(var_interp(pred), clipped, transition_var(step))


NAMED_VARIANCES["learned"] = LearnedVariance()
