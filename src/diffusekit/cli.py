"""The `diffusekit` command line. Names (schedule, solver, ...) map to classes here and in ``pipeline``.

Every command checks all of its inputs before it writes anything. Errors are one line on
stderr: bad input exits with status 2, a failure while running with 1, and training stopped
by SIGINT / SIGTERM (after writing a checkpoint) with 130 / 143.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .config import MAX_NFE
from .tasks.imputation import SOLVER as IMPUTE_SOLVER


class InputError(click.ClickException):
    """A bad argument, option, config value, file or run folder: exit status 2."""

    exit_code = 2


class _Group(click.Group):
    """Prints every error as one ``Error: ...`` line (click's usage errors included), never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except OSError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group)
@click.version_option(__version__, "--version", prog_name="diffusekit", message="%(prog)s %(version)s")
def main() -> None:
    """diffusekit: train, sample and evaluate diffusion models."""


#: What bad input raises below the command line.
_INPUT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError, NotADirectoryError,
                                               ModuleNotFoundError)


def _refuse(exc: BaseException) -> NoReturn:
    raise InputError(" ".join(str(exc).split()) or type(exc).__name__) from None


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


def _train(action: Any) -> Any:
    """Run a training ``action``: input errors exit 2, a non-finite loss 1, a stop signal 128 + signal."""
    from .train import NonFiniteLossError, TrainingStopped

    try:
        return action()
    except TrainingStopped as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_status)
    except NonFiniteLossError as e:
        raise click.ClickException(str(e)) from None
    except _INPUT_ERRORS as e:
        _refuse(e)


NFE = click.IntRange(1, MAX_NFE)


@main.command()
@click.argument("config")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config value, e.g. optim.lr=1e-3")
@click.option("--out", "out", default=None, help="run folder (default runs/<name>)")
@click.option("--no-resume", is_flag=True, help="refuse to continue a folder that already holds a trained run")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--head", default=None, type=click.Choice(["sn", "npr"]),
              help="instead: train an SN/NPR-DPM variance head on the frozen model of run folder CONFIG")
@click.option("--head-steps", type=click.IntRange(min=1), default=2000, show_default=True, help="steps of --head training")
def train(config: str, overrides: tuple[str, ...], out: str | None, no_resume: bool, quiet: bool, head: str | None,
          head_steps: int) -> None:
    """Train from a preset (toy2d, digits, fashion) or a TOML file; a run folder is continued (or extended).
    Under torchrun, every process trains its shard of each global batch (data.batch_size)."""
    from .config import load_config
    from .pipeline import train_run
    from .train.distributed import distributed_world

    if head is not None:
        from .run_variances import train_run_head

        path = _train(lambda: train_run_head(config, head, steps=head_steps, progress=not quiet))
        click.echo(f"trained a {head} head for {head_steps} steps -> {path}")
        return

    try:
        cfg = load_config(config).with_overrides(list(overrides))
    except _INPUT_ERRORS as e:
        _refuse(e)
    run_dir = Path(out or f"runs/{cfg.name}")
    with distributed_world() as world:
        trainer = _train(lambda: train_run(cfg, run_dir, resume=not no_resume, progress=not quiet, world=world))
    if world.is_main:
        click.echo(f"trained {trainer.step} steps on {world.size} process(es); run folder {run_dir} "
                   f"(loss curve {run_dir / 'loss.png'})")


def _output_path(out: str | None, run_dir: Path, data_shape: tuple[int, ...]) -> Path:
    """Where ``sample`` writes: ``.npy`` for any data, ``.png`` for images (default ``RUN_DIR/grid.png``, else
    ``RUN_DIR/samples.npy``); anything else is refused."""
    images = len(data_shape) == 3 and data_shape[0] in (1, 3)
    path = Path(out) if out is not None else run_dir / ("grid.png" if images else "samples.npy")
    suffix = path.suffix.lower()
    if suffix == ".png" and not images:
        raise ValueError(f"--out {path}: a .png needs images of 1 or 3 channels, this run's data have shape "
                         f"{data_shape}; allowed: a .npy file")
    if suffix not in (".png", ".npy"):
        raise ValueError(f"--out {path}: unknown extension {suffix or '(none)'!r}; allowed: .npy"
                         + (" or .png" if images else ""))
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; allowed: a file name ending in .npy" + (" or .png" if images else ""))
    return path


