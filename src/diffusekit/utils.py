"""Small tensor helpers shared by the whole package."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so ``v`` (shape (B,) or ()) broadcasts against an ``ndim`` tensor."""
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * missing))


def as_time(t: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A (B,) float64 time tensor on ``like``'s device from a scalar or a (B,) tensor."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t.to(like.device)


def check_positive_int(name: str, value: int) -> int:
    """Reject non-integers and values < 1 with a message naming the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive_float(name: str, value: float) -> float:
    """Reject non-numbers, infinities and values <= 0 with a message naming the value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_on_device(ok: Tensor, message: Callable[[], str]) -> None:
    """Refuse bad tensor input without a host sync (for forward passes): ``ok`` (a 0-d bool tensor) goes to a
    device-side assert, which fails at once on the CPU (re-raised as a ValueError with ``message()``, which may
    read the values) and, on an accelerator, stops the run at its next synchronisation instead of waiting here."""
    try:
        torch._assert_async(ok, "bad input to a forward pass (see the check that failed)")
    except RuntimeError:
        raise ValueError(message()) from None
