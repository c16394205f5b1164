"""The `diffusekit` command line. Names (schedule, solver, ...) map to classes here only."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """diffusekit: train, sample and evaluate diffusion models."""


@main.command()
@click.option("--out", default="runs/oracle-demo", show_default=True, help="output folder")
def demo(out: str) -> None:
    """Sample the exact 2-D oracle and plot samples and ODE trajectories."""
    from .demo import oracle_demo

    oracle_demo(out)


if __name__ == "__main__":
    main()