def _classes(which: str | None, num_classes: int, count: int) -> tuple[Any, list[str] | None]:
    """``--class`` as (cond, row labels of the grid): K -> label K for every sample; ``all`` -> ``count``
    samples of each class in turn (class y in rows y*count to (y+1)*count - 1)."""
    import torch

    if which is None:
        return None, None
    if which == "all":
        return torch.arange(num_classes).repeat_interleave(count), [str(y) for y in range(num_classes)]
    try:
        label = int(which)
    except ValueError:
        label = -1
    if not 0 <= label < num_classes:
        raise ValueError(f"--class must be an integer from 0 to {num_classes - 1} or all (this run has "
                         f"{num_classes} classes), got {which!r}")
    return torch.full((count,), label), None


def _interval(text: str | None) -> tuple[float, float] | None:
    """``--cfg-interval lo,hi`` as two numbers (checked by the guidance itself)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--cfg-interval expects lo,hi (two numbers, sigma/alpha), got {text!r}") from None
    return lo, hi


@main.command()
@click.argument("run_dir")
@click.option("--solver", default=None, help="solver name (see `diffusekit solvers`)")
@click.option("--nfe", type=NFE, default=None, help=f"model evaluations, 1 to {MAX_NFE:,}")
@click.option("--n", "--count", "count", type=click.IntRange(min=1), default=64, show_default=True,
              help="number of samples (per class with --class all); write --count under torchrun")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--grid", default=None, help="step grid: a rule name, or 'paper' (each solver's paper grid); default: the solver's")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="solver option, e.g. order=3")
@click.option("--class", "which", default=None, metavar="K|all",
              help="class-conditional runs: samples of class K, or all: --n of each class, one grid row per class")
@click.option("--cond", "vector", default=None, metavar="V[,V...]",
              help="runs trained with data.condition = vector: the condition vector of every sample")
@click.option("--cfg", "scale", type=click.FloatRange(min=0), default=None,
              help="classifier-free guidance scale w (0 unconditional, 1 conditional, > 1 guided; needs --class)")
@click.option("--cfg-interval", "interval", default=None, metavar="LO,HI",
              help="guide only where LO < sigma/alpha <= HI (conditional elsewhere)")
@click.option("--cfg-rescale", "rescale", type=click.FloatRange(0, 1), default=None,
              help="rescale the guided x0 to the conditional one's std by this fraction phi")
@click.option("--classifier", "classifier", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="classifier guidance with the noise-aware classifier in PATH (default RUN/classifier; see "
                   "train-classifier) of the unconditional model, or with --cfg of the guided one")
@click.option("--energy", default=None, metavar="low-density",
              help="energy guidance: low-density (away from the class-mean features, Sehwag et al. 2022)")
@click.option("--scale", "guide_scale", type=click.FloatRange(min=0), default=None,
              help="scale s of --classifier or --energy guidance (default 1)")
@click.option("--classifier-form", "form", default=None, metavar="score|mean-shift",
              help="--classifier through the score (default, any solver) or mean-shift: the ancestral step's mean "
                   "+ s Sigma grad log p (Dhariwal & Nichol's Algorithm 1; ddpm, the default then, or ddim eta > 0)")
@click.option("--variance", default=None, help="ddpm/ddim reverse variance: analytic, sn, npr, small, large, learned")
@click.option("--trajectory", default=None, help="ddpm/ddim K-step trajectory (K = --nfe): even, quadratic, dp")
@click.option("--threshold", default=None, metavar="clip|dynamic",
              help="x0 estimate kept in the data range at every call: clip to [-1, 1] (Ho et al. 2020) or dynamic "
                   "thresholding (Saharia et al. 2022); for image runs whose samples show speckle")
@click.option("--out", default=None, help="output file: .npy (any data) or .png (images)")
def sample(run_dir: str, solver: str | None, nfe: int | None, count: int, seed: int, grid: str | None,
           options: tuple[str, ...], which: str | None, vector: str | None, scale: float | None, interval: str | None,
           rescale: float | None, classifier: str | None, energy: str | None, guide_scale: float | None,
           form: str | None, variance: str | None, trajectory: str | None, threshold: str | None,
           out: str | None) -> None:
    """Sample from a trained run folder; class-conditional runs by class, with classifier-free, classifier
    or low-density guidance; DDPM/DDIM with an optimal or learned reverse variance on a chosen trajectory.
    Under torchrun, each process samples its share of the seeds (the same samples as one process)."""
    from .train.distributed import distributed_world

    with distributed_world() as world:
        _sample(run_dir, solver, nfe, count, seed, grid, options, which, vector, scale, interval, rescale,
                classifier, energy, guide_scale, form, variance, trajectory, threshold, out, world)


def _sample(run_dir: str, solver: str | None, nfe: int | None, count: int, seed: int, grid: str | None,
            options: tuple[str, ...], which: str | None, vector: str | None, scale: float | None,
            interval: str | None, rescale: float | None, classifier: str | None, energy: str | None,
            guide_scale: float | None, form: str | None, variance: str | None, trajectory: str | None,
            threshold: str | None, out: str | None, world: Any) -> None:
    import numpy as np

    from .files import atomic_write
    from .image_grid import save_image_grid
    from .cli_guidance import guided_from_options, vector_condition
    from .guidance import mean_shift_variance
    from .pipeline import class_count, load_run, lowres_factor, sample_denoiser
    from .sample import grid_rule
    from .solvers import make_solver
    from .solvers.constraints import THRESHOLDING

    try:
        opts = _key_values(options, "--option")
        kept_in_range = [] if threshold is None else [THRESHOLDING.get(threshold)()]
        run = load_run(run_dir)
        if lowres_factor(run.config) is not None:
            raise ValueError(f"{run_dir} is an SR3 super-resolution run; allowed: diffusekit superres {run_dir} INPUT")
        run.denoiser.to(world.device)
        ancestral = variance is not None or trajectory is not None
        if ancestral and grid is not None:
            raise ValueError("--grid and --trajectory exclude each other; allowed: one of them")
        ddpm_default = ancestral or form == "mean-shift"
        name = solver or ("ddpm" if ddpm_default else run.config.sampling.solver)
        grid = grid if grid is not None or solver is not None or ddpm_default else run.config.sampling.grid  # the run's own
        grid_rule(made := make_solver(name, **opts), grid)
        if form == "mean-shift":
            mean_shift_variance(made)  # refuses a non-ancestral solver before any work
        cond, rows = None, None
        if which is not None:
            num_classes = run.info.num_classes if classifier is not None and energy is None else None
            cond, rows = _classes(which, num_classes or class_count(run, "--class"), count)
        if vector is not None:
            if which is not None:
                raise ValueError("give --class (class labels) or --cond (a condition vector), not both")
            cond = vector_condition(run, vector, count)
        denoiser, constraints, note = guided_from_options(
            run, run_dir, which=which if vector is None else vector, cfg=scale, interval=_interval(interval),
            rescale=rescale, classifier=classifier, energy=energy, scale=guide_scale, form=form)
        constraints = [*kept_in_range, *constraints]
        path = _output_path(out, Path(run_dir), run.info.data_shape)
    except _INPUT_ERRORS as e:
        _refuse(e)
    total = count * len(rows) if rows else count
    try:
        if ancestral:
            from .run_variances import sample_with_variance

            sol = sample_with_variance(run, run_dir, name, variance, trajectory,
                                       nfe or run.config.sampling.nfe, total, seed=seed,
                                       cond=None if cond is None else cond.to(world.device), denoiser=denoiser,
                                       constraints=constraints, world=world, **opts)
        else:
            sol = sample_denoiser(denoiser, run.info, name, nfe or run.config.sampling.nfe, total, seed=seed,
                                  grid=grid, cond=None if cond is None else cond.to(world.device), progress=True,
                                  world=world, constraints=constraints, **opts)
    except _INPUT_ERRORS as e:
        _refuse(e)
    if not world.is_main:
        return
    x = sol.x.cpu()
    if path.suffix.lower() == ".png":
        save_image_grid(x, path, nrow=count if rows else int(count**0.5) or 1, scale=4, row_labels=rows)
    else:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, x.numpy())

        atomic_write(path, write)
    guided = (f", class {which}" if which is not None else f", condition {vector}" if vector is not None else "") + (
        f", {note}" if note else "")
    shared = f" on {world.size} processes" if world.distributed else ""
    click.echo(f"{total} samples with {name} ({sol.nfe} NFE{guided}){shared} -> {path}")


@main.command("train-classifier")
@click.argument("run_dir")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="training steps")
@click.option("--width", type=click.IntRange(min=1), default=64, show_default=True, help="channels / hidden units")
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True, help="residual blocks")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="batch size (default: the run's)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--time", default=None, help="training time distribution (default: the run's diffusion.time_sampling)")
@click.option("--out", default=None, help="classifier folder (default RUN_DIR/classifier)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_classifier(run_dir: str, steps: int, width: int, depth: int, batch: int | None, lr: float,
                     time: str | None, out: str | None, quiet: bool) -> None:
    """Train a noise-aware classifier p(y | x_t, t) on a run's labelled data and schedule (for --classifier)."""
    from .cli_guidance import train_classifier_command

    line = _train(lambda: train_classifier_command(run_dir, steps=steps, width=width, depth=depth, batch=batch,
                                                   lr=lr, time=time, out=out, quiet=quiet))
    click.echo(line)


