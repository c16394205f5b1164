"""The guidance parts of the command line: ``diffusekit train-classifier`` and the guided denoiser
of ``diffusekit sample`` (``--cfg``, ``--classifier``, ``--energy``); ``cli.py`` only registers them.

Every function here raises ``ValueError`` / ``FileNotFoundError`` naming the bad option and what is
allowed; ``cli.py`` turns those into one ``Error:`` line with exit status 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .denoiser import DenoiserLike, device_of

#: What ``--energy`` accepts.
ENERGIES = ("low-density",)

#: What ``--classifier-form`` accepts: through the score (any solver; Dhariwal & Nichol 2021, Algorithm 2) or the
#: ancestral step's mean shifted by s Sigma grad log p (ddpm, ddim with eta > 0; their Algorithm 1).
CLASSIFIER_FORMS = ("score", "mean-shift")


def train_classifier_command(run_dir: str, *, steps: int, width: int, depth: int, batch: int | None, lr: float,
                             time: str | None, out: str | None, quiet: bool) -> str:
    """Train the noise-aware classifier of a run; returns the line to print."""
    import torch

    from .train.classifier import accuracy_at, train_classifier

    model, trainer, folder = train_classifier(run_dir, steps=steps, width=width, depth=depth, batch_size=batch,
                                              lr=lr, time=time, out=out, progress=not quiet)
    x, y = trainer.data.data, trainer.data.labels  # the classifier's training data (its ArrayLoader's), not reloaded
    sch = model.schedule
    clean = accuracy_at(model, x, y, sch.t_min)
    noisy = accuracy_at(model, x, y, float(sch.t_of_log_snr(torch.tensor(0.0, dtype=torch.float64))))
    return (f"trained the classifier {trainer.step} steps -> {folder}; training-data accuracy {clean:.3f} clean, "
            f"{noisy:.3f} at sigma/alpha = 1")


def vector_condition(run: Any, text: str, count: int) -> Any:
    """``--cond v1,v2,...`` as a (count, cond_dim) float tensor, for a run trained with data.condition = vector."""
    import torch

    dim = run.info.cond_dim
    if run.config.data.condition != "vector" or dim is None:
        raise ValueError("--cond needs a run trained with data.condition = vector; this run has no condition vectors")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != dim or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--cond expects {dim} finite number(s) separated by commas (this run's condition size), "
                         f"got {text!r}")
    return torch.tensor(values).expand(count, dim)


def guided_from_options(run: Any, run_dir: str, *, which: str | None, cfg: float | None,
                        interval: tuple[float, float] | None, rescale: float | None, classifier: str | None,
                        energy: str | None, scale: float | None,
                        form: str | None = None) -> tuple[DenoiserLike, list[Any], str]:
    """The denoiser ``diffusekit sample`` runs, the loop constraints it needs, and a note on its guidance
    for the output line. ``which``: the ``--class`` (or ``--cond``) the samples are conditioned on, None for none.

    ``--cfg w`` (classifier-free); ``--classifier [PATH] --scale s`` (classifier guidance of the
    unconditional model, or with ``--cfg`` of the CFG-guided conditional one; ``--classifier-form mean-shift``:
    Algorithm 1's mean shift of an ancestral solver, the guide then also a constraint); ``--energy low-density
    --scale s`` (the conditional model pushed away from the class-mean features of the classifier;
    ``--classifier PATH`` then only says where that classifier is). PATH defaults to ``RUN/classifier``.
    """
    from .pipeline import class_count, classifier_guided_denoiser, guided_denoiser, low_density_denoiser
    from .train.classifier import CLASSIFIER_DIR, load_classifier

    if cfg is None and (interval is not None or rescale is not None):
        raise ValueError(f"{'--cfg-interval' if interval is not None else '--cfg-rescale'} needs --cfg")
    if energy is not None and energy not in ENERGIES:
        raise ValueError(f"--energy must be one of {', '.join(ENERGIES)}, got {energy!r}")
    if form is not None and form not in CLASSIFIER_FORMS:
        raise ValueError(f"--classifier-form must be one of {', '.join(CLASSIFIER_FORMS)}, got {form!r}")
    if form is not None and (classifier is None or energy is not None):
        raise ValueError("--classifier-form goes with --classifier guidance (not --energy); allowed: "
                         "--classifier [PATH] --classifier-form " + "|".join(CLASSIFIER_FORMS))
    guided = classifier is not None or energy is not None
    if scale is not None and not guided:
        raise ValueError("--scale needs --classifier or --energy (the guidance it scales)")
    vector = run.config.data.condition == "vector"
    if cfg is not None and not vector:
        class_count(run, "--cfg")
    if (cfg is not None or guided) and which is None:
        option = "--cfg" if cfg is not None else "--classifier" if classifier is not None else "--energy"
        raise ValueError(f"{option} needs --class (the class to guide towards)" + (" or --cond" if vector else ""))
    s = 1.0 if scale is None else scale
    notes = []
    if cfg is not None:
        notes.append(f"CFG w={cfg:g}")
    if not guided:
        return (run.denoiser if cfg is None else
                guided_denoiser(run, cfg, interval=interval, rescale=rescale or 0.0)), [], ", ".join(notes)
    if interval is not None or rescale:
        raise ValueError("--cfg-interval and --cfg-rescale go with plain --cfg, not with --classifier or --energy")
    path = Path(classifier) if classifier else Path(run_dir) / CLASSIFIER_DIR
    model = load_classifier(path, run.denoiser.schedule).to(device_of(run.denoiser))
    if model.num_classes != (run.info.num_classes or model.num_classes) or model.net.data_shape != run.info.data_shape:
        raise ValueError(f"the classifier in {path} was trained on {model.num_classes} classes of shape "
                         f"{model.net.data_shape}, this run has {run.info.num_classes} of {run.info.data_shape}")
    if energy == "low-density":
        notes.append(f"low-density s={s:g}")
        return low_density_denoiser(run, model, s, cfg=1.0 if cfg is None else cfg), [], ", ".join(notes)
    mean_shift = form == "mean-shift"
    notes.append(f"classifier s={s:g}" + (" (mean shift, Algorithm 1)" if mean_shift else ""))
    guide = classifier_guided_denoiser(run, model, s, cfg=cfg, mean_shift=mean_shift)
    return guide, [guide] if mean_shift else [], ", ".join(notes)
