"""Faults during training: SIGKILL at random moments and inside checkpoint and metrics writes (with a
damaged newest checkpoint and latest.json in some trials) always resumes to the weights and log of an
uninterrupted run; SIGTERM / SIGINT checkpoint and exit 143 / 130; a NaN loss stops naming its step."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import diffusekit as dk
from diffusekit.cli import main
from diffusekit.config import PRESETS
from diffusekit.data import ArrayLoader
from diffusekit.losses import DSMLoss
from diffusekit.models import MLP
from diffusekit.pipeline import train_run
from diffusekit.train import NonFiniteLossError, TrainConfig, Trainer, list_checkpoints, read_checkpoint, read_metrics
from diffusekit.train import checkpoint as checkpoint_module
from diffusekit.train import trainer as trainer_module

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CFG = PRESETS["toy2d"].with_overrides([
    "steps=20", "checkpoint_every=5", "log_every=3", "keep_checkpoints=2", "data.num_samples=256",
    "data.batch_size=32", "model.preset=tiny", "sampling.solver=ddim",
])
TIMING = ("steps_per_sec", "elapsed")


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(list_checkpoints(run / "checkpoints")[-1], with_state=False).tensors


def _in_child(action) -> int:  # type: ignore[no-untyped-def]
    """Fork; the child runs ``action`` and exits (0, or 1 on an exception, or the SystemExit code)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 0
        try:
            action()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _wait(pid: int, seconds: float) -> int:
    """The child's wait status; SIGKILL it if it has not ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _kill_inside(name: str, module: object, call: int, torn: bool = False) -> None:
    """In the child: SIGKILL itself during the ``call``-th call of ``module.name`` (after its temporary file,
    or half a metrics line, is written)."""
    original = getattr(module, name)
    count = [0]

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        if count[0] == call:
            if torn:  # half a line, as a write cut short
                with open(args[0], "a") as f:
                    f.write(json.dumps(args[1])[:17])
            else:
                path, write = args
                tmp = Path(path).with_name(f".{Path(path).name}.killed.tmp")
                write(str(tmp))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("ref") / "run"
    start = time.perf_counter()
    train_run(CFG, out, progress=False, report=lambda m: None)
    return out, time.perf_counter() - start


# kill point, damage after the kill
TRIALS = [
    ("random", ""), ("random", "checkpoint"), ("random", "latest"), ("random", "checkpoint+latest"),
    ("state write", ""), ("weights write", "latest"), ("metrics write", ""), ("weights write", "checkpoint"),
]


@pytest.mark.parametrize("trial", range(len(TRIALS)))
def test_sigkill_anywhere_then_resume_equals_uninterrupted(reference: tuple[Path, float], tmp_path: Path,
                                                          trial: int) -> None:
    ref, seconds = reference
    kill, damage = TRIALS[trial]
    out = tmp_path / "run"
    rng = random.Random(trial)

    def child() -> None:
        sys.stderr = open(os.devnull, "w")
        if kill == "state write":
            _kill_inside("atomic_write", checkpoint_module, call=2 * rng.randint(1, 4) - 1)
        elif kill == "weights write":
            _kill_inside("atomic_write", checkpoint_module, call=2 * rng.randint(1, 4))
        elif kill == "metrics write":
            _kill_inside("append_metrics", trainer_module, call=rng.randint(1, 6), torn=True)
        train_run(CFG, out, progress=False, report=lambda m: None)

    pid = _in_child(child)
    if kill == "random":
        time.sleep(rng.uniform(0.0, 1.2 * seconds))
        os.kill(pid, signal.SIGKILL)
    status = _wait(pid, seconds=120)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, status
    found = list_checkpoints(out / "checkpoints")
    if "checkpoint" in damage and found:
        data = bytearray(found[-1].read_bytes())
        data[len(data) // 2] ^= 0x40
        found[-1].write_bytes(bytes(data))
    if "latest" in damage:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "latest.json").write_text('{"step": 99, "checkpoint": "step-000')
    messages: list[str] = []
    train_run(CFG, out, progress=False, report=messages.append)
    mine, theirs = _weights(out), _weights(ref)
    assert mine.keys() == theirs.keys()
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]), (TRIALS[trial], k, messages)
    assert _rows(out) == _rows(ref), (TRIALS[trial], messages)
    assert not [p for p in out.rglob("*.tmp")]
    if "checkpoint" in damage and found:
        assert any(f"skipped checkpoint {found[-1].name}" in m for m in messages), messages


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_write_a_checkpoint_and_exit(tmp_path: Path, signum: int, status: int) -> None:
    out = tmp_path / "run"
    args = ["train", "toy2d", "--set", "steps=100000", "--set", "checkpoint_every=100000", "--set", "log_every=2",
            "--set", "data.num_samples=256", "--set", "data.batch_size=32", "--set", "sampling.solver=ddim",
            "--out", str(out), "--quiet"]
    messages = tmp_path / "stderr"

    def child() -> None:
        sys.stderr = open(messages, "w")
        main.main(args, prog_name="diffusekit")

    pid = _in_child(child)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid, signum)
    code = _wait(pid, seconds=60)
    assert os.WIFEXITED(code) and os.WEXITSTATUS(code) == status, (code, messages.read_text())
    (ckpt,) = list_checkpoints(out / "checkpoints")
    step = read_checkpoint(ckpt).step
    assert step > 0 and (out / "loss.png").is_file()
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in messages.read_text()


class _NaNAt(DSMLoss):
    """The DSM loss, but NaN at the ``at``-th call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        object.__setattr__(self, "calls", [0, at])

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = super().__call__(*args, **kwargs)
        self.calls[0] += 1
        return out._replace(loss=out.loss * float("nan")) if self.calls[0] == self.calls[1] else out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    den = dk.Denoiser(MLP(2, width=16, depth=2), dk.VPSchedule(), "eps")
    loader = ArrayLoader(torch.rand(64, 2) * 2 - 1, batch_size=16, seed=0)
    cfg = TrainConfig(lr=1e-3, log_every=3, checkpoint_every=5, progress=False)
    trainer = Trainer(den, loader, _NaNAt(7), cfg, run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 7 \(loss nan\); stopped, the last checkpoint, "
                                                 r"step 5, is kept"):
        trainer.fit(20)
    assert [read_checkpoint(p).step for p in list_checkpoints(tmp_path / "checkpoints")] == [5]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [3, 6]  # no row holds the NaN


def test_nan_loss_from_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "toy2d", "--set", "steps=20", "--set", "optim.lr=1e30",
                                       "--set", "optim.warmup_steps=0", "--set", "data.num_samples=256", "--set", "data.batch_size=32",
                                       "--set", "sampling.solver=ddim", "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: training loss or gradient norm became non-finite at step ")
    assert len(result.output.strip().splitlines()) == 1