@main.command()
@click.argument("run_dir")
def info(run_dir: str) -> None:
    """Show a run's config, data shape, parameters and training progress."""
    from .models import count_parameters
    from .pipeline import load_run
    from .train import read_metrics

    try:
        run = load_run(run_dir)
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    except _INPUT_ERRORS as e:
        _refuse(e)
    click.echo(run.config.to_toml())
    click.echo(f"data shape {run.info.data_shape}, classes {run.info.num_classes}, "
               f"parameters {count_parameters(run.denoiser.net):,}, checkpoint step {run.meta.get('step')}, "
               f"trained on {run.meta.get('world_size', 1)} process(es)")
    if rows:
        click.echo("last log: " + json.dumps(rows[-1]))


@main.command()
def solvers() -> None:
    """List the registered solvers with their order and model calls per step."""
    from .solvers import DEFAULT_SOLVER, SOLVERS

    click.echo(f"{'name':<20} {'order':>5} {'NFE/step':>8}  {'stochastic':<10} {'per-sample t':<12} {'default grid':<16} paper grid")
    for name, cls in SOLVERS.items():
        s = cls()
        mark = "  (the default)" if name == DEFAULT_SOLVER else ""
        click.echo(f"{name:<20} {s.order:>5} {float(s.nfe_per_step):>8g}  {str(bool(s.stochastic)):<10} "
                   f"{str(bool(s.per_sample_times)):<12} {s.default_grid:<16} {s.paper_grid}{mark}")
    click.echo("\nAny non-stochastic fixed-step solver also takes --option end=gaussian: a last step exact for "
               "locally Gaussian modes (default grid then gaussian_lambda).")


