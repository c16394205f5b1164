"""In-memory mini-batch loader with deterministic, exactly resumable shuffling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffusekit.data.images import random_flip

__all__ = ["ArrayLoader", "Batch"]

Batch = tuple[Tensor, Tensor | None]


def _derived_generator(*words: int) -> torch.Generator:
    """A torch.Generator seeded from a hash of ``words`` (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(w) & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class ArrayLoader:
    """Shuffled mini-batches ``(x, labels or None)`` from in-memory tensors.

    The permutation of epoch ``e`` depends only on ``(seed, e)`` and the flip
    mask of batch ``i`` of epoch ``e`` only on ``(seed, e, i)``, so iteration is
    deterministic and can be resumed exactly from :meth:`state_dict`
    (``epoch`` and ``position`` = index of the next batch within the epoch).

    ``iter(loader)`` cycles through epochs forever, starting at the saved
    position and advancing the loader's state *before* each batch is yielded;
    :meth:`epoch_batches` yields only the rest of the current epoch. All
    iterators share the loader's state. ``flip=True`` applies
    :func:`~diffusekit.data.images.random_flip` to image batches.

    Data parallel: with ``world_size`` processes, ``batch_size`` is the global batch and
    process ``rank`` gets the contiguous rows ``rank * b`` to ``(rank + 1) * b`` of each batch
    (b = batch_size / world_size; flips drawn for the whole batch), so the ranks' shards together
    are exactly the single-process batch. The state holds the global batch, so a run resumes on
    any world size that divides it.
    """

    def __init__(
        self,
        data: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None = None,
        batch_size: int = 128,
        seed: int = 0,
        drop_last: bool = True,
        flip: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data = torch.as_tensor(data)
        self.labels = None if labels is None else torch.as_tensor(labels)
        if self.labels is not None and not self.labels.is_floating_point():
            self.labels = self.labels.long()  # class labels; floating rows are condition vectors or images
        n = self.data.shape[0] if self.data.ndim else 0
        if n == 0:
            raise ValueError("ArrayLoader needs at least one sample, got an empty array")
        if self.labels is not None and self.labels.shape[:1] != (n,):
            raise ValueError(f"labels must have shape ({n}, ...), got {tuple(self.labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank}, world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the world size "
                             f"{world_size}; allowed: a multiple of {world_size}")
        if drop_last and batch_size > n:
            raise ValueError(f"batch_size {batch_size} > {n} samples with drop_last=True: an epoch would have no batch")
        if flip and self.data.ndim != 4:
            raise ValueError(f"flip=True needs image data (N, C, H, W), got shape {tuple(self.data.shape)}")
        self.num_samples = n
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.flip = bool(flip)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.position = 0
        self._perm_epoch: int | None = None
        self._perm: Tensor | None = None

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def permutation(self, epoch: int) -> Tensor:
        """The sample order (N,) of ``epoch`` (depends only on seed and epoch)."""
        if self._perm_epoch != epoch or self._perm is None:
            self._perm = torch.randperm(self.num_samples, generator=_derived_generator(self.seed, epoch, 0))
            self._perm_epoch = epoch
        return self._perm

    def batch(self, epoch: int, index: int) -> Batch:
        """This rank's rows of batch ``index`` of ``epoch`` (pure function of seed, epoch, index, rank, world size)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        idx = self.permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        size = idx.shape[0]
        lo, hi = self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size
        idx = idx[lo:hi].to(self.data.device)
        x = self.data[idx]
        if self.flip:
            x = random_flip(x, generator=_derived_generator(self.seed, epoch, index + 1, 1), offset=lo,
                            global_batch=size)
        y = self.labels[idx.to(self.labels.device)] if self.labels is not None else None
        return x, y

    def _next(self) -> Batch:
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        out = self.batch(self.epoch, self.position)
        self.position += 1
        return out

    def epoch_batches(self) -> Iterator[Batch]:
        """Yield the remaining batches of the current epoch (then the state points at the next epoch)."""
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        start_epoch = self.epoch
        while self.epoch == start_epoch and self.position < len(self):
            yield self._next()

    def __iter__(self) -> Iterator[Batch]:
        """Yield batches forever, epoch after epoch, from the current state."""
        while True:
            yield self._next()

    def state_dict(self) -> dict[str, Any]:
        """Resumable state: epoch, position (next batch index) and the settings that must match."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``epoch``/``position``; raises ValueError if seed, batch size, N or drop_last differ."""
        for k in ("seed", "batch_size", "num_samples", "drop_last"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"loader state has {k}={state[k]!r} but this loader has {k}={getattr(self, k)!r}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"invalid loader state epoch={epoch}, position={position} ({len(self)} batches/epoch)")
        self.epoch, self.position = epoch, position
