"""The `diffusekit` command line. Names (schedule, solver, ...) map to classes here and in ``pipeline``."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def main() -> None:
    """diffusekit: train, sample and evaluate diffusion models."""


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


def _key_values(items: tuple[str, ...], flag: str) -> dict[str, object]:
    """``("order=3", ...)`` -> ``{"order": 3}``, values parsed as TOML-like literals."""
    from .config import parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = parse_value(v)
    return out


@main.command()
@click.argument("config")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config value, e.g. optim.lr=1e-3")
@click.option("--out", "out", default=None, help="run folder (default runs/<name>)")
@click.option("--no-resume", is_flag=True, help="refuse to continue an existing run")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(config: str, overrides: tuple[str, ...], out: str | None, no_resume: bool, quiet: bool) -> None:
    """Train from a preset (toy2d, digits, fashion) or a TOML file."""
    from .config import load_config
    from .pipeline import train_run

    try:
        cfg = load_config(config).with_overrides(list(overrides))
        run_dir = Path(out or f"runs/{cfg.name}")
        if no_resume and (run_dir / "checkpoints").exists():
            raise ValueError(f"{run_dir} already holds a run (drop --no-resume to continue it)")
        trainer = train_run(cfg, run_dir, resume=not no_resume, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"trained {trainer.step} steps; run folder {run_dir} (loss curve {run_dir / 'loss.png'})")


@main.command()
@click.argument("run_dir")
@click.option("--solver", default=None, help="solver name (see `diffusekit solvers`)")
@click.option("--nfe", type=int, default=None, help="model evaluations")
@click.option("--n", "count", type=int, default=64, show_default=True, help="number of samples")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--grid", default=None, help="step grid name (default: the solver's)")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="solver option, e.g. order=3")
@click.option("--out", default=None, help="output PNG (images) or .npy (other data)")
def sample(run_dir: str, solver: str | None, nfe: int | None, count: int, seed: int, grid: str | None,
           options: tuple[str, ...], out: str | None) -> None:
    """Sample from a trained run folder."""
    import numpy as np

    from .pipeline import load_run, sample_denoiser
    from .train import save_image_grid

    try:
        run = load_run(run_dir)
        opts = _key_values(options, "--option")
        name = solver or run.config.sampling.solver
        sol = sample_denoiser(run.denoiser, run.info, name, nfe or run.config.sampling.nfe, count, seed=seed,
                              grid=grid, progress=True, **opts)
    except (ValueError, FileNotFoundError, TypeError) as e:
        _fail(e)
    images = len(run.info.data_shape) == 3
    path = Path(out or Path(run_dir) / ("grid.png" if images else "samples.npy"))
    if images:
        save_image_grid(sol.x, path, nrow=int(count**0.5) or 1, scale=4)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, sol.x.numpy())
    click.echo(f"{count} samples with {name} ({sol.nfe} NFE) -> {path}")


@main.command()
@click.argument("run_dir")
def info(run_dir: str) -> None:
    """Show a run's config, data shape, parameters and training progress."""
    from .models import count_parameters
    from .pipeline import load_run
    from .train import read_metrics

    try:
        run = load_run(run_dir)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(run.config.to_toml())
    click.echo(f"data shape {run.info.data_shape}, classes {run.info.num_classes}, "
               f"parameters {count_parameters(run.denoiser.net):,}, checkpoint step {run.meta.get('step')}")
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        rows = read_metrics(metrics)
        if rows:
            click.echo("last log: " + json.dumps(rows[-1]))


@main.command()
def solvers() -> None:
    """List the registered solvers with their order and model calls per step."""
    from .solvers import SOLVERS

    click.echo(f"{'name':<20} {'order':>5} {'NFE/step':>8}  {'stochastic':<10} default grid")
    for name, cls in SOLVERS.items():
        s = cls()
        click.echo(f"{name:<20} {s.order:>5} {float(s.nfe_per_step):>8g}  {str(bool(s.stochastic)):<10} {s.default_grid}")
    click.echo("\nAny non-stochastic fixed-step solver also takes --option end=gaussian: a last step exact for "
               "locally Gaussian modes (default grid then gaussian_lambda).")


@main.command()
@click.option("--out", default="runs/demo-digits", show_default=True, help="run folder")
@click.option("--steps", type=int, default=None, help="training steps (default: the digits preset's)")
@click.option("--oracle", is_flag=True, help="instead: sample the exact 2-D oracle (no training)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def demo(out: str, steps: int | None, oracle: bool, quiet: bool) -> None:
    """Train on the embedded digits (~3 min on 2 CPU cores), sample 100 digits fast, plot and score them."""
    if oracle:
        from .demo import oracle_demo

        oracle_demo(out if out != "runs/demo-digits" else "runs/oracle-demo")
        return
    from .demo import digits_demo

    digits_demo(out, steps=steps, progress=not quiet)


@main.command("eval")
@click.argument("run_dir")
@click.option("--metrics", default=None,
              help="comma list of fid,kid,pr,cfd,is,sw,nll,vlb (default: those that apply to the data)")
@click.option("--n", "count", type=int, default=500, show_default=True, help="samples and real items")
@click.option("--solver", default=None, help="solver name (default: the run's)")
@click.option("--nfe", type=int, default=None, help="model evaluations per sample (default: the run's)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True, help="items per likelihood batch")
@click.option("--nll-option", "nll_options", multiple=True, metavar="KEY=VALUE",
              help="ode_log_likelihood setting, e.g. rtol=1e-3, divergence=exact, probes=4")
@click.option("--out", default=None, help="JSON file (default RUN_DIR/eval.json)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def eval_command(run_dir: str, metrics: str | None, count: int, solver: str | None, nfe: int | None, seed: int,
                 batch: int, nll_options: tuple[str, ...], out: str | None, quiet: bool) -> None:
    """Sample a run and score it against its real data: FID/KID/PR, classifier FD/IS, SW, NLL, VLB."""
    from .evaluate import evaluate_run, format_table
    from .metrics import InceptionUnavailableError
    from .train import atomic_write_text

    try:
        ode = _key_values(nll_options, "--nll-option")
        result = evaluate_run(run_dir, metrics, n=count, solver=solver, nfe=nfe, seed=seed, batch=batch,
                              progress=not quiet, nll_options=ode)
    except (ValueError, FileNotFoundError, TypeError, InceptionUnavailableError) as e:
        _fail(e)
    path = Path(out or Path(run_dir) / "eval.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    data = result["data"]
    click.echo(f"{run_dir} (step {result['checkpoint_step']}); real data: {data['n']} items of {data['dataset']} "
               f"{data['source']}" + (f"; samples: {result['sampling']['solver']}, {result['sampling']['nfe']} NFE"
                                      if "sampling" in result else ""))
    click.echo(format_table(result))
    click.echo(f"-> {path}")


if __name__ == "__main__":
    main()
