"""Samplers as small solver classes on the one loop (``diffusekit.sample``).

Importing this package registers every solver name in ``SOLVERS`` (for the CLI
and configs); ``diffusekit solvers`` lists them with their order and NFE per step.
``DEFAULT_SOLVER`` (a registered name, on its own default grid) at ``DEFAULT_NFE`` model
calls is the library's default sampler (``solvers.default``; chosen in ``diffusekit.tuned``).
"""

from .adaptive_ode import Dopri5
from .ancestral import DDIM, DDPM
from .base import SOLVERS, make_solver, register
from .consistency import Consistency
from ..tuned import DEFAULT_NFE, DEFAULT_SOLVER
from .deis import DEIS
from .default import UniPCLogSNR
from .dpm_solver import (
    DPMSolver,
    DPMSolverAdaptive,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    DPMSolverPP3MSDE,
    DPMSolverSDE,
)
from .gaussian_pc import GaussianPC
from .multistep import IPNDM, LMS, PLMS
from .runge_kutta import Euler, EulerAncestral, Heun
from .sde import PC, AnnealedLangevin, EulerMaruyama, LangevinCorrector, ReverseDiffusion
from .constraints import ClipX0, DynamicThreshold, make_thresholding
from .unipc import UniPC

__all__ = [
    "Consistency", "DDIM", "DDPM", "DEIS", "IPNDM", "LMS", "PC", "PLMS", "SOLVERS", "AnnealedLangevin", "ClipX0", "DPMSolver",
    "DPMSolverAdaptive", "DPMSolverPP2M", "DPMSolverPP2MSDE", "DPMSolverPP3M", "DPMSolverPP3MSDE", "DPMSolverSDE",
    "Dopri5", "DynamicThreshold", "Euler", "EulerAncestral", "EulerMaruyama", "GaussianPC", "Heun", "LangevinCorrector",
    "ReverseDiffusion", "UniPC", "UniPCLogSNR", "DEFAULT_NFE", "DEFAULT_SOLVER", "make_solver", "make_thresholding",
    "register",
]
