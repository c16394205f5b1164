"""`diffusekit inpaint / superres / deblur / sdedit` end to end on a tiny run, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffusekit.cli import main
from diffusekit.data.images import load_digits
from diffusekit.tasks import AvgPool
from diffusekit.tasks.commands import parse_mask


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("tasks")
    code, text = run("train", "digits", "--set", "steps=2", "--out", str(root / "run"), "--quiet")
    assert code == 0, text
    x = load_digits()[0][:5].numpy()
    np.save(root / "x.npy", x)
    return root, x


def test_inpaint_keeps_the_seen_pixels_and_writes_a_grid(tiny: tuple[Path, np.ndarray]) -> None:
    root, x = tiny
    for method in ("replacement", "repaint", "ddnm"):
        out = root / f"in_{method}.npy"
        code, text = run("inpaint", str(root / "run"), str(root / "x.npy"), "--method", method, "--steps", "4",
                         "--jump", "2", "--resamples", "2", "--out", str(out))
        assert code == 0 and "NFE" in text, text
        r = np.load(out)
        assert r.shape == x.shape
        keep = parse_mask("bottom", (1, 8, 8)).keep.numpy()
        np.testing.assert_allclose(r[:, keep], x[:, keep], atol=1e-5)  # the seen top half is kept exactly
        assert Image.open(root / f"in_{method}_grid.png").size[0] > 5 * 8


def test_superres_from_a_png_and_a_folder_is_consistent_with_the_low_res_input(tiny: tuple[Path, np.ndarray]) -> None:
    root, x = tiny
    low = AvgPool(2)(__import__("torch").from_numpy(x)).numpy()
    folder = root / "low"
    folder.mkdir()
    for i, im in enumerate(low):
        Image.fromarray(np.round((im[0] + 1) * 127.5).astype(np.uint8)).save(folder / f"{i}.png")
    code, text = run("superres", str(root / "run"), str(folder), "--method", "ddnm", "--steps", "3",
                     "--out", str(root / "sr.npy"))
    assert code == 0, text
    r = np.load(root / "sr.npy")
    assert r.shape == (5, 1, 8, 8)
    # DDNM ends on A x = y (up to the 8-bit rounding of the PNGs)
    pooled = AvgPool(2)(__import__("torch").from_numpy(r)).numpy()
    assert np.abs(pooled - low).max() < 0.01
    code, text = run("superres", str(root / "run"), str(folder / "0.png"), "--steps", "2", "--out", str(root / "one.npy"))
    assert code == 0 and np.load(root / "one.npy").shape == (1, 1, 8, 8), text


def test_deblur_and_sdedit_round_trip(tiny: tuple[Path, np.ndarray]) -> None:
    root, x = tiny
    code, text = run("deblur", str(root / "run"), str(root / "x.npy"), "--blur", "0.8", "--noise", "0.05", "--steps", "3",
                     "--out", str(root / "db.npy"))
    assert code == 0 and np.load(root / "db.npy").shape == x.shape, text
    code, text = run("sdedit", str(root / "run"), str(root / "x.npy"), "--t0", "0.5", "--nfe", "4", "--out",
                     str(root / "ed.npy"))
    assert code == 0 and "t0=0.5" in text and np.load(root / "ed.npy").shape == x.shape, text
    assert (root / "ed_grid.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["inpaint", "{run}", "{x}", "--mask", "box:6,6,4,4"], "--mask 'box:6,6,4,4'"),
    (["inpaint", "{run}", "{x}", "--mask", "random:2"], "allowed: bottom"),
    (["superres", "{run}", "{x}"], "shape (1, 8, 8); allowed: (1, 4, 4)"),
    (["superres", "{run}", "{x}", "--factor", "3"], "--factor 3"),
    (["deblur", "{run}", "{x}", "--method", "magic"], "unknown method 'magic'"),
    (["deblur", "{run}", "{x}", "--noise", "-1"], "--noise"),
    (["sdedit", "{run}", "{x}", "--t0", "500"], "500"),
    (["sdedit", "{run}", "{root}/missing.png"], "input not found"),
    (["sdedit", "{run}", "{x}", "--out", "{root}/e.png"], "ending in .npy"),
    (["inpaint", "{root}/nope", "{x}"], "run folder not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny: tuple[Path, np.ndarray], args: list[str], message: str) -> None:
    root, _ = tiny
    before = set(root.rglob("*"))
    code, text = run(*[a.format(run=root / "run", x=root / "x.npy", root=root) for a in args])
    assert code == 2 and message in text and text.count("\n") == 1, text
    assert set(root.rglob("*")) == before


def test_sr3_run_trains_on_the_low_res_condition_and_superres_samples_it(tiny: tuple[Path, np.ndarray]) -> None:
    import torch

    from diffusekit.config import PRESETS
    from diffusekit.pipeline import load_run, lowres_condition, prepare_run

    root, x = tiny
    cfg = PRESETS["digits"].with_overrides(["steps=2", 'data.condition="lowres:2"'])
    prepared = prepare_run(cfg, root / "sr3-check", progress=False)
    xb, cond = prepared.loader.batch(0, 0)
    torch.testing.assert_close(cond, lowres_condition(xb, 2))  # each image with its own pooled copy
    code, text = run("train", "digits", "--set", "steps=2", "--set", 'data.condition="lowres:2"', "--out",
                     str(root / "sr3"), "--quiet")
    assert code == 0, text
    net = load_run(root / "sr3").denoiser.net
    t = torch.zeros(2)
    a = torch.from_numpy(x[:2])
    assert not torch.allclose(net(a, t, lowres_condition(a, 2)), net(a, t, torch.zeros_like(a)))  # the condition is used
    np.save(root / "low.npy", lowres_condition(a, 2)[:, :, ::2, ::2].numpy())
    code, text = run("superres", str(root / "sr3"), str(root / "low.npy"), "--out", str(root / "sr3.npy"))
    assert code == 0 and "SR3" in text and np.load(root / "sr3.npy").shape == (2, 1, 8, 8), text
    code, text = run("superres", str(root / "sr3"), str(root / "low.npy"), "--factor", "4")
    assert code == 2 and "trained for factor 2" in text
    code, text = run("train", "digits", "--set", 'data.condition="lowres:3"', "--out", str(root / "bad"), "--quiet")
    assert code == 2 and "divisible by 3" in text
    code, text = run("sample", str(root / "sr3"), "--nfe", "2")
    assert code == 2 and "diffusekit superres" in text
