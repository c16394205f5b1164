"""Controllable generation and inverse problems on the one sampling loop (issue 15).

Operators (``operators``), inpainting by replacement and RePaint (``inpainting``), SDEdit
(``sdedit``), colorization by the luminance measurement (``colorization``), DPS (``dps``), DDNM (``ddnm``),
PiGDM (``pigdm``), twisted SMC and TDS (``smc``) and the comparison of
samples with the exact posterior of the oracle (``evaluation``).
"""

from .colorization import Greyscale, decorrelating_transform
from .ddnm import DDNM
from .dps import DPS
from .evaluation import PosteriorReport, compare_to_posterior
from .inpainting import Replacement, repaint_grid, repaint_times
from .operators import AvgPool, GaussianBlur, LinearOperator, Mask
from .sdedit import ode_edit, sdedit
from .pigdm import PiGDM
from .smc import TDS, TwistedSMC

__all__ = [
    "DDNM", "DPS", "AvgPool", "GaussianBlur", "Greyscale", "LinearOperator", "Mask", "PiGDM", "PosteriorReport",
    "Replacement", "TDS", "TwistedSMC", "compare_to_posterior", "decorrelating_transform", "ode_edit", "repaint_grid",
    "repaint_times", "sdedit",
]
