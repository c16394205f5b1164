"""Run configurations: frozen dataclasses, TOML on disk, named presets, ``key=value`` overrides.

Names inside a config (schedule, parameterization, weighting, solver, model
preset) stay strings here; ``pipeline`` maps them to classes at the edge.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .tuned import DEFAULT_NFE, DEFAULT_SOLVER


@dataclass(frozen=True)
class DataConfig:
    """Which data set and how to batch it (``name``: digits, fashion, mnist5k, a toy, a folder or .npy/.npz);
    ``labels``: feed the data's class labels to the network (a class-conditional model); ``condition``:
    ``vector`` feeds the data's condition vectors instead (e.g. ``shifted_mixture``; MLP only); ``lowres:K``
    trains an SR3 super-resolution model on each image's K x K average-pooled copy, upsampled back (Saharia
    et al. 2022). ``batch_size`` is the global batch of one optimiser step, whatever the number of processes
    and ``optim.accumulate``."""

    name: str = "digits"
    labels: bool = False
    batch_size: int = 128
    flip: bool = False
    image_size: int | None = None
    channels: int | None = None
    num_samples: int = 20_000  # toy data only
    condition: str = "none"


@dataclass(frozen=True)
class ModelConfig:
    """Network family (``unet`` or ``mlp``) and size preset (tiny/small/base); ``learn_variance``: a
    reverse-variance head (Nichol & Dhariwal 2021, eq. 15), trained by ``diffusion.loss`` hybrid or vlb."""

    kind: str = "unet"
    preset: str = "tiny"
    learn_variance: bool = False


@dataclass(frozen=True)
class DiffusionConfig:
    """The process and the loss: schedule, parameterization, p(t) and w(lambda), chosen independently.

    ``p_uncond``: with ``data.labels``, the probability that a training label is replaced by the null
    label, so one network is conditional and unconditional (Ho & Salimans 2022, sec. 3.2, joint training).
    ``loss``: ``simple`` (the DSM loss with ``weighting``), ``hybrid`` (L_simple + ``vlb_weight`` L_vlb,
    Nichol & Dhariwal 2021, eq. 16) or ``vlb``; the last two need a discrete schedule and
    ``model.learn_variance``, and sample t uniformly over its steps or by ``importance`` (eq. 17).
    """

    schedule: str = "edm"
    parameterization: str = "edm"
    time_sampling: str = "lognormal"
    weighting: str = "edm"
    p_uncond: float = 0.1
    loss: str = "simple"
    vlb_weight: float = 0.001


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, warm-up, learning-rate schedule (``constant`` or ``cosine`` decay to 0 at the last
    step), clipping, EMA, gradient accumulation (``accumulate`` micro-batches per step) and the
    network's ``precision``: fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast with gradient scaling, GPU)."""

    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    ema_half_life: float = 200.0
    accumulate: int = 1
    precision: str = "fp32"


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults for sampling from a trained run (``diffusekit sample`` can override them)."""

    solver: str = DEFAULT_SOLVER  # the library's default ODE sampler (diffusekit.tuned, benchmarks/RESULTS.md)
    nfe: int = DEFAULT_NFE
    grid: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved as ``config.toml`` in the run folder."""

    name: str = "digits"
    steps: int = 1000
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    # ---- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A nested dict without None values (TOML has no null)."""
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build and :func:`check_config` a config from nested dicts (older keys translated, see :func:`_upgrade`)."""
        return check_config(_build(cls, _upgrade(d), "config"))

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8", errors="replace"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p} is not valid TOML ({e}); allowed: key = value lines and [section] headers") from None
        return cls.from_dict(d)

    def changed_fields(self, other: "RunConfig") -> list[tuple[str, Any, Any]]:
        """(dotted key, value here, value in ``other``) for every setting that differs."""
        a, b = _flatten(dataclasses.asdict(self)), _flatten(dataclasses.asdict(other))
        return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> "RunConfig":
        """Apply ``section.key=value`` assignments (values parsed as TOML literals, else strings)."""
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"--set expects key=value, got {item!r}")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            target = d
            for p in parts[:-1]:
                if not isinstance(target.get(p, {}), dict):
                    raise ValueError(f"{key!r}: {p!r} is not a section")
                target = target.setdefault(p, {})
            target[parts[-1]] = parse_value(raw.strip())
        return RunConfig.from_dict(d)


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """Translate the keys of older configs: ``optim.bf16`` became ``optim.precision`` ("bf16" or "fp32");
    ``model.class_conditional`` became ``data.labels`` and ``diffusion.label_dropout`` ``diffusion.p_uncond``
    (dropped when it had no effect)."""
    optim = d.get("optim")
    if isinstance(optim, dict) and "bf16" in optim and "precision" not in optim:
        optim = dict(optim)
        bf16 = optim.pop("bf16")
        optim["precision"] = "bf16" if bf16 is True else "fp32" if bf16 is False else bf16
        d = {**d, "optim": optim}
    model, diffusion = d.get("model"), d.get("diffusion")
    if not (isinstance(model, dict) and "class_conditional" in model) and not (
            isinstance(diffusion, dict) and "label_dropout" in diffusion):
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    labels = d.get("model", {}).pop("class_conditional", False)
    dropout = d.get("diffusion", {}).pop("label_dropout", None)
    if labels:
        d.setdefault("data", {})["labels"] = labels
        if dropout is not None:
            d["diffusion"]["p_uncond"] = dropout
    return d


def parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


#: The most model calls ``sample`` / ``eval`` / ``sampling.nfe`` accept.
MAX_NFE = 10_000


def _integer(lo: int, hi: int | None = None, none: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if v is None:
            return none
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)

    text = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi:,}"
    return ok, text + (" (or left out)" if none else "")


def _number(lo: float, hi: float = math.inf, lo_open: bool = True, hi_open: bool = True) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    text = f"a number {'>' if lo_open else '>='} {lo:g}" + (f" and {'<' if hi_open else '<='} {hi:g}" if hi < math.inf else "")
    return ok, text


def _one_of(*allowed: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in allowed), "one of " + ", ".join(allowed)


_FLAG: tuple[Callable[[Any], bool], str] = (lambda v: isinstance(v, bool)), "true or false"


def _name(none: bool = False) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: (v is None and none) or (isinstance(v, str) and v.strip() != "")), "a name" + (" (or left out)" if none else "")


#: What each setting allows; names (schedule, solver, ...) are checked against their registries in ``pipeline``.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": _name(), "steps": _integer(1), "seed": _integer(0), "log_every": _integer(1),
    "checkpoint_every": _integer(1), "keep_checkpoints": _integer(1), "sample_every": _integer(1, none=True),
    "data.name": _name(), "data.labels": _FLAG, "data.batch_size": _integer(1), "data.flip": _FLAG,
    "data.image_size": _integer(1, none=True), "data.channels": (lambda v: v in (None, 1, 3) and not isinstance(v, bool),
                                                                 "1 or 3 (or left out)"),
    "data.num_samples": _integer(1),
    "data.condition": ((lambda v: v in ("none", "vector") or (isinstance(v, str) and v.startswith("lowres:")
                                                              and v[7:].isdigit() and int(v[7:]) >= 2)),
                       "none, vector or lowres:K with an integer factor K >= 2"),
    "model.kind": _one_of("unet", "mlp"), "model.preset": _name(), "model.learn_variance": _FLAG,
    "diffusion.schedule": _name(), "diffusion.parameterization": _name(), "diffusion.time_sampling": _name(),
    "diffusion.weighting": _name(), "diffusion.p_uncond": _number(0.0, 1.0, lo_open=False),
    "diffusion.loss": _one_of("simple", "hybrid", "vlb"), "diffusion.vlb_weight": _number(0.0, lo_open=False),
    "optim.lr": _number(0.0), "optim.weight_decay": _number(0.0, lo_open=False), "optim.warmup_steps": _integer(0),
    "optim.lr_schedule": _one_of("constant", "cosine"), "optim.grad_clip": _number(0.0),
    "optim.ema_half_life": _number(0.0), "optim.accumulate": _integer(1),
    "optim.precision": _one_of("fp32", "bf16", "fp16"),
    "sampling.solver": _name(), "sampling.nfe": _integer(1, MAX_NFE), "sampling.grid": _name(none=True),
}


def check_config(cfg: RunConfig) -> RunConfig:
    """Raise ``ValueError`` naming the first setting of the wrong type or out of range, and what is allowed."""
    for key, value in _flatten(dataclasses.asdict(cfg)).items():
        ok, allowed = RULES[key]
        if not ok(value):
            raise ValueError(f"{key} must be {allowed}, got {value!r}")
    return cfg


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a table, got {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} in {where}; allowed: {', '.join(known)}")
    kwargs = {}
    for name, value in d.items():
        sub = _nested_type(cls, name)
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub is not None else value
    return cls(**kwargs)


def _nested_type(cls: type, name: str) -> type | None:
    default = {f.name: f for f in fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        probe = default.default_factory()  # type: ignore[misc]
        return type(probe) if is_dataclass(probe) else None
    return None


PRESETS: dict[str, RunConfig] = {
    "toy2d": RunConfig(
        name="toy2d",
        steps=6000,  # 3,000 left the default sampler at 94.7-95.0% near a mode, 6,000 gives 96.1-96.2% (RESULTS.md)
        data=DataConfig(name="mixture", batch_size=512),
        model=ModelConfig(kind="mlp", preset="tiny"),
        optim=OptimConfig(lr=2e-3, warmup_steps=100, ema_half_life=300.0),
    ),
    "digits": RunConfig(  # ~3 min on 2 CPU cores; batch 64 x 2,000 beat 128 x 1,000 (benchmarks/RESULTS.md)
        name="digits", steps=2000, data=DataConfig(batch_size=64), optim=OptimConfig(lr_schedule="cosine")
    ),
    "fashion": RunConfig(
        name="fashion",
        steps=30_000,
        checkpoint_every=1000,
        data=DataConfig(name="fashion", batch_size=64),
        model=ModelConfig(kind="unet", preset="small"),
        optim=OptimConfig(lr=5e-4, warmup_steps=500, ema_half_life=2000.0),
    ),
    "rectified": RunConfig(  # rectified flow (Liu et al. 2022): linear path, velocity model; reflow with `distill`
        name="rectified", steps=2000, data=DataConfig(batch_size=64),
        diffusion=DiffusionConfig(schedule="flow", parameterization="velocity", time_sampling="uniform",
                                  weighting="velocity"),
        optim=OptimConfig(lr_schedule="cosine"),
    ),
}


def load_config(name_or_path: str) -> RunConfig:
    """A preset by name or a TOML file by path; unknown names list the presets."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return RunConfig.from_toml(p)
    raise ValueError(f"unknown preset {name_or_path!r}; allowed: {', '.join(PRESETS)} or a path to a .toml file")


__all__ = [
    "DataConfig", "DiffusionConfig", "MAX_NFE", "ModelConfig", "OptimConfig", "PRESETS", "RULES", "RunConfig",
    "SamplingConfig", "check_config", "load_config",
]
