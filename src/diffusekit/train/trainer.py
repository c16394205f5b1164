"""The training loop: AdamW, warm-up, clipping, EMA, mixed precision, data parallel, checkpoints, exact resume.

One optimiser step (Ho et al. 2020, Alg. 1, with the usual engineering):

1. next batch from the data loader (its position is part of the checkpoint);
2. t, eps (and the label-dropout mask) drawn from a ``torch.Generator`` seeded by (seed, step);
   dropout inside the network uses the global RNG, re-seeded from (seed, step) inside
   ``torch.random.fork_rng`` so it neither depends on nor disturbs outside state;
3. DSM loss (``losses.DSMLoss``), the network under bf16 or fp16 autocast if asked; backward,
   in ``accumulate`` micro-batches;
4. gradient-norm clipping, AdamW with a linear learning-rate warm-up, EMA update;
5. a loss that owns state (``losses.StatefulLoss``: importance tables, EMA targets) is told
   the step (``after_step``), and its ``state_dict`` goes into every checkpoint.

Data parallel (``world`` with several processes, started by torchrun; ``distributed.py``): the
network is wrapped in ``DistributedDataParallel``, each rank trains on its contiguous shard of
the global batch (``ArrayLoader(rank=, world_size=)``) and the loss draws its noise for the global
batch and keeps its rows, so one step on W ranks x A micro-batches is the single-process step on
the whole batch up to float summation order. Gradients are averaged by DDP, so parameters,
optimiser moments and the EMA stay identical on every rank; rank 0 alone writes metrics and
checkpoints, and a checkpoint resumes on any world size that divides the global batch. Dropout
masks are seeded per (seed, step, rank, micro-batch): reproducible for a given world size.

Everything a step depends on (weights, EMA, optimiser moments, step, loader position,
gradient scale, log accumulators) is saved, so training 10 + 10 steps with a restart
in between gives bit-identical weights to 20 steps in one go (on the CPU), and the
metrics log is cut back to the checkpoint's step on resume.

``fit`` stops cleanly on SIGINT / SIGTERM (checkpoint, then ``TrainingStopped``), and on
a NaN or infinite loss or gradient norm (``NonFiniteLossError`` naming the step; that
state is never saved). Non-finite values are flagged on the device every step and read
at the next log line or checkpoint, so the check adds no host sync.

Outputs in ``run_dir``: ``metrics.jsonl`` (step, loss, lr, grad_norm, steps_per_sec,
elapsed), ``loss.png``, ``checkpoints/step-XXXXXXXX.{safetensors,state.pt}``, and
whatever the ``sample_fn`` callback writes (e.g. sample grids).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..denoiser import Denoiser
from ..losses.dsm import DSMLoss, StatefulLoss
from ..progress import progress_bar
from .checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint, set_aside
from .distributed import World, all_mean, any_rank
from .ema import EMA
from .metrics_log import append_metrics, cut_metrics, read_metrics
from .plots import plot_loss_curve
from .stop import NonFiniteLossError, TrainingStopped, stop_requests

SampleFn = Callable[[Denoiser, int, "Path | None"], object]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (all steps are optimiser steps).

    EMA: ``ema_power`` set -> power warm-up; else ``ema_half_life`` (steps, with
    ``ema_rampup`` ratio) -> half-life; both None -> no EMA. ``precision``: fp32, bf16 (autocast) or
    fp16 (autocast and gradient scaling, CUDA only); ``accumulate``: micro-batches per optimiser step.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    decay_steps: int | None = None
    grad_clip: float | None = 1.0
    ema_half_life: float | None = 1000.0
    ema_rampup: float | None = 0.05
    ema_power: float | None = None
    ema_inv_gamma: float = 1.0
    ema_max_decay: float = 0.9999
    precision: str = "fp32"
    accumulate: int = 1
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = 2
    sample_every: int | None = None
    progress: bool = True
    use_labels: bool | None = None

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "sample_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"decay_steps must exceed warmup_steps={self.warmup_steps}, got {self.decay_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.accumulate, bool) or not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise ValueError(f"accumulate must be a positive integer, got {self.accumulate!r}")


#: Network precisions: the autocast dtype (None: no autocast). Schedule, loss weighting and solver
#: arithmetic stay in float32 / float64 (the loss casts the network's output back to the data's dtype).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainStep:
    """What one step yields; ``loss`` and ``grad_norm`` are 0-d tensors (read them to sync)."""

    step: int
    loss: Tensor
    grad_norm: Tensor
    lr: float


def _step_seed(seed: int, step: int, *more: int) -> int:
    """A well-mixed 63-bit seed from (seed, step, *more) (numpy SeedSequence)."""
    words = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, step, *more]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


#: The last word of the loss generator's seed (seed, step, _NOISE_STREAM): apart from dropout's (seed, step).
_NOISE_STREAM = 0x6E6F6973


def _split_batch(batch: Any) -> tuple[Tensor, Any]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], batch[1] if len(batch) == 2 else None
    raise TypeError(f"a batch must be a tensor or a (data, labels) pair, got {type(batch).__name__}")


class Trainer:
    """Trains ``denoiser.net`` with DSM on batches from ``data`` (an iterable, ideally a resumable ``ArrayLoader``).

    ``denoiser`` may be any module with a ``net`` that ``loss(denoiser, x, cond, generator)`` trains,
    e.g. a noise-aware classifier with ``train.classifier.ClassifierLoss``.

    ``fit(total_steps)`` trains until ``self.step == total_steps``; ``for s in trainer.steps(n)``
    yields after each of n more steps (smalldiffusion style). ``run_dir=None`` writes nothing.
    ``sample_fn(denoiser, step, run_dir)`` is called with the EMA denoiser every
    ``sample_every`` steps and at the end of ``fit``. ``meta`` (JSON) is stored in checkpoints.

    ``world``: this process among several (``distributed.init_world()`` under torchrun); ``data`` must
    then yield this rank's equal, contiguous shard of each global batch, in rank order (``ArrayLoader``
    with ``rank`` and ``world_size``), and every rank calls ``fit`` / ``steps`` / ``save`` alike.
    """

    def __init__(
        self,
        denoiser: Denoiser | nn.Module,
        data: Iterable,
        loss: Callable[..., Any] | None = None,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        sample_fn: SampleFn | None = None,
        meta: Mapping[str, Any] | None = None,
        world: World | None = None,
    ) -> None:
        if denoiser.net is None:
            raise ValueError("the denoiser has no network to train")
        self.world = world or World()
        self.denoiser = denoiser
        self.net: nn.Module = denoiser.net
        self.data = data
        self.loss_fn = loss or DSMLoss()
        self.config = cfg = config or TrainConfig()
        if cfg.accumulate * self.world.size > 1:
            params = inspect.signature(self.loss_fn).parameters
            if not {"offset", "global_batch"} <= set(params):
                raise ValueError(f"{type(self.loss_fn).__name__} cannot train on shards (world size {self.world.size}, "
                                 f"accumulate {cfg.accumulate}): its call takes no offset= and global_batch=; "
                                 "allowed: a loss like DSMLoss, or one process with accumulate = 1")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.sample_fn = sample_fn
        self.meta = dict(meta or {})
        self.device = next(iter(self.net.parameters())).device
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device (gradient scaling), the network is on "
                             f"{self.device.type}; allowed here: fp32, bf16")
        if self.world.distributed:  # broadcasts rank 0's weights: every rank starts (and stays) identical
            ddp = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
            self._train_denoiser = _with_net(denoiser, ddp)
            self._no_sync: Callable[[], contextlib.AbstractContextManager] = ddp.no_sync
        else:
            self._train_denoiser, self._no_sync = denoiser, contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.adam_eps
        )
        self.ema: EMA | None = None
        if cfg.ema_power is not None:
            self.ema = EMA(self.net, power=cfg.ema_power, inv_gamma=cfg.ema_inv_gamma, max_decay=cfg.ema_max_decay)
        elif cfg.ema_half_life is not None:
            self.ema = EMA(self.net, half_life=cfg.ema_half_life, rampup=cfg.ema_rampup)
        self._generator = torch.Generator(device=self.device)  # re-seeded from (seed, step) for every draw
        self.step = 0
        self._batches: Iterator | None = None
        self._acc = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, grad-norm sum
        self._acc_count = 0
        self._first_bad = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=self.device)  # step, loss
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        self._last_log = (time.perf_counter(), 0)
        self._start = time.perf_counter()
        self._saved_step = -1
        self._sampled_step = -1
        self.last_record: dict[str, Any] = {}

    # ---- public API ----------------------------------------------------------------
    @property
    def ema_denoiser(self) -> Denoiser:
        """The denoiser to sample with: the EMA network if there is one, else the trained one."""
        if not isinstance(self.denoiser, Denoiser):
            raise TypeError(f"a {type(self.denoiser).__name__} is not a denoiser to sample with")
        if self.ema is None:
            return self.denoiser
        return Denoiser(self.ema.module, self.denoiser.schedule, self.denoiser.parameterization)

    @property
    def metrics_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def lr_at(self, step: int) -> float:
        """Linear warm-up from lr / warmup_steps to lr over the first ``warmup_steps`` steps, then constant,
        or with ``decay_steps`` a cosine decay to 0 at that step (Loshchilov & Hutter 2017, SGDR eq. 5)."""
        w, d = self.config.warmup_steps, self.config.decay_steps
        if w > 0 and step < w:
            return self.config.lr * (step + 1) / w
        if d is None:
            return self.config.lr
        progress = min(1.0, (step - w) / (d - w))
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def steps(self, n: int) -> Iterator[TrainStep]:
        """Train ``n`` more steps, yielding a ``TrainStep`` after each (with logging, checkpoints, samples)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        end = self.step + n
        bar = progress_bar(total=end, initial=self.step, desc="train", unit="step", enabled=self.config.progress)
        self._last_log = (time.perf_counter(), self.step)
        try:
            while self.step < end:
                info = self._train_step()
                bar.update(1)
                self._periodic(info, bar)
                yield info
        finally:
            bar.close()

    def fit(self, total_steps: int) -> dict[str, Any]:
        """Train until ``self.step == total_steps``; then log, checkpoint, sample and plot. Returns the last log record.

        SIGINT / SIGTERM end the current step, write a checkpoint and raise ``TrainingStopped``.
        """
        stopped = False
        with stop_requests() as stop:
            for _ in self.steps(max(0, total_steps - self.step)):
                stopped = any_rank(stop.signum is not None, self.world)  # every rank stops after the same step
                if stopped:
                    break
        if stopped:
            if self.run_dir is not None and self._saved_step != self.step:
                self.save()
                self.plot()
            raise TrainingStopped(stop.signum or signal.SIGTERM, self.step)
        if self._acc_count and self.last_record.get("step") != self.step:
            self._log(partial=self.step % self.config.log_every != 0)
        if self.run_dir is not None and self._saved_step != self.step:
            self.save()
        if self.sample_fn is not None and self._sampled_step != self.step:
            self._sample()
        if self.run_dir is not None:
            self.plot()
        return dict(self.last_record)

    def save(self) -> Path | None:
        """Write a checkpoint of the current state into ``run_dir/checkpoints`` (no-op without a run_dir).

        With several processes every rank calls it (the log sums are averaged over ranks) and rank 0 writes."""
        if self.checkpoint_dir is None:
            return None
        self._check_finite()
        log_acc = all_mean(self._acc, self.world)
        self._saved_step = self.step
        if not self.world.is_main:
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "loader": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
            "log_acc": log_acc.cpu(),
            "log_count": self._acc_count,
            "config": _jsonable(asdict(self.config)),
            "loss": self.loss_fn.state_dict() if isinstance(self.loss_fn, StatefulLoss) else None,
        }
        meta = {**self.meta, "step": self.step, "world_size": self.world.size}
        if isinstance(self.denoiser, Denoiser):
            meta["parameterization"] = self.denoiser.parameterization.name
        path = save_checkpoint(
            self.checkpoint_dir, self.step, self.net, self.ema.module if self.ema else None, state, meta,
            keep=self.config.keep_checkpoints,
        )
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore everything from ``path`` (a checkpoint file or folder; default: ``run_dir``'s newest good one).

        Without ``path``, checkpoints that fail to read or verify are renamed ``*.corrupt`` and listed
        in ``skipped_checkpoints`` (path, reason); with none left, returns False and the metrics log is
        emptied (training starts at step 0). Raises ``CheckpointMismatchError`` if the checkpoint
        belongs to another model.
        """
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("resume() needs a path or a run_dir")
            found, self.skipped_checkpoints = newest_checkpoint(self.checkpoint_dir)
            for bad, _ in self.skipped_checkpoints if self.world.is_main else ():
                set_aside(bad)
            if found is None:
                self._cut_log()
                return False
            state = load_checkpoint(found, self.net, self.ema.module if self.ema else None)
        else:
            state = load_checkpoint(path, self.net, self.ema.module if self.ema else None)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state.get("loader") is not None:
            if not hasattr(self.data, "load_state_dict"):
                raise ValueError(f"checkpoint {path} holds a data-loader position but this data has no load_state_dict")
            self.data.load_state_dict(state["loader"])
        if state.get("loss") is not None:
            if not isinstance(self.loss_fn, StatefulLoss):
                raise ValueError(f"checkpoint {path} holds loss state but this loss "
                                 f"({type(self.loss_fn).__name__}) has no load_state_dict")
            self.loss_fn.load_state_dict(state["loss"])
        self._batches = None
        self.step = int(state["step"])
        self._acc = state["log_acc"].to(device=self.device, dtype=torch.float64)
        self._acc_count = int(state["log_count"])
        self._saved_step = self._sampled_step = self.step
        self._cut_log()
        return True

    def plot(self) -> Path | None:
        """Redraw ``run_dir/loss.png`` from the metrics log (rank 0)."""
        if self.run_dir is None or self.metrics_path is None or not self.world.is_main:
            return None
        return plot_loss_curve(read_metrics(self.metrics_path), self.run_dir / "loss.png")

    # ---- one step ------------------------------------------------------------------
    def _next_batch(self) -> tuple[Tensor, Any]:
        if self._batches is None:
            self._batches = iter(self.data)
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = iter(self.data)
            batch = next(self._batches)
        x, y = _split_batch(batch)
        x = x.to(self.device, non_blocking=True)
        use_labels = self.config.use_labels
        if use_labels is None:
            use_labels = y is not None and (getattr(self.net, "num_classes", None) is not None
                                            or getattr(self.net, "cond_dim", None) is not None
                                            or bool(getattr(self.net, "cond_channels", 0)))  # SR3's image condition
        cond = y.to(self.device, non_blocking=True) if use_labels and y is not None else None
        return x, cond

    def _rng_scope(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        index = self.device.index if self.device.index is not None else 0
        return torch.random.fork_rng(devices=[index], device_type=self.device.type)

    def _seed_global_rng(self, seed: int) -> None:
        """Seed the CPU generator and the training device's (cheaper than ``torch.manual_seed``)."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def _train_step(self) -> TrainStep:
        cfg, world = self.config, self.world
        self.net.train()
        x, cond = self._next_batch()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        parts, rows = cfg.accumulate, x.shape[0]
        if rows % parts:
            raise ValueError(f"this process's batch of {rows} rows must be a multiple of accumulate={parts}; "
                             f"allowed: a global batch that is a multiple of world size x accumulate")
        m, sharded = rows // parts, parts * world.size > 1
        dtype = PRECISIONS[cfg.precision]
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        noise_seed = _step_seed(cfg.seed, self.step, _NOISE_STREAM)  # every micro-batch draws the global batch's noise
        with self._rng_scope():
            for j in range(parts):
                part = slice(j * m, (j + 1) * m)
                self._seed_global_rng(_step_seed(cfg.seed, self.step, world.rank, j) if sharded
                                      else _step_seed(cfg.seed, self.step))
                self._generator.manual_seed(noise_seed)
                where = {"offset": world.rank * rows + j * m, "global_batch": rows * world.size} if sharded else {}
                # DDP all-reduces the gradients in the last micro-batch's backward only
                with self._no_sync() if j < parts - 1 else contextlib.nullcontext():
                    with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        out = self.loss_fn(self._train_denoiser, x[part], None if cond is None else cond[part],
                                           generator=self._generator, **where)
                    self.scaler.scale(out.loss / parts if parts > 1 else out.loss).backward()
                loss = loss + out.loss.detach() / parts
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm)
        self.scaler.step(self.optimizer)  # skipped by fp16's scaler when a gradient overflowed
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.net, self.step)
        if isinstance(self.loss_fn, StatefulLoss):
            self.loss_fn.after_step(self.net, self.step)
        pair = torch.stack([loss.to(self._acc), grad_norm.detach().to(self._acc)])
        self._acc += pair
        self._acc_count += 1
        # fp16: an overflowing gradient is the scaler's business (it skips the step), only the loss counts
        watched = pair[:1] if self.scaler.is_enabled() else pair
        first = (self._first_bad[0] < 0) & ~watched.isfinite().all()
        self._first_bad = torch.where(first, torch.stack([self._acc.new_tensor(self.step), pair[0]]), self._first_bad)
        return TrainStep(self.step, loss, grad_norm.detach(), lr)

    # ---- bookkeeping ---------------------------------------------------------------
    def _check_finite(self) -> None:
        """Raise ``NonFiniteLossError`` naming the first step whose loss or gradient norm was NaN or infinite."""
        step, loss = self._first_bad.tolist()
        if step >= 0:
            kept = f"the last checkpoint, step {self._saved_step}, is kept" if self._saved_step > 0 else "no checkpoint was written"
            raise NonFiniteLossError(f"training loss or gradient norm became non-finite at step {int(step)} "
                                     f"(loss {loss}); stopped, {kept} (try a lower optim.lr or grad_clip)")

    def _periodic(self, info: TrainStep, bar: Any) -> None:
        cfg, s = self.config, self.step
        if s % cfg.log_every == 0:
            record = self._log()
            bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        if cfg.checkpoint_every is not None and s % cfg.checkpoint_every == 0 and self.run_dir is not None:
            self.save()
            self.plot()
        if cfg.sample_every is not None and s % cfg.sample_every == 0 and self.sample_fn is not None:
            self._sample()

    def _log(self, partial: bool = False) -> dict[str, Any]:
        """Average loss and grad norm since the last multiple of ``log_every``; append to metrics.jsonl."""
        self._check_finite()
        loss_sum, gn_sum = all_mean(self._acc, self.world).tolist()  # the one host sync per log window
        n = self._acc_count
        now = time.perf_counter()
        t0, s0 = self._last_log
        record = {
            "step": self.step,
            "loss": loss_sum / n,
            "grad_norm": gn_sum / n,
            "lr": self.lr_at(self.step - 1),
            "steps_per_sec": (self.step - s0) / max(now - t0, 1e-9),
            "elapsed": now - self._start,
        }
        if partial:
            record["partial"] = True
        else:
            self._acc.zero_()
            self._acc_count = 0
        self._last_log = (now, self.step)
        if self.metrics_path is not None and self.world.is_main:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            append_metrics(self.metrics_path, record)
        self.last_record = record
        return record

    def _cut_log(self) -> None:
        """On (re)start, drop log lines written after the checkpoint: an interrupted run's tail, a torn line."""
        if self.metrics_path is not None and self.world.is_main:
            cut_metrics(self.metrics_path, self.step)

    def _sample(self) -> None:
        assert self.sample_fn is not None
        if self.world.is_main:
            with torch.no_grad():
                self.sample_fn(self.ema_denoiser, self.step, self.run_dir)
        self._sampled_step = self.step


def _with_net(module: nn.Module, net: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` (a Denoiser, a classifier on a schedule) calling ``net`` (the DDP wrapper)."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, "net": net}
    return clone


def _jsonable(obj: Any) -> Any:
    """Plain Python containers of numbers and strings (tuples become lists)."""
    return json.loads(json.dumps(obj, default=str))
