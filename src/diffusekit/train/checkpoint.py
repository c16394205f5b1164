"""Checkpoints: safetensors weights + a .pt training state, written atomically, verified on load.

A checkpoint ``<dir>/step-00001000`` is two files:

- ``step-00001000.safetensors``: the model's tensors under ``model.<name>`` and the
  EMA copy's under ``ema.<name>``; metadata holds the step, a JSON ``meta`` dict and
  two SHA-256 checksums: of the tensors (names, dtypes, shapes, bytes) and of the state file;
- ``step-00001000.state.pt``: optimiser state, step, data-loader state, RNG states
  and anything else the trainer needs to resume exactly (loaded with ``weights_only``,
  never unpickling arbitrary objects).

The state file is written first, the weights file (holding its checksum) second, each
to a temporary name moved into place with ``os.replace``; so a checkpoint is complete
exactly when both files exist and both checksums match. The newest checkpoint that
passes is the one to resume or sample from (:func:`newest_checkpoint`); the others are
reported with the reason they were skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..files import atomic_write

FORMAT = "diffusekit-checkpoint-2"
#: Earlier formats still loaded (format 1 had no checksums).
READABLE_FORMATS = ("diffusekit-checkpoint-1", FORMAT)
_STEM = re.compile(r"^step-(\d+)$")


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is loaded into (one-line message)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read or fails its checksum (one-line message)."""


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


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    ema: nn.Module | None = None,
    state: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``<directory>/step-<step>.{safetensors,state.pt}`` atomically, with checksums.

    ``state`` (optimiser state, RNG states, ...) must be loadable with ``torch.load(weights_only=True)``.
    ``keep`` deletes all but the newest ``keep`` checkpoints. Returns the weights path.
    """
    directory = Path(directory)
    weights_path, state_path = checkpoint_paths(directory / f"step-{step:08d}")
    seen: set[int] = set()
    tensors = _tensors("model", model, seen)
    if ema is not None:
        tensors.update(_tensors("ema", ema, seen))
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "step": step, **dict(state or {})}, buffer)
    state_bytes = buffer.getvalue()
    header = {
        "format": FORMAT, "step": str(step), "meta": json.dumps(dict(meta or {}), sort_keys=True, default=str),
        "tensors_sha256": tensors_sha256(tensors), "state_sha256": hashlib.sha256(state_bytes).hexdigest(),
    }
    atomic_write(state_path, lambda tmp: Path(tmp).write_bytes(state_bytes))
    atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=header))
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
            for f in checkpoint_paths(old):
                if f != weights_path:
                    f.unlink(missing_ok=True)
    return weights_path


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints with both files present in ``directory``, oldest first (weights paths; not verified)."""
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
    """The newest checkpoint with both files present, or None (not verified: see :func:`newest_checkpoint`)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint read and verified: its weights ``tensors``, ``meta``, and the training ``state`` if read."""

    path: Path
    step: int
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    state: dict[str, Any] | None = None


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, meta


def read_checkpoint(path: str | os.PathLike[str], with_state: bool = True) -> Checkpoint:
    """Read a checkpoint and verify it; raises ``CorruptCheckpointError`` naming the file and the reason.

    ``with_state=False`` reads and verifies only the weights (enough to sample).
    """
    weights_path, state_path = checkpoint_paths(path)
    try:
        tensors, header = read_tensors(weights_path)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CorruptCheckpointError(f"checkpoint {weights_path} is unreadable ({_one_line(e)})") from None
    if header.get("format") not in READABLE_FORMATS:
        raise CorruptCheckpointError(f"checkpoint {weights_path} is not a diffusekit checkpoint "
                                     f"(format {header.get('format')!r}; allowed: {', '.join(READABLE_FORMATS)})")
    if "tensors_sha256" in header and tensors_sha256(tensors) != header["tensors_sha256"]:
        raise CorruptCheckpointError(f"checkpoint {weights_path} fails its checksum (its weights changed after saving)")
    try:
        meta = json.loads(header.get("meta", "{}"))
        step = int(header["step"])
    except (ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"checkpoint {weights_path} has unreadable metadata ({_one_line(e)})") from None
    state = None
    if with_state:
        if not state_path.is_file():
            raise FileNotFoundError(f"checkpoint state file not found: {state_path}")
        raw = state_path.read_bytes()
        if "state_sha256" in header and hashlib.sha256(raw).hexdigest() != header["state_sha256"]:
            raise CorruptCheckpointError(f"checkpoint {state_path} fails its checksum (the file changed after saving)")
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises pickle, zip and runtime errors for damaged files
            raise CorruptCheckpointError(f"checkpoint {state_path} is unreadable ({_one_line(e)})") from None
    return Checkpoint(weights_path, step, tensors, meta, state)


