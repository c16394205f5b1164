"""Samplers as small solver classes on the one loop (``diffusekit.sample``)."""

from .ancestral import DDIM, DDPM
from .base import SOLVERS, make_solver, register

__all__ = ["DDIM", "DDPM", "SOLVERS", "make_solver", "register"]
