"""diffusekit: diffusion models in one framework (schedules, denoisers, samplers, oracle)."""

from .denoiser import Denoiser, DenoiserLike, DenoiserWrapper
from .guidance import (
    ClassifierEnergy,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiagonalGaussian,
    EnergyGuidance,
    LowDensityEnergy,
    MeanShiftClassifierGuidance,
    cfg_gaussian_ode_map,
    tilted_gaussian,
)
from .interop import discrete_time_denoiser, noise_level_of_c_noise
from .learned_variance import LearnedVariance
from .variance_heads import HeadVariance
from .noise import NoiseSource
from .parameterization import PARAMETERIZATIONS, Prediction, make_parameterization
from .sample import Solution, StepInfo, sample
from .schedules import (
    DiscreteSchedule,
    EDMSchedule,
    FlowSchedule,
    Grid,
    NoiseSchedule,
    SubVPSchedule,
    VESchedule,
    VPSchedule,
    make_grid,
    make_schedule,
)
from .solvers import DDIM, DDPM, SOLVERS, make_solver
from .stepping import Constraint, Solver, Step, StepContext
from . import tasks

__version__ = "0.1.0"

__all__ = [
    "ClassifierEnergy", "ClassifierFreeGuidance", "ClassifierGuidance", "DiagonalGaussian", "EnergyGuidance",
    "LowDensityEnergy", "MeanShiftClassifierGuidance", "cfg_gaussian_ode_map", "tilted_gaussian",
    "DDIM", "DDPM", "Constraint", "Denoiser", "LearnedVariance", "HeadVariance", "DenoiserLike", "DenoiserWrapper", "StepInfo", "DiscreteSchedule", "EDMSchedule", "FlowSchedule", "Grid",
    "NoiseSchedule", "NoiseSource", "PARAMETERIZATIONS", "Prediction", "SOLVERS", "Solution", "Solver", "Step",
    "StepContext", "SubVPSchedule", "VESchedule", "VPSchedule", "make_grid", "make_parameterization",
    "make_schedule", "make_solver", "sample", "discrete_time_denoiser", "noise_level_of_c_noise", "tasks",
]