@main.command()
@click.option("--out", default="runs/demo-digits", show_default=True, help="run folder")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="training steps (default: the digits preset's)")
@click.option("--oracle", is_flag=True, help="instead: sample the exact 2-D oracle (no training)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def demo(out: str, steps: int | None, oracle: bool, quiet: bool) -> None:
    """Train on the embedded digits (~3 min on 2 CPU cores), sample 100 digits fast, plot and score them."""
    if oracle:
        from .demo import oracle_demo

        target = Path(out if out != "runs/demo-digits" else "runs/oracle-demo")
        if target.exists() and not target.is_dir():
            _refuse(NotADirectoryError(f"--out {target} is a file; allowed: a folder"))
        oracle_demo(target)
        return
    from .demo import digits_demo

    _train(lambda: digits_demo(out, steps=steps, progress=not quiet))


@main.command()
@click.argument("run_dir")
@click.option("--method", required=True, help="progressive, consistency, consistency-training or reflow")
@click.option("--to", "to", type=click.IntRange(min=1), default=1, show_default=True, help="sampling steps of the result")
@click.option("--out", default=None, help="run folder of the result (default RUN_DIR-METHOD-K)")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="training steps (per stage / per reflow round)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="learning rate")
@click.option("--from", "start", type=click.IntRange(min=2), default=None, help="progressive: the first teacher's DDIM steps")
@click.option("--solver", default=None, help="consistency: the teacher's ODE solver step (default heun)")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="reflow: rounds (default 1)")
@click.option("--couplings", type=click.IntRange(min=1), default=None, help="reflow: couplings per round (default 4000)")
@click.option("--one-step", is_flag=True, help="reflow: distil the last flow to one step")
@click.option("--quiet", is_flag=True, help="no progress bars")
def distill(run_dir: str, method: str, to: int, out: str | None, quiet: bool, **options: Any) -> None:
    """Few-step students of a trained run (progressive distillation, consistency models, reflow); each result
    is an ordinary run folder that samples with its own solver and step count."""
    from .distill.command import prepare_distill

    try:
        _, target, action = prepare_distill(run_dir, method, out, to, **options)
    except _INPUT_ERRORS as e:
        _refuse(e)
    _train(lambda: action(not quiet))
    click.echo(f"{method}: run folder {target} (samples with {to} step{'s' if to > 1 else ''}; "
               f"`diffusekit sample {target}`)")


