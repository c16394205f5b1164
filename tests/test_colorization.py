"""Colorization: the decorrelating transform, the greyscale operator, luminance kept exactly, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import diffusekit as dk
from diffusekit.cli import main
from diffusekit.data.emoji import EMOJI_FONT, load_emoji
from diffusekit.oracle import GaussianMixture
from diffusekit.tasks import Replacement
from diffusekit.tasks.colorization import Greyscale, decorrelating_transform


@pytest.mark.parametrize("weights", [(1 / 3, 1 / 3, 1 / 3), (0.299, 0.587, 0.114), (0.0, 0.2, 0.8)])
def test_transform_is_orthogonal_with_luminance_first(weights: tuple[float, float, float]) -> None:
    m = decorrelating_transform(weights)
    assert torch.allclose(m @ m.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    w = torch.tensor(weights, dtype=torch.float64)
    assert torch.allclose(m[0], w / w.norm(), atol=1e-12)


def test_greyscale_operator_identities() -> None:
    op = Greyscale("rec601")
    a = op.matrix((3, 2, 2))
    assert torch.allclose(a @ a.T, torch.eye(4, dtype=torch.float64), atol=1e-12)  # A A^T = I
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    assert torch.allclose(op.from_decorrelated(op.to_decorrelated(x)), x, atol=1e-12)
    lum = (torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[None, :, None, None] * x).sum(1, keepdim=True)
    assert torch.allclose(op.luminance(x), lum, atol=1e-12)
    assert torch.allclose(op(op.grey_image(lum)), op.measurement(lum), atol=1e-12)
    # replacement's projection is the decoupling: swap the luminance channel, keep the two others
    y = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    z = op.to_decorrelated(x)
    assert torch.allclose(op.project(x, y), op.from_decorrelated(torch.cat([y, z[:, 1:]], 1)), atol=1e-12)
    with pytest.raises(ValueError, match="unknown luminance weights 'hsv'; allowed: mean, rec601"):
        Greyscale("hsv")
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, H, W\), got shape \(5, 1, 2, 2\)"):
        op(y)


def test_replacement_keeps_the_luminance_exactly_and_colours_vary() -> None:
    """On an exact RGB mixture prior: every sample has the given luminance, the colour channels differ."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture(torch.randn(3, 12, generator=g, dtype=torch.float64), 0.3, dk.VPSchedule(), shape=(3, 2, 2))
    op = Greyscale("mean")
    truth = gm.sample(1, seed=1)
    grey = op.luminance(truth)
    sol = dk.sample(gm, dk.make_solver("ddpm"), steps=50, shape=(3, 2, 2), batch=64, dtype=torch.float64,
                    constraints=[Replacement(op, op.measurement(grey))], progress=False)
    assert torch.allclose(op.luminance(sol.x), grey.expand(64, -1, -1, -1), atol=1e-10)
    assert float(op.to_decorrelated(sol.x)[:, 1:].std(0).mean()) > 0.05


def test_emoji_size_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="emoji size must be an integer from 8 to 128, got 4"):
        load_emoji(4, cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not Path(EMOJI_FONT).is_file(), reason="fonts-noto-color-emoji is not installed")
def test_emoji_render_and_cache(tmp_path: Path) -> None:
    x, labels = load_emoji(8, cache_dir=tmp_path)
    assert labels is None and x.shape[1:] == (3, 8, 8) and x.shape[0] > 1000
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and (tmp_path / "emoji-8.npz").is_file()
    assert float(x.std(1).mean()) > 0.02  # colour: the channels differ
    assert torch.equal(load_emoji(8, cache_dir=tmp_path)[0], x)  # read back from the cache


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgb")
    data = np.random.default_rng(0).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    np.save(root / "data.npy", data)
    code, text = cli("train", "digits", "--set", f"data.name={root / 'data.npy'}", "--set", "steps=2", "--set", "data.batch_size=8",
                     "--set", "model.preset=tiny", "--out", str(root / "run"), "--quiet")
    assert code == 0, text
    return root


def test_colorize_cli_round_trip(rgb_run: Path, tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    code, text = cli("colorize", str(rgb_run / "run"), str(tmp_path / "in.png"), "--nfe", "4", "--out", str(tmp_path / "o"))
    assert code == 0, text
    out = np.load(tmp_path / "o" / "colorized.npz")
    assert out["x"].shape == (1, 3, 8, 8) and (tmp_path / "o" / "grid.png").is_file()
    op = Greyscale("mean")
    x = torch.from_numpy(out["x"]).double()
    grey = torch.from_numpy(rgb).double().permute(2, 0, 1)[None].mean(1, keepdim=True) / 127.5 - 1
    inside = (x.abs() < 1).all(1, keepdim=True)  # clamping to [-1, 1] can move the luminance of saturated pixels
    assert torch.allclose(op.luminance(x)[inside], grey[inside], atol=1e-5)
    # greyscale input (mode L), RePaint resampling
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    code, text = cli("colorize", str(rgb_run / "run"), str(tmp_path / "grey.png"), "--nfe", "6", "--resamples", "2",
                     "--jump", "2", "--out", str(tmp_path / "o2"))
    assert code == 0 and "NFE" in text, text


def test_colorize_cli_bad_input(rgb_run: Path, tmp_path: Path) -> None:
    run_dir = str(rgb_run / "run")
    code, text = cli("colorize", run_dir, str(tmp_path / "missing.png"))
    assert code == 2 and "input not found" in text and len(text.strip().splitlines()) == 1
    (tmp_path / "x.txt").write_text("1")
    code, text = cli("colorize", run_dir, str(tmp_path / "x.txt"))
    assert code == 2 and "unsupported file type '.txt'; allowed: .png" in text
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 4), np.float32))
    code, text = cli("colorize", run_dir, str(tmp_path / "bad.npy"))
    assert code == 2 and "shape (3, 4, 4); allowed: (1 or 3, 8, 8)" in text
    code, text = cli("colorize", run_dir, str(rgb_run / "data.npy"), "--solver", "nope")
    assert code == 2 and "nope" in text
    code, text = cli("colorize", run_dir, str(rgb_run / "data.npy"), "--nfe", "4", "--resamples", "3", "--jump", "9")
    assert code == 2 and "jump_length=9 must be below steps=4" in text
