"""Checkpoints: safetensors weights + a .pt training state, written atomically.

A checkpoint ``<dir>/step-00001000`` is two files:

- ``step-00001000.safetensors``: the model's tensors under ``model.<name>`` and the
  EMA copy's under ``ema.<name>``; metadata holds the step and a JSON ``meta`` dict;
- ``step-00001000.state.pt``: optimiser state, step, data-loader state, RNG states
  and anything else the trainer needs to resume exactly (loaded with ``weights_only``).

Each file is written to a temporary name in the same folder and moved into place
with ``os.replace`` (atomic on POSIX and Windows); ``latest.json`` is updated last,
so an interrupted save never leaves a half-written checkpoint behind as the latest.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = "diffusekit-checkpoint-1"
LATEST = "latest.json"
_STEM = re.compile(r"^step-(\d+)$")


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is loaded into (one-line message)."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    The temporary file is removed if ``write`` fails, so no partial file is ever visible at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def _tensors(prefix: str, module: nn.Module, seen: set[int]) -> dict[str, Tensor]:
    """The module's state dict as contiguous CPU tensors under ``prefix.``.

    safetensors refuses tensors that share memory, so a tensor whose storage was already
    written (tied weights, or the same module saved as model and EMA) or that views part
    of a larger storage is cloned.
    """
    out: dict[str, Tensor] = {}
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[f"{prefix}.{name}"] = t
    return out


def checkpoint_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(weights, state) file paths of a checkpoint given its stem or either file's path."""
    p = Path(stem)
    name = p.name
    for suffix in (".safetensors", ".state.pt"):
        name = name.removesuffix(suffix)
    base = p.with_name(name)
    return base.with_name(name + ".safetensors"), base.with_name(name + ".state.pt")


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    ema: nn.Module | None = None,
    state: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``<directory>/step-<step>.{safetensors,state.pt}`` atomically and point ``latest.json`` at it.

    ``state`` (optimiser state, RNG states, ...) must be loadable with ``torch.load(weights_only=True)``.
    ``keep`` deletes all but the newest ``keep`` checkpoints. Returns the weights path.
    """
    directory = Path(directory)
    stem = f"step-{step:08d}"
    weights_path, state_path = checkpoint_paths(directory / stem)
    seen: set[int] = set()
    tensors = _tensors("model", model, seen)
    if ema is not None:
        tensors.update(_tensors("ema", ema, seen))
    meta_json = json.dumps(dict(meta or {}), sort_keys=True, default=str)
    header = {"format": FORMAT, "step": str(step), "meta": meta_json}
    full_state = {"format": FORMAT, "step": step, **dict(state or {})}
    atomic_write(state_path, lambda tmp: torch.save(full_state, tmp))
    atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=header))
    atomic_write_text(directory / LATEST, json.dumps({"step": step, "checkpoint": weights_path.name}) + "\n")
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
            for f in checkpoint_paths(old):
                if f != weights_path and f.exists():
                    f.unlink()
    return weights_path


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (both files present) in ``directory``, oldest first (weights paths)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.glob("step-*.safetensors"):
        m = _STEM.match(p.name[: -len(".safetensors")])
        if m and checkpoint_paths(p)[1].exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint named by ``latest.json`` (or else the newest complete one), or None."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
        weights, state = checkpoint_paths(directory / name)
        if weights.is_file() and state.is_file():
            return weights
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, meta


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_compatible(path: str | os.PathLike[str], model: nn.Module, tensors: Mapping[str, Tensor], prefix: str) -> None:
    """Raise ``CheckpointMismatchError`` (one line) unless ``tensors[prefix.*]`` matches ``model``'s state dict."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k[len(prefix) + 1 :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected {_preview(unexpected)}")
    if shapes:
        k = shapes[0]
        more = f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"shape mismatch for {k}: checkpoint {list(found[k])} vs model {list(expected[k])}{more}")
    raise CheckpointMismatchError(f"checkpoint {path} does not match this model ({prefix}): " + "; ".join(parts))


def load_weights(
    path: str | os.PathLike[str], model: nn.Module, which: str = "ema"
) -> dict[str, Any]:
    """Load the ``which`` ('ema' or 'model') weights of a checkpoint into ``model``; returns its ``meta``.

    Falls back to 'model' when the checkpoint has no EMA copy. ``path`` may be a run's
    checkpoint folder (the latest checkpoint is used) or a checkpoint file.
    """
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    path = _resolve(path)
    tensors, header = read_tensors(path)
    if which == "ema" and not any(k.startswith("ema.") for k in tensors):
        which = "model"
    check_compatible(path, model, tensors, which)
    _copy_into(model, tensors, which)
    return json.loads(header.get("meta", "{}"))


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, ema: nn.Module | None = None
) -> dict[str, Any]:
    """Load model (and EMA) weights after checking every name and shape; return the saved training state.

    Raises ``CheckpointMismatchError`` with a one-line message naming missing, unexpected and
    mis-shaped tensors. The returned dict holds ``step``, ``meta`` and the saved ``state`` entries.
    """
    path = _resolve(path)
    weights_path, state_path = checkpoint_paths(path)
    tensors, header = read_tensors(weights_path)
    if header.get("format") != FORMAT:
        raise CheckpointMismatchError(f"checkpoint {weights_path} is not a diffusekit checkpoint (format {header.get('format')!r})")
    check_compatible(weights_path, model, tensors, "model")
    has_ema = any(k.startswith("ema.") for k in tensors)
    if ema is not None and has_ema:
        check_compatible(weights_path, ema, tensors, "ema")
    if not state_path.is_file():
        raise FileNotFoundError(f"checkpoint state file not found: {state_path}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    _copy_into(model, tensors, "model")
    if ema is not None:
        _copy_into(ema, tensors, "ema" if has_ema else "model")
    state["meta"] = json.loads(header.get("meta", "{}"))
    return state


def _copy_into(model: nn.Module, tensors: Mapping[str, Tensor], prefix: str) -> None:
    with torch.no_grad():
        for name, target in model.state_dict().items():
            target.copy_(tensors[f"{prefix}.{name}"])


def _resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint weights path from a file, a stem, a checkpoint folder or a run folder."""
    p = Path(path)
    if p.is_dir():
        for d in (p, p / "checkpoints"):
            found = latest_checkpoint(d)
            if found is not None:
                return found
        raise FileNotFoundError(f"no checkpoint found in {p}")
    return checkpoint_paths(p)[0]
