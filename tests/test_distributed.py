"""Scale-out: data-parallel training, sharded sampling and features, elastic restarts, precision.

The torchrun tests start 2 CPU processes (gloo) through ``python -m torch.distributed.run`` on a
tiny MLP; the fast tests check the arithmetic every rank relies on (shards, batch split, draws
for the global batch) in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.config import RunConfig
from diffusekit.data import ArrayLoader
from diffusekit.losses import DSMLoss
from diffusekit.models import MLP
from diffusekit.noise import NoiseSource, sample_keys
from diffusekit.pipeline import load_run, sample_denoiser, train_run
from diffusekit.train import TrainConfig, Trainer
from diffusekit.train.distributed import World, gather_rows, per_rank_batch, shard

SRC = Path(dk.__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TOY = ["--set", "steps=10", "--set", "data.num_samples=1000", "--set", "data.batch_size=64", "--set", "log_every=5",
       "--set", "checkpoint_every=5", "--set", "optim.warmup_steps=3", "--quiet"]


def _torchrun(args: list[str], cwd: Path, *launcher: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher, *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return proc


def _cli(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "diffusekit.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:08d}.safetensors")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)  # the EMA copy is compared too
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------ fast, one process
def test_batch_split_arithmetic_and_its_errors() -> None:
    assert per_rank_batch(64, 2, 2) == 16 and per_rank_batch(64, 1) == 64
    with pytest.raises(ValueError, match=r"data.batch_size=64 .* multiple of world size 3 x optim.accumulate 1 = 3"):
        per_rank_batch(64, 3)
    for n in (5, 7, 64):
        for size in (1, 2, 3):
            rows = [shard(n, World(r, size)) for r in range(size)]
            assert [i for s in rows for i in range(n)[s]] == list(range(n))  # contiguous, in rank order
            assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        World(2, 2)
    x = torch.arange(6.0)
    assert gather_rows(x, World()) is x


def test_prepare_run_refuses_a_global_batch_the_processes_cannot_share(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"name": "t", "data": {"name": "mixture", "batch_size": 10, "num_samples": 100},
                               "model": {"kind": "mlp"}, "optim": {"accumulate": 4}})
    with pytest.raises(ValueError, match=r"data.batch_size=10 .* multiple of 4"):
        train_run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flip", [False, True])
def test_loader_shards_are_the_single_process_batch(flip: bool) -> None:
    data = torch.randn(40, 1, 2, 2)
    whole = ArrayLoader(data, torch.arange(40), batch_size=12, seed=3, flip=flip)
    shards = [ArrayLoader(data, torch.arange(40), batch_size=12, seed=3, flip=flip, rank=r, world_size=3) for r in range(3)]
    for _ in range(5):  # crosses an epoch
        x, y = whole._next()
        parts = [s._next() for s in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert shards[1].state_dict() == whole.state_dict()  # the state is the global batch's: resumable on any world
    with pytest.raises(ValueError, match="multiple of the world size 5"):
        ArrayLoader(data, batch_size=12, world_size=5)


def test_loss_on_shards_draws_the_global_batch_noise() -> None:
    torch.manual_seed(0)
    den = dk.Denoiser(MLP(2, width=16, depth=1, num_classes=3), dk.VPSchedule(), "eps")
    x, y = torch.randn(12, 2), torch.arange(12) % 3
    loss = DSMLoss("snr", "stratified", label_dropout=0.3, null_label=3)
    whole = loss(den, x, y, generator=torch.Generator().manual_seed(5))
    parts = [loss(den, x[a:a + 4], y[a:a + 4], generator=torch.Generator().manual_seed(5), offset=a, global_batch=12)
             for a in (0, 4, 8)]
    torch.testing.assert_close(torch.cat([p.per_sample for p in parts]), whole.per_sample, rtol=1e-6, atol=0)
    assert torch.equal(torch.cat([p.t for p in parts]), whole.t)
    with pytest.raises(ValueError, match="rows 10 to 14 do not lie in a global batch of 12"):
        loss(den, x[:4], generator=torch.Generator(), offset=10, global_batch=12)


def _trainer(accumulate: int, precision: str = "fp32") -> Trainer:
    torch.manual_seed(0)
    data = torch.randn(256, 2)
    den = dk.Denoiser(MLP(2, width=32, depth=2), dk.VPSchedule(), "v")
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, ema_half_life=3.0, accumulate=accumulate, precision=precision,
                      log_every=4, progress=False)
    return Trainer(den, ArrayLoader(data, batch_size=32, seed=1), DSMLoss(), cfg)


def test_gradient_accumulation_equals_the_whole_batch() -> None:
    a, b = _trainer(1), _trainer(4)
    a.fit(8)
    b.fit(8)
    for pa, pb in zip([*a.net.parameters(), *a.ema.module.parameters()], [*b.net.parameters(), *b.ema.module.parameters()]):  # type: ignore[union-attr]
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert a.last_record["loss"] == pytest.approx(b.last_record["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="batch of 32 rows must be a multiple of accumulate=3"):
        _trainer(3).fit(1)


def test_precision_settings_and_old_configs() -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA device .* allowed here: fp32, bf16"):
        _trainer(1, "fp16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        TrainConfig(precision="fp8")
    assert RunConfig.from_dict({"optim": {"bf16": True}}).optim.precision == "bf16"  # configs written before
    assert RunConfig.from_dict({"optim": {"bf16": False}}).optim.precision == "fp32"
    with pytest.raises(ValueError, match="optim.precision must be one of fp32, bf16, fp16"):
        RunConfig.from_dict({"optim": {"precision": "half"}})
    b = _trainer(1, "bf16")
    b.fit(3)
    assert all(p.dtype == torch.float32 for p in b.net.parameters())  # autocast: the weights stay float32


def test_sample_keys_are_the_rows_of_one_seed() -> None:
    full = NoiseSource.from_seed(7, 10).normal(3, (4,))
    part = NoiseSource(sample_keys(7, torch.tensor([6, 2, 9]))).normal(3, (4,))
    assert torch.equal(part, full[[6, 2, 9]])


# ------------------------------------------------------------------------------------------ torchrun, 2 processes
@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_on_one(tmp_path: Path) -> None:
    """2 ranks x 2 micro-batches of 16 = one process on 64 rows; then that checkpoint continues on 1 process."""
    proc = _torchrun(["-m", "diffusekit.cli", "train", "toy2d", *TOY, "--set", "optim.accumulate=2", "--out", "two"],
                     tmp_path)
    assert "on 2 process(es)" in proc.stdout
    _cli(["train", "toy2d", *TOY, "--out", "one"], tmp_path)
    _assert_close(_weights(tmp_path / "two", 10), _weights(tmp_path / "one", 10))
    assert load_run(tmp_path / "two").meta["world_size"] == 2
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    for run in ("one", "two"):  # both continue to step 20 on one process
        _cli(["train", "toy2d", *TOY, "--set", "steps=20", "--out", run], tmp_path)
    _assert_close(_weights(tmp_path / "two", 20), _weights(tmp_path / "one", 20))


@pytest.mark.slow
def test_sharded_sampling_and_frechet_distance_equal_one_process(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"name": "t", "steps": 3, "data": {"name": "mixture", "num_samples": 200, "batch_size": 32},
                               "model": {"kind": "mlp"}})
    train_run(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    _torchrun(["-m", "diffusekit.cli", "sample", "run", "--count", "33", "--seed", "4", "--out", "s.npy"], tmp_path)
    one = sample_denoiser(run.denoiser, run.info, run.config.sampling.solver, run.config.sampling.nfe, 33, seed=4)
    assert np.array_equal(np.load(tmp_path / "s.npy"), one.x.numpy())  # exactly, not approximately

    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import frechet_of_features

    _torchrun([str(WORKER), "features", "f.npz"], tmp_path)
    got = np.load(tmp_path / "f.npz")
    fake, fd = frechet_of_features()
    assert int(got["world"]) == 2 and np.array_equal(got["features"], fake)
    assert float(got["fd"]) == pytest.approx(fd, rel=1e-12) and fd > 0.01


@pytest.mark.slow
def test_a_killed_rank_restarts_from_the_last_checkpoint(tmp_path: Path) -> None:
    """torchrun --max-restarts=1: rank 1 dies before step 8; the job restarts, resumes at step 5, and ends
    with the weights of an uninterrupted run."""
    marker = tmp_path / "killed"
    proc = _torchrun([str(WORKER), "train-killed-once", str(marker), "8", "--", "train", "toy2d", *TOY, "--out", "run"],
                     tmp_path, "--max-restarts=1")
    assert marker.exists()  # the crash happened
    assert "resuming run at step 5 of 10" in proc.stderr
    _cli(["train", "toy2d", *TOY, "--out", "straight"], tmp_path)
    _assert_close(_weights(tmp_path / "run", 10), _weights(tmp_path / "straight", 10))