def newest_checkpoint(
    directory: str | os.PathLike[str], with_state: bool = True
) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``directory`` that reads and verifies (or None), and the newer ones
    that failed as (weights path, reason), newest first."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return read_checkpoint(path, with_state), skipped
        except (CorruptCheckpointError, FileNotFoundError) as e:
            skipped.append((path, str(e)))
    return None, skipped


def set_aside(path: str | os.PathLike[str]) -> list[Path]:
    """Rename a bad checkpoint's files to ``<name>.corrupt`` (kept for inspection, no longer listed)."""
    moved = []
    for f in checkpoint_paths(path):
        if f.exists():
            moved.append(f.rename(f.with_name(f.name + ".corrupt")))
    return moved


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


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

    Falls back to 'model' when the checkpoint has no EMA copy. ``path`` may be a run folder or
    its checkpoint folder (the newest checkpoint that verifies is used) or a checkpoint file.
    """
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    ckpt = _find(path, with_state=False)
    copy_weights(ckpt, model, which)
    return ckpt.meta


def copy_weights(ckpt: Checkpoint, model: nn.Module, which: str = "model") -> None:
    """Check and copy the ``which`` weights of ``ckpt`` into ``model`` ('ema' falls back to 'model' if absent)."""
    if which == "ema" and not any(k.startswith("ema.") for k in ckpt.tensors):
        which = "model"
    check_compatible(ckpt.path, model, ckpt.tensors, which)
    with torch.no_grad():
        for name, target in model.state_dict().items():
            target.copy_(ckpt.tensors[f"{which}.{name}"])


def load_checkpoint(
    path: str | os.PathLike[str] | Checkpoint, model: nn.Module, ema: nn.Module | None = None
) -> dict[str, Any]:
    """Load model (and EMA) weights after checking every name and shape; return the saved training state.

    Raises ``CheckpointMismatchError`` with a one-line message naming missing, unexpected and
    mis-shaped tensors. The returned dict holds ``step``, ``meta`` and the saved ``state`` entries.
    """
    ckpt = path if isinstance(path, Checkpoint) else _find(path, with_state=True)
    if ckpt.state is None:
        raise ValueError(f"checkpoint {ckpt.path} was read without its training state")
    check_compatible(ckpt.path, model, ckpt.tensors, "model")
    has_ema = any(k.startswith("ema.") for k in ckpt.tensors)
    if ema is not None and has_ema:
        check_compatible(ckpt.path, ema, ckpt.tensors, "ema")
    copy_weights(ckpt, model, "model")
    if ema is not None:
        copy_weights(ckpt, ema, "ema")
    return {**ckpt.state, "meta": ckpt.meta}


def _find(path: str | os.PathLike[str], with_state: bool) -> Checkpoint:
    """The checkpoint at a file or stem, or the newest good one in a checkpoint folder or run folder."""
    p = Path(path)
    if not p.is_dir():
        return read_checkpoint(p, with_state)
    for d in (p, p / "checkpoints"):
        if list_checkpoints(d):
            found, skipped = newest_checkpoint(d, with_state)
            if found is None:
                raise CorruptCheckpointError(f"no readable checkpoint in {d}: {skipped[0][1]}"
                                             + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
            return found
    raise FileNotFoundError(f"no checkpoint found in {p}")
