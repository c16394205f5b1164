"""The run folder's life from the command line: bad input refused before any write (exit 2, one line,
folder byte-identical), checkpoints verified and skipped when damaged, runs continued and extended,
outputs written as asked, and the README's own-data commands and Python snippet."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusekit import __version__
from diffusekit.cli import main
from diffusekit.config import PRESETS, RunConfig
from diffusekit.pipeline import train_run
from diffusekit.progress import LINE_INTERVAL
from diffusekit.train import list_checkpoints, read_metrics

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["steps=4", "checkpoint_every=2", "log_every=2", "data.num_samples=256", "data.batch_size=64",
        "sampling.solver=ddim", "sampling.nfe=4"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train_run(PRESETS["toy2d"].with_overrides(TINY), out, progress=False)
    return out


@pytest.fixture
def toy(trained: Path, tmp_path: Path) -> Path:
    """A private copy of a 4-step toy run (checkpoints at steps 2 and 4)."""
    return Path(shutil.copytree(trained, tmp_path / "toy"))


def refused(args: list[str], folder: Path, *words: str) -> str:
    """Run a command that must fail with exit status 2 and a one-line message holding ``words``,
    leaving ``folder`` exactly as it was (or absent, if it was)."""
    before = snapshot(folder) if folder.exists() else None
    code, text = run(*args)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert "Traceback" not in text
    for w in words:
        assert w in text, (w, text)
    assert (snapshot(folder) if folder.exists() else None) == before
    return text


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("override, words", [
    ("steps=0", ["steps must be an integer >= 1, got 0"]),
    ("steps=-5", ["steps must be an integer >= 1, got -5"]),
    ("steps=abc", ["steps must be an integer >= 1, got 'abc'"]),
    ("optim.lr=abc", ["optim.lr must be a number > 0, got 'abc'"]),
    ("optim.lr=1e-3", ["holds a run with optim.lr=0.002, not 0.001", "choose another --out"]),
    ("steps=2", ["steps must be at least 4", "got 2"]),
    ("diffusion.schedule=cosine", ["diffusion.schedule must be one of", "got 'cosine'"]),
    ("sampling.nfe=100000", ["sampling.nfe must be an integer from 1 to 10,000, got 100000"]),
    ("keep_checkpoints=0", ["keep_checkpoints must be an integer >= 1, got 0"]),
    ("data.name=other.npz", ["holds a run with data.name='mixture', not 'other.npz'"]),
    ("steps", ["--set expects key=value, got 'steps'"]),
])
def test_train_refuses_bad_input_and_leaves_the_folder(toy: Path, override: str, words: list[str]) -> None:
    cfg = RunConfig.from_toml(toy / "config.toml")
    args = ["train", "toy2d", *sum((["--set", o] for o in TINY), []), "--set", override, "--out", str(toy), "--quiet"]
    assert cfg.steps == 4
    refused(args, toy, *words)


def test_a_refused_command_creates_nothing_so_the_corrected_one_runs(tmp_path: Path) -> None:
    """Was: config.toml and run.json were written before the checks, so the fix was refused, and --no-resume
    sent the user back."""
    out = tmp_path / "new"
    sets = sum((["--set", o] for o in TINY), [])
    refused(["train", "toy2d", *sets, "--set", "steps=0", "--out", str(out)], out, "steps must be")
    refused(["train", "toy2d", *sets, "--set", "data.name=nothere.npz", "--out", str(out)], out,
            "file not found: nothere.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    refused(["train", "toy2d", *sets, "--set", f"data.name={bad}", "--out", str(out)], out,
            "is not a NumPy .npz (zip) archive")
    assert not out.exists()
    code, text = run("train", "toy2d", *sets, "--set", "steps=2", "--out", str(out), "--quiet", "--no-resume")
    assert code == 0, text
    refused(["train", "toy2d", *sets, "--set", "steps=2", "--out", str(out), "--no-resume"], out,
            "already holds a trained run; drop --no-resume to continue it")


def test_sample_refuses_bad_input(toy: Path, tmp_path: Path) -> None:
    refused(["sample", str(toy), "--nfe", "0"], toy, "'--nfe'", "1<=x<=10000")
    refused(["sample", str(toy), "--nfe", "-3"], toy, "'--nfe'", "1<=x<=10000")
    refused(["sample", str(toy), "--nfe", "100000"], toy, "'--nfe'", "1<=x<=10000")
    refused(["sample", str(toy), "--nfe", "abc"], toy, "'--nfe'", "'abc' is not a valid integer")
    refused(["sample", str(toy), "--n", "0"], toy, "'--n'")
    refused(["sample", str(toy), "--solver", "nope"], toy, "unknown solver 'nope'; allowed:")
    refused(["sample", str(toy), "--grid", "nope"], toy, "unknown step grid 'nope'; allowed:")
    refused(["sample", str(toy), "--option", "bogus=1"], toy, "bogus")
    refused(["sample", str(toy), "--out", str(toy / "x.png")], toy, "a .png needs images", "shape (2,)",
            "allowed: a .npy file")
    refused(["sample", str(toy), "--out", str(toy / "x.txt")], toy, "unknown extension '.txt'; allowed: .npy")
    refused(["sample", str(tmp_path / "nothere")], tmp_path, "run folder not found")


def test_eval_info_demo_refuse_bad_input(toy: Path, tmp_path: Path) -> None:
    refused(["eval", str(toy), "--nfe", "0"], toy, "'--nfe'")
    refused(["eval", str(toy), "--metrics", "fid,nope"], toy, "unknown metric(s) 'nope'; allowed:")
    refused(["eval", str(toy), "--metrics", "fid"], toy, "fid needs images")
    refused(["eval", str(toy), "--out", str(toy / "e.txt")], toy, "allowed a file name ending in .json")
    refused(["eval", str(toy), "--n", "0"], toy, "'--n'")
    refused(["eval", str(toy), "--solver", "nope"], toy, "unknown solver 'nope'")
    refused(["info", str(tmp_path)], tmp_path, "is not a diffusekit run folder")
    refused(["info", str(tmp_path / "nothere")], tmp_path, "run folder not found")
    refused(["demo", "--steps", "0"], tmp_path, "'--steps'")
    refused(["demo", "--out", str(toy), "--quiet"], toy, "holds a run with")  # a toy run is not the digits demo


def test_config_toml_edits_that_change_the_model_are_refused(toy: Path) -> None:
    """Was: editing the schedule in config.toml sampled values of std ~1e5 without a word."""
    for key, value, was in [("diffusion.schedule", "vp", "edm"), ("diffusion.parameterization", "eps", "edm"),
                            ("model.preset", "small", "tiny")]:
        cfg = RunConfig.from_toml(toy / "config.toml")
        edited = cfg.with_overrides([f"{key}={value}"])
        (toy / "config.toml").write_text(edited.to_toml())
        refused(["sample", str(toy), "--n", "2", "--out", str(toy / "s.npy")], toy,
                f"was trained with {key}='{was}'", f"says '{value}'")
        (toy / "config.toml").write_text(cfg.to_toml())
    info = json.loads((toy / "run.json").read_text())
    (toy / "run.json").write_text(json.dumps({**info, "data_shape": [3]}))
    refused(["sample", str(toy), "--n", "2", "--out", str(toy / "s.npy")], toy, "data_shape=[2]", "says [3]")


def test_version() -> None:
    code, text = run("--version")
    assert code == 0 and text.strip() == f"diffusekit {__version__}"


# ------------------------------------------------------------------------------------------ checkpoints
def test_damaged_checkpoints_are_skipped_and_named(toy: Path, tmp_path: Path) -> None:
    newest = list_checkpoints(toy / "checkpoints")[-1]
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in the last tensor
    newest.write_bytes(bytes(data))
    (toy / "checkpoints" / "latest.json").write_text("{garbage")
    result = CliRunner().invoke(main, ["sample", str(toy), "--n", "3", "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 0, result.output
    assert f"skipped checkpoint {newest.name}" in result.stderr and "fails its checksum" in result.stderr
    code, text = run("info", str(toy))
    assert code == 0 and "checkpoint step 2" in text
    # a truncated state file of the older one too: nothing readable is left for sampling
    state = list_checkpoints(toy / "checkpoints")[0].with_name("step-00000002.safetensors")
    state.write_bytes(state.read_bytes()[:100])
    refused(["sample", str(toy), "--out", str(tmp_path / "t.npy")], toy, "no readable checkpoint",
            "fails its checksum", "is unreadable")
    # training starts again from step 0 and reaches the same weights as the untouched run
    sets = sum((["--set", o] for o in TINY), [])
    result = CliRunner().invoke(main, ["train", "toy2d", *sets, "--out", str(toy), "--quiet"])
    assert result.exit_code == 0 and "training starts again at step 0" in result.stderr, result.output
    assert sorted(p.name for p in (toy / "checkpoints").glob("*.corrupt")) == [
        "step-00000002.safetensors.corrupt", "step-00000002.state.pt.corrupt",
        "step-00000004.safetensors.corrupt", "step-00000004.state.pt.corrupt"]


def test_keep_last_n_and_orphans_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_run(PRESETS["toy2d"].with_overrides([*TINY, "steps=8", "keep_checkpoints=3"]), out, progress=False)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "step-00000004.safetensors", "step-00000006.safetensors", "step-00000008.safetensors"]
    orphan = out / "checkpoints" / ".step-00000010.safetensors.abc123.tmp"
    orphan.write_bytes(b"half")
    messages: list[str] = []
    train_run(PRESETS["toy2d"].with_overrides([*TINY, "steps=10", "keep_checkpoints=3"]), out, progress=False,
              report=messages.append)
    assert not orphan.exists() and any("removed" in m and orphan.name in m for m in messages)
    assert any("resuming" in m and "step 8 of 10" in m for m in messages)


def test_a_finished_run_is_extended_and_its_log_continues(toy: Path) -> None:
    sets = sum((["--set", o] for o in TINY), [])
    code, text = run("train", "toy2d", *sets, "--set", "steps=6", "--out", str(toy), "--quiet")
    assert code == 0 and "trained 6 steps" in text, text
    assert [r["step"] for r in read_metrics(toy / "metrics.jsonl")] == [2, 4, 6]
    code, text = run("train", "toy2d", *sets, "--set", "steps=6", "--out", str(toy), "--quiet")  # already there
    assert code == 0 and [r["step"] for r in read_metrics(toy / "metrics.jsonl")] == [2, 4, 6]


def test_metrics_cut_back_to_the_checkpoint_and_torn_line_tolerated(toy: Path) -> None:
    """Was: a crash before the first checkpoint left rows that a restart appended to again."""
    rows = read_metrics(toy / "metrics.jsonl")
    with open(toy / "metrics.jsonl", "a") as f:  # rows past the checkpoint, then a line cut short
        f.write(json.dumps({**rows[-1], "step": 6}) + "\n" + '{"step": 8, "lo')
    assert [r["step"] for r in read_metrics(toy / "metrics.jsonl")] == [2, 4, 6]
    shutil.rmtree(toy / "checkpoints")  # no checkpoint at all: training restarts at 0 with an empty log
    sets = sum((["--set", o] for o in TINY), [])
    code, text = run("train", "toy2d", *sets, "--out", str(toy), "--quiet")
    assert code == 0, text
    again = read_metrics(toy / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if k not in ("steps_per_sec", "elapsed")} for r in again]
    assert strip == [{k: v for k, v in r.items() if k not in ("steps_per_sec", "elapsed")} for r in rows]


# ------------------------------------------------------------------------------------------ outputs
def test_out_names_extensions_and_umask(toy: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        code, text = run("sample", str(toy), "--n", "3", "--out", str(tmp_path / "plain.npy"))
        sets = sum((["--set", o] for o in TINY), [])
        run("train", "toy2d", *sets, "--set", "steps=6", "--out", str(toy), "--quiet")
    finally:
        os.umask(old)
    assert code == 0 and np.load(tmp_path / "plain.npy").shape == (3, 2)
    assert not (tmp_path / "plain.npy.npy").exists()
    for f in [tmp_path / "plain.npy", toy / "config.toml", toy / "loss.png",
              list_checkpoints(toy / "checkpoints")[-1]]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f  # 0666 & ~0027, not mkstemp's 0600


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    """Was: `make demo > log` wrote ~1,000 carriage-return updates. Now: a line per LINE_INTERVAL seconds, and the last."""
    start = time.monotonic()
    result = CliRunner().invoke(main, ["train", "toy2d", *sum((["--set", o] for o in TINY), []), "--set", "steps=12",
                                       "--out", str(tmp_path / "r")])
    seconds = time.monotonic() - start
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("train:")]
    assert 1 <= len(lines) <= 1 + seconds / LINE_INTERVAL and "12/12 steps (100%)" in lines[-1], result.stderr


# ------------------------------------------------------------------------------------------ README
def _readme_block(heading: str, lang: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_own_data_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `diffusekit` line of "Train on your own data", on tiny files, with few steps and samples."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "my_images" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "my_images" / cls / f"{i}.png")
    np.savez(tmp_path / "my_images.npz", x=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y=np.arange(8) % 2)
    (tmp_path / "my_points.csv").write_text("u,v,label\n" + "".join(
        f"{u:.3f},{v:.3f},{i % 2}\n" for i, (u, v) in enumerate(rng.uniform(-1, 1, (16, 2)))))
    commands = [line.split()[1:] for line in _readme_block("Train on your own data", "bash").splitlines()
                if line.startswith("diffusekit ")]
    assert [c[0] for c in commands] == ["train", "sample"] * 3
    for args in commands:
        if args[0] == "train":  # fast: a few steps, batches no larger than the tiny data
            args = [*args, "--set", "steps=2", "--set", "data.batch_size=4", "--quiet"]
        else:
            args = [*args, "--n", "4", "--nfe", "2"]
        code, text = run(*args)
        assert code == 0, (args, text)
    assert Image.open("my-images.png").mode == "RGB" and Image.open("my-npz.png").mode == "L"
    assert np.load("my-points.npy").shape == (4, 2)
    assert json.loads(Path("runs/my-images/run.json").read_text())["data_shape"] == [3, 32, 32]


def test_readme_conditional_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `diffusekit` line of "Conditional models and guidance", with few steps and samples."""
    monkeypatch.chdir(tmp_path)
    commands = [line.split()[1:] for line in _readme_block("Conditional models and guidance", "bash").splitlines()
                if line.startswith("diffusekit ")]
    assert [c[0] for c in commands] == ["train", "sample", "sample", "sample"]
    for args in commands:
        extra = ["--set", "steps=2", "--quiet"] if args[0] == "train" else ["--n", "2", "--nfe", "2"]
        code, text = run(*args, *extra)
        assert code == 0, (args, text)
    assert json.loads(Path("runs/digits-cond/run.json").read_text())["num_classes"] == 10
    assert all(Path(name).is_file() for name in ("threes.png", "classes.png", "sevens.png"))


@pytest.mark.parametrize("section", ["Thirty seconds of Python", "Hooks: wrappers, constraints, callbacks, partial grids"])
def test_readme_python_snippet_prints_what_the_readme_says(section: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = _readme_block(section, "python")
    printed = re.search(r"prints `(.*?)`", README.read_text().split(f"## {section}", 1)[1]).group(1)  # type: ignore[union-attr]
    with torch.random.fork_rng():
        exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == printed
