"""Training losses: denoising score matching with separate time distributions and weightings."""

from .dsm import DSMLoss, LossOutput, StatefulLoss, drop_labels, dsm_loss, loss_scale, weighted_error
from .time_sampling import (
    TIME_SAMPLERS,
    TimeSampler,
    make_time_sampler,
    uniform_variates,
)
from .weighting import (
    WEIGHTINGS,
    EDMWeighting,
    EpsWeighting,
    LikelihoodWeighting,
    MinSNRWeighting,
    SNRWeighting,
    VelocityWeighting,
    VWeighting,
    Weighting,
    make_weighting,
)

__all__ = [
    "TIME_SAMPLERS",
    "WEIGHTINGS",
    "DSMLoss",
    "EDMWeighting",
    "EpsWeighting",
    "LikelihoodWeighting",
    "LossOutput",
    "MinSNRWeighting",
    "SNRWeighting",
    "StatefulLoss",
    "TimeSampler",
    "VWeighting",
    "VelocityWeighting",
    "Weighting",
    "drop_labels",
    "dsm_loss",
    "loss_scale",
    "make_time_sampler",
    "make_weighting",
    "uniform_variates",
    "weighted_error",
]
