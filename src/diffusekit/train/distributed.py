"""Many processes through ``torch.distributed``: the world, its process group, shards, gathers.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_world` reads them and opens the process group (gloo on
the CPU, NCCL on CUDA; multi-node through torchrun's rendezvous, nothing home-made).
A plain ``python`` start is the world of one and needs no process group.

Conventions shared by training, sampling and evaluation: a batch of ``n`` rows is
cut into contiguous shards in rank order (:func:`shard`), so gathering the shards
in rank order (:func:`gather_rows`) gives back the single-process batch; only rank 0
writes files (``World.is_main``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``rank`` 0 writes; ``local_rank`` picks the GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"rank must be in [0, {self.size}) with world size >= 1, got rank {self.rank}, size {self.size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def device(self) -> torch.device:
        """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is there and the world has many processes,
        else the CPU (a single process keeps the library's CPU default)."""
        if self.distributed and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def world_from_env() -> World:
    """The world torchrun describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (a world of one without them)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {os.environ.get('RANK')!r}, "
                         f"{os.environ.get('WORLD_SIZE')!r}, {os.environ.get('LOCAL_RANK')!r}") from None
    return World(rank, size, local)


def init_world() -> World:
    """Open the default process group for the world in the environment (gloo on CPU, NCCL on CUDA) if it has
    more than one process and none is open yet; returns the world."""
    world = world_from_env()
    if world.distributed and not dist.is_initialized():
        backend = "gloo"
        if world.device.type == "cuda":
            torch.cuda.set_device(world.device)
            backend = "cpu:gloo,cuda:nccl"  # CUDA tensors through NCCL, CPU ones (features) through gloo
        # torch's env:// rendezvous, its keys under this restart's prefix: after an elastic restart the agent's
        # store still holds the dead attempt's addresses (seen with torch 2.14 + c10d; cf. pytorch/pytorch#167288)
        store, rank, size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"diffusekit/attempt-{attempt}", store),
                                rank=rank, world_size=size)
    return world


def close_world() -> None:
    """Close the default process group if one is open."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_world() -> Iterator[World]:
    """``with distributed_world() as world:`` -- :func:`init_world` on entry, :func:`close_world` on exit."""
    world = init_world()
    try:
        yield world
    finally:
        if world.distributed:
            close_world()


def shard(n: int, world: World) -> slice:
    """Rows of this rank among ``n`` rows: contiguous, in rank order, sizes differing by at most one."""
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


def per_rank_batch(global_batch: int, world_size: int, accumulate: int = 1) -> int:
    """Rows per forward pass: the global batch over ``world_size`` processes and ``accumulate`` micro-batches."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise ValueError(f"data.batch_size={global_batch} (the global batch) must be a multiple of world size "
                         f"{world_size} x optim.accumulate {accumulate} = {parts}; allowed: a multiple of {parts}")
    return global_batch // parts


def gather_rows(x: Tensor, world: World) -> Tensor:
    """Every rank's ``x`` (rows of :func:`shard` of one batch, any sizes) concatenated in rank order, on every rank."""
    if not world.distributed:
        return x
    counts = torch.zeros(world.size, dtype=torch.int64, device=x.device)  # shards may differ by one row
    counts[world.rank] = x.shape[0]
    dist.all_reduce(counts)
    most = int(counts.max())
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts.tolist())])


def gather_array(a: np.ndarray, world: World) -> np.ndarray:
    """:func:`gather_rows` for a NumPy array (features), through CPU tensors (gloo)."""
    if not world.distributed:
        return a
    return gather_rows(torch.from_numpy(np.ascontiguousarray(a)), world).numpy()


def all_mean(x: Tensor, world: World) -> Tensor:
    """The mean of ``x`` over ranks (a copy; ``x`` itself on a world of one)."""
    if not world.distributed:
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y / world.size


def barrier(world: World) -> None:
    """Wait until every rank gets here (nothing to wait for on a world of one)."""
    if world.distributed:
        dist.barrier()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a stop request)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


__all__ = ["World", "all_mean", "any_rank", "barrier", "close_world", "distributed_world", "gather_array", "gather_rows",
           "init_world", "per_rank_batch", "shard", "world_from_env"]
