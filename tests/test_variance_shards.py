"""`diffusekit sample RUN --variance/--trajectory` is sharded like plain sampling: each rank draws its rows of
the samples with those rows' own noise, and the gathered rows are the one-process samples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.config import PRESETS
from diffusekit.likelihood.analytic import MOMENTS_FILE
from diffusekit.pipeline import load_run, train_run
from diffusekit.run_variances import sample_with_variance
from diffusekit.train.distributed import World

SRC = Path(dk.__file__).resolve().parents[1]
DDPM = ["steps=2", "checkpoint_every=2", "log_every=2", "data.num_samples=256", "data.batch_size=64",
        "diffusion.schedule='discrete'", "diffusion.parameterization='eps'", "diffusion.time_sampling='discrete'",
        "diffusion.weighting='simple'"]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddpm") / "run"
    train_run(PRESETS["toy2d"].with_overrides(DDPM), out, progress=False, report=lambda m: None)
    return out


def test_two_ranks_sample_their_rows_of_the_one_process_samples(ddpm_run: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank of a world of 2, simulated in one process (the gather of rows is the identity here)."""
    run = load_run(ddpm_run, report=lambda m: None)
    kw = {"seed": 3, "progress": False, "cond": None}
    one = sample_with_variance(run, ddpm_run, "ddpm", "large", "quadratic", 5, 7, **kw).x
    monkeypatch.setattr("diffusekit.pipeline.gather_rows", lambda x, world: x)
    parts = [sample_with_variance(run, ddpm_run, "ddpm", "large", "quadratic", 5, 7, world=World(r, 2), **kw).x
             for r in (0, 1)]
    assert [p.shape[0] for p in parts] == [3, 4]
    assert torch.equal(torch.cat(parts), one)


@pytest.mark.slow
def test_torchrun_sample_with_analytic_variance_equals_one_process(ddpm_run: Path, tmp_path: Path) -> None:
    """2 processes (gloo): rank 0 estimates the moments, both sample their shards; rank 0 writes them all."""
    out = tmp_path / "s.npy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffusekit.cli",
           "sample", str(ddpm_run), "--variance", "analytic", "--trajectory", "dp", "--nfe", "5", "--count", "9",
           "--seed", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    assert not (ddpm_run / MOMENTS_FILE).exists()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 2 processes" in proc.stdout
    assert (ddpm_run / MOMENTS_FILE).is_file()  # estimated and stored by rank 0
    run = load_run(ddpm_run, report=lambda m: None)
    one = sample_with_variance(run, ddpm_run, "ddpm", "analytic", "dp", 5, 9, seed=2, progress=False).x
    assert np.array_equal(np.load(out), one.numpy())
