"""The solver registry (names live here once, for the CLI and configs)."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from ..stepping import Solver
from .gaussian_end import GaussianEnd

SOLVERS: Registry[type[Solver]] = Registry("solver")


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: register a solver under its ``name``."""
    return SOLVERS.register(cls.name)(cls)


def make_solver(name: str, **options: Any) -> Solver:
    """Build a solver by name with its options; see ``SOLVERS.names()``.

    ``end="gaussian"`` (any deterministic fixed-step solver) replaces its step to the clean
    end by the one exact for locally Gaussian modes (``GaussianEnd``).
    """
    end = options.pop("end", None)
    solver = SOLVERS.get(name)(**options)
    if end is None:
        return solver
    if end != "gaussian":
        raise ValueError(f"end must be 'gaussian' (or not given: the solver's own clean end), got {end!r}")
    return GaussianEnd(solver)
