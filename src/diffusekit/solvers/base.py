"""The solver registry (names live here once, for the CLI and configs)."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from ..sample import Solver

SOLVERS: Registry[type[Solver]] = Registry("solver")


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: register a solver under its ``name``."""
    return SOLVERS.register(cls.name)(cls)


def make_solver(name: str, **options: Any) -> Solver:
    """Build a solver by name with its options; see ``SOLVERS.names()``."""
    return SOLVERS.get(name)(**options)
