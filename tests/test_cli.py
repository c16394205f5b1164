"""The command line end to end on tiny runs, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffusekit.cli import main
from diffusekit.config import PRESETS, RunConfig, load_config


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_train_sample_info_round_trip_on_toy(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    code, text = run("train", "toy2d", "--set", "steps=20", "--set", "checkpoint_every=10", "--set", "sampling.solver=ddim",
                     "--out", str(out), "--quiet")
    assert code == 0, text
    assert (out / "config.toml").is_file() and (out / "loss.png").is_file() and (out / "metrics.jsonl").is_file()
    code, text = run("sample", str(out), "--nfe", "5", "--n", "7", "--out", str(tmp_path / "s.npy"))
    assert code == 0, text
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (7, 2) and np.isfinite(x).all()
    code, text = run("sample", str(out), "--solver", "deis", "--option", "end=gaussian", "--nfe", "6", "--n", "3",
                     "--out", str(tmp_path / "g.npy"))
    assert code == 0, text
    assert np.isfinite(np.load(tmp_path / "g.npy")).all()
    code, text = run("info", str(out))
    assert code == 0 and "parameters" in text and "checkpoint step 20" in text


def test_train_and_sample_images(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    code, text = run("train", "digits", "--set", "steps=3", "--set", "model.preset=tiny", "--set", "sampling.solver=ddim",
                     "--out", str(out), "--quiet")
    assert code == 0, text
    code, text = run("sample", str(out), "--nfe", "2", "--n", "4", "--out", str(tmp_path / "g.png"))
    assert code == 0, text
    assert Image.open(tmp_path / "g.png").size[0] > 8


def test_config_toml_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = PRESETS["digits"].with_overrides(["optim.lr=0.001", "data.flip=true", "sampling.grid=karras"])
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert load_config(str(path)) == cfg and cfg.optim.lr == 0.001 and cfg.data.flip is True
    with pytest.raises(ValueError, match="unknown key.*lrr in config.optim; allowed: lr"):
        cfg.with_overrides(["optim.lrr=1"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        RunConfig().with_overrides(["steps"])


def test_bad_input_gives_one_line_errors(tmp_path: Path) -> None:
    code, text = run("train", "digitz")
    assert code != 0 and "unknown preset 'digitz'; allowed: toy2d, digits, fashion, rectified" in text
    code, text = run("train", "digits", "--set", f"data.name={tmp_path / 'nothere'}", "--out", str(tmp_path / "r"))
    assert code != 0 and "not found" in text and len(text.strip().splitlines()) == 1
    mixed = tmp_path / "mixed" / "a"
    mixed.mkdir(parents=True)
    Image.new("L", (8, 8)).save(mixed / "0.png")
    Image.new("RGB", (8, 8)).save(mixed / "1.png")
    code, text = run("train", "digits", "--set", f"data.name={tmp_path / 'mixed'}", "--set", "data.image_size=8",
                     "--out", str(tmp_path / "r2"))
    assert code != 0 and "mode" in text and len(text.strip().splitlines()) == 1
    code, text = run("sample", str(tmp_path / "no-run"))
    assert code != 0 and "run folder not found" in text
    code, text = run("sample", str(tmp_path), "--solver", "nope")
    assert code != 0


def test_checkpoint_from_another_model(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    run("train", "toy2d", "--set", "steps=2", "--set", "sampling.solver=ddim", "--out", str(out), "--quiet")
    cfg = RunConfig.from_toml(out / "config.toml").with_overrides(["model.preset=small"])
    (out / "config.toml").write_text(cfg.to_toml())
    code, text = run("sample", str(out), "--nfe", "2", "--n", "2")
    assert code == 2 and "model.preset='tiny'" in text and "says 'small'" in text
    assert len(text.strip().splitlines()) == 1


def test_unknown_solver_lists_allowed(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    run("train", "toy2d", "--set", "steps=2", "--set", "sampling.solver=ddim", "--out", str(out), "--quiet")
    code, text = run("sample", str(out), "--solver", "nope", "--nfe", "2")
    assert code != 0 and "unknown solver 'nope'; allowed:" in text and "ddim" in text


def test_grid_paper_and_the_budget_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    run("train", "toy2d", "--set", "steps=2", "--out", str(out), "--quiet")
    code, text = run("sample", str(out), "--solver", "heun", "--grid", "paper", "--nfe", "9", "--n", "3",
                     "--out", str(tmp_path / "h.npy"))
    assert code == 0 and "heun (9 NFE)" in text, text  # Karras grid, 5 steps: 2 x 4 + 1 calls
    code, text = run("sample", str(out), "--grid", "papers", "--n", "3", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "unknown step grid 'papers'; allowed: default, paper," in text
    assert not (tmp_path / "x.npy").exists()
    code, text = run("sample", str(out), "--n", "3", "--out", str(tmp_path / "d.npy"))
    assert code == 0 and "unipc_logsnr (20 NFE)" in text, text  # a new run samples with the default


def test_solvers_listing() -> None:
    code, text = run("solvers")
    assert code == 0 and "ddim" in text and "ddpm" in text
    assert "unipc_logsnr" in text and "(the default)" in text and "paper grid" in text


def test_sample_threshold_keeps_the_x0_estimate_in_range(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    code, text = run("train", "digits", "--set", "steps=2", "--set", "model.preset=tiny", "--set", "diffusion.schedule=discrete",
                     "--set", "diffusion.parameterization=eps", "--set", "diffusion.weighting=eps",
                     "--set", "diffusion.time_sampling=uniform", "--out", str(out), "--quiet")
    assert code == 0, text
    drawn = {}
    for name, extra in (("plain", ()), ("clip", ("--threshold", "clip")), ("dynamic", ("--threshold", "dynamic"))):
        code, text = run("sample", str(out), "--solver", "ddim", "--nfe", "3", "--n", "16", *extra,
                         "--out", str(tmp_path / f"{name}.npy"))
        assert code == 0, text
        drawn[name] = np.load(tmp_path / f"{name}.npy")
    assert np.abs(drawn["plain"]).max() > 1.0  # an untrained eps model's DDIM ends outside the data range...
    # ...and DDIM's last step returns the (thresholded) x0 estimate itself
    assert np.abs(drawn["clip"]).max() <= 1.0 and np.abs(drawn["dynamic"]).max() <= 1.0
    code, text = run("sample", str(out), "--threshold", "hard", "--n", "2")
    assert code != 0 and "unknown thresholding 'hard'; allowed: clip, dynamic" in text