@main.command("eval")
@click.argument("run_dir")
@click.option("--metrics", default=None,
              help="comma list of fid,kid,pr,cfd,is,sw,nll,vlb (default: those that apply to the data)")
@click.option("--n", "--count", "count", type=click.IntRange(min=1), default=500, show_default=True,
              help="samples and real items (write --count under torchrun)")
@click.option("--solver", default=None, help="solver name (default: the run's)")
@click.option("--nfe", type=NFE, default=None, help=f"model evaluations per sample, 1 to {MAX_NFE:,} (default: the run's)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="items per likelihood batch")
@click.option("--nll-option", "nll_options", multiple=True, metavar="KEY=VALUE",
              help="ode_log_likelihood setting, e.g. rtol=1e-3, divergence=exact, probes=4")
@click.option("--vlb", "vlb_only", is_flag=True,
              help="instead: only the bound (vlb metric) into RUN_DIR/vlb.json; here --nfe K alone means --trajectory even")
@click.option("--variance", default=None, help="the bound's ddpm reverse variance: analytic, sn, npr, small, large, "
              "learned (default: learned on a run with a variance head, else small)")
@click.option("--trajectory", default=None, help="the bound on a K = --nfe step trajectory: even, quadratic, dp "
              "(default: every training step)")
@click.option("--out", default=None, help="JSON file (default RUN_DIR/eval.json)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def eval_command(run_dir: str, metrics: str | None, count: int, solver: str | None, nfe: int | None, seed: int,
                 batch: int, nll_options: tuple[str, ...], vlb_only: bool, variance: str | None,
                 trajectory: str | None, out: str | None, quiet: bool) -> None:
    """Sample a run and score it against its real data: FID/KID/PR, classifier FD/IS, SW, NLL, VLB (the bound of
    the ddpm sampler with --variance on --trajectory; by default the run's learned variance, if it has a variance
    head, else small, on every training step). Under torchrun, sampling and feature extraction are shared among the processes."""
    if vlb_only:
        from .evaluate import vlb_command

        try:
            click.echo(vlb_command(run_dir, variance, trajectory, nfe, count, seed, batch, out, progress=not quiet))
        except _INPUT_ERRORS as e:
            _refuse(e)
        return
    from .evaluate import evaluate_run, format_table
    from .files import atomic_write_text
    from .metrics import InceptionUnavailableError
    from .solvers import make_solver
    from .train.distributed import distributed_world

    path = Path(out or Path(run_dir) / "eval.json")
    with distributed_world() as world:
        try:
            if path.suffix.lower() != ".json" or path.is_dir():
                raise ValueError(f"--out {path}: allowed a file name ending in .json")
            ode = _key_values(nll_options, "--nll-option")
            if solver is not None:
                make_solver(solver)
            result = evaluate_run(run_dir, metrics, n=count, solver=solver, nfe=nfe, seed=seed, batch=batch,
                                  progress=not quiet, nll_options=ode, world=world, variance=variance,
                                  trajectory=trajectory)
        except (*_INPUT_ERRORS, InceptionUnavailableError) as e:
            _refuse(e)
    if not world.is_main:
        return
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    data = result["data"]
    click.echo(f"{run_dir} (step {result['checkpoint_step']}); real data: {data['n']} items of {data['dataset']} "
               f"{data['source']}" + (f"; samples: {result['sampling']['solver']}, {result['sampling']['nfe']} NFE"
                                      if "sampling" in result else ""))
    click.echo(format_table(result))
    click.echo(f"-> {path}")


@main.command()
@click.argument("run_dir")
@click.argument("input_path", metavar="INPUT")
@click.option("--solver", default="ddpm", show_default=True, help="solver name (stochastic ones suit replacement)")
@click.option("--nfe", type=NFE, default=100, show_default=True, help="model evaluations of the descent")
@click.option("--resamples", type=click.IntRange(min=1), default=1, show_default=True,
              help="RePaint resamplings r (1: plain replacement)")
@click.option("--jump", "jump_length", type=click.IntRange(min=1), default=10, show_default=True, help="RePaint jump length")
@click.option("--weights", type=click.Choice(["mean", "rec601"]), default="mean", show_default=True,
              help="luminance weights of the greyscale measurement")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", default=None, help="output folder (default RUN_DIR/colorize)")
def colorize(run_dir: str, input_path: str, solver: str, nfe: int, resamples: int, jump_length: int, weights: str,
             seed: int, out: str | None) -> None:
    """Colour greyscale images (a file, folder or .npy/.npz) with an RGB run; writes colorized.npz and grid.png."""
    from .colorize import colorize_command

    _task(lambda: colorize_command(run_dir, input_path, out, solver=solver, nfe=nfe, resamples=resamples,
                                   jump_length=jump_length, weights=weights, seed=seed))


@main.command("train-imputer")
@click.argument("run_dir")
@click.option("--data", default="macrodata", show_default=True, help="macrodata, or a CSV of numeric columns (no blanks)")
@click.option("--window", type=click.IntRange(min=2), default=24, show_default=True, help="window length (rows)")
@click.option("--train-rows", type=click.IntRange(min=2), default=None, help="train on the first N rows only")
@click.option("--steps", type=click.IntRange(min=1), default=800, show_default=True,
              help="training steps (800: calibrated better on macrodata than 3,000, benchmarks/RESULTS.md)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_imputer_command(run_dir: str, data: str, window: int, train_rows: int | None, steps: int, seed: int,
                          quiet: bool) -> None:
    """Train a CSDI-style imputation model on a table of series (for `diffusekit impute`)."""
    from .impute import train_imputer

    trainer = _train(lambda: train_imputer(run_dir, data, window=window, train_rows=train_rows, steps=steps, seed=seed,
                                           progress=not quiet))
    click.echo(f"trained {trainer.step} steps; imputation run folder {run_dir}")


@main.command()
@click.argument("run_dir")
@click.argument("input_path", metavar="INPUT.csv")
@click.option("--samples", type=click.IntRange(min=2), default=100, show_default=True, help="draws per cell")
@click.option("--solver", default=IMPUTE_SOLVER, show_default=True,
              help="solver name (DDPM draws too narrow intervals, benchmarks/RESULTS.md)")
@click.option("--nfe", type=NFE, default=100, show_default=True, help="model evaluations")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", default=None, help="output CSV (default INPUT-imputed.csv)")
def impute(run_dir: str, input_path: str, samples: int, solver: str, nfe: int, seed: int, out: str | None) -> None:
    """Impute the blank cells of a CSV (blank rows at the end: a forecast); writes medians and quantile columns."""
    from .impute import impute_command

    _task(lambda: impute_command(run_dir, input_path, out, samples=samples, solver=solver, nfe=nfe, seed=seed))


# ---- inverse problems and editing (bodies in diffusekit.tasks.commands) -------------------------
def _task(action: Any) -> None:
    """Run a command body that returns its output line; input errors exit 2 with one line."""
    try:
        message = action()
    except _INPUT_ERRORS as e:
        _refuse(e)
    click.echo(message)


_RESTORE_METHODS = "pigdm, ddnm, dps, replacement or repaint"


def _task_options(method: str, steps: int) -> Any:
    def wrap(f: Any) -> Any:
        for opt in reversed([
            click.argument("run_dir"),
            click.argument("input_path", metavar="INPUT"),
            click.option("--method", default=method, show_default=True, help=f"{_RESTORE_METHODS}"),
            click.option("--steps", type=click.IntRange(1, MAX_NFE), default=steps, show_default=True,
                         help="DDPM steps on a log-SNR-uniform grid"),
            click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
            click.option("--out", default=None, help="result .npy (default RUN_DIR/<command>.npy); grid beside it"),
        ]):
            f = opt(f)
        return f
    return wrap


@main.command()
@_task_options("repaint", 50)
@click.option("--mask", default="bottom", show_default=True,
              help="hidden part: bottom, right, random:P (P = kept fraction) or box:TOP,LEFT,HEIGHT,WIDTH")
@click.option("--jump", "jump_length", type=click.IntRange(min=1), default=5, show_default=True, help="RePaint jump length")
@click.option("--resamples", type=click.IntRange(min=1), default=5, show_default=True, help="RePaint resamplings")
def inpaint(run_dir: str, input_path: str, method: str, steps: int, seed: int, out: str | None, mask: str,
            jump_length: int, resamples: int) -> None:
    """Inpaint images (PNG, folder, .npy, .npz): hide --mask, fill it from the run's model."""
    from .tasks.commands import inpaint as body

    _task(lambda: body(run_dir, input_path, out, mask=mask, method=method, steps=steps, jump_length=jump_length,
                       resamples=resamples, seed=seed))


@main.command()
@_task_options("pigdm", 50)
@click.option("--factor", type=click.IntRange(min=2), default=None, help="upsampling factor (default 2, or an SR3 run's)")
def superres(run_dir: str, input_path: str, method: str, steps: int, seed: int, out: str | None,
             factor: int | None) -> None:
    """Super-resolve low-resolution images (the run's size / --factor): an SR3 run (data.condition = "lowres:K")
    samples its conditional model with the run's own solver and NFE (--method and --steps do not apply); any other
    run solves the average-pooling inverse problem with --method."""
    from .tasks.commands import superres as body

    _task(lambda: body(run_dir, input_path, out, factor=factor, method=method, steps=steps, seed=seed))


@main.command()
@_task_options("pigdm", 50)
@click.option("--blur", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Gaussian blur std in pixels")
@click.option("--noise", type=float, default=0.0, show_default=True, help="measurement noise std ([-1, 1] units)")
def deblur(run_dir: str, input_path: str, method: str, steps: int, seed: int, out: str | None, blur: float,
           noise: float) -> None:
    """Deblur images blurred by a Gaussian of --blur pixels (circular boundary)."""
    from .tasks.commands import deblur as body

    _task(lambda: body(run_dir, input_path, out, blur=blur, noise=noise, method=method, steps=steps, seed=seed))


@main.command("sdedit")
@click.argument("run_dir")
@click.argument("input_path", metavar="INPUT")
@click.option("--t0", type=float, default=None, help="edit strength as the schedule's time (default: log-SNR 0)")
@click.option("--solver", default=None, help="solver name (default: the run's)")
@click.option("--nfe", type=NFE, default=None, help="model evaluations (default: the run's)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", default=None, help="result .npy (default RUN_DIR/sdedit.npy); grid beside it")
def sdedit_command(run_dir: str, input_path: str, t0: float | None, solver: str | None, nfe: int | None, seed: int,
                   out: str | None) -> None:
    """SDEdit: noise images to --t0 and denoise them (image-to-image; larger t0 = more realism, less faithful)."""
    from .tasks.commands import edit

    _task(lambda: edit(run_dir, input_path, out, t0=t0, solver=solver, nfe=nfe, seed=seed))


if __name__ == "__main__":
    main()
