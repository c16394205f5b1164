"""Class-conditional runs (``data.labels = true``): labels reach the network, label dropout to the null
label at rate ``diffusion.p_uncond`` (Ho & Salimans 2022 joint training), and the CLI's ``--class`` /
``--cfg`` sampling with its one-line refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.config import PRESETS, RunConfig
from diffusekit.pipeline import prepare_run, train_run
from diffusekit.train import Trainer, newest_checkpoint

from .test_run_folder import TINY, refused, run, toy, trained  # noqa: F401 (fixtures: an unconditional toy run)

CLASSES = 3


def labelled_points(path: Path, n: int) -> Path:
    """``n`` 2-D points in three clusters, the cluster index as label, as an .npz."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % CLASSES
    centres = np.array([[-0.6, -0.5], [0.6, -0.5], [0.0, 0.6]])
    np.savez(path, x=(centres[y] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32), y=y)
    return path


def toy_config(data: Path, *sets: str) -> RunConfig:
    return PRESETS["toy2d"].with_overrides([*TINY, f"data.name={data}", "data.labels=true", *sets])


@pytest.fixture(scope="module")
def cond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-step class-conditional toy run on three labelled clusters (the tests only read it)."""
    folder = tmp_path_factory.mktemp("cond")
    out = folder / "run"
    cfg = toy_config(labelled_points(folder / "points.npz", 256), "steps=40", "checkpoint_every=20")
    train_run(cfg, out, progress=False)
    return out



@pytest.mark.parametrize("p_uncond", [0.0, 0.3])
def test_labels_reach_the_network_and_are_dropped_at_rate_p_uncond(tmp_path: Path, p_uncond: float) -> None:
    n = 4096
    cfg = toy_config(labelled_points(tmp_path / "points.npz", n), f"data.batch_size={n}", f"diffusion.p_uncond={p_uncond}")
    prepared = prepare_run(cfg, tmp_path / "run", progress=False)
    net = prepared.denoiser.net
    assert net.num_classes == CLASSES and prepared.info.num_classes == CLASSES
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[2].clone()))
    start = prepared.loader.state_dict()
    _, labels = next(iter(prepared.loader))
    prepared.loader.load_state_dict(start)  # the trainer gets this same first batch
    Trainer(prepared.denoiser, prepared.loader, prepared.loss, prepared.train_config).fit(1)
    (given,) = seen
    dropped = given == CLASSES  # the null label
    assert torch.equal(given[~dropped], labels[~dropped])
    rate, sd = float(dropped.double().mean()), math.sqrt(p_uncond * (1 - p_uncond) / n)
    assert abs(rate - p_uncond) <= 4 * sd + 1e-12, (rate, p_uncond)


def test_run_json_and_checkpoints_record_the_classes(cond: Path) -> None:
    assert run("info", str(cond))[1].count("classes 3") == 1
    ckpt, _ = newest_checkpoint(cond / "checkpoints")
    assert ckpt is not None and ckpt.meta["num_classes"] == CLASSES and ckpt.meta["data.labels"] is True


def test_older_configs_are_read_with_the_new_keys(tmp_path: Path) -> None:
    d = PRESETS["digits"].to_dict()
    del d["data"]["labels"], d["diffusion"]["p_uncond"]
    old = RunConfig.from_dict({**d, "model": {**d["model"], "class_conditional": False},
                               "diffusion": {**d["diffusion"], "label_dropout": 0.0}})
    assert old == PRESETS["digits"]
    cond = RunConfig.from_dict({**d, "model": {**d["model"], "class_conditional": True},
                                "diffusion": {**d["diffusion"], "label_dropout": 0.2}})
    assert cond.data.labels is True and cond.diffusion.p_uncond == 0.2


def test_conditional_training_refuses_bad_input_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = sum((["--set", o] for o in TINY), [])
    refused(["train", "toy2d", *sets, "--set", "data.labels=true", "--out", str(out)], out,
            "data.labels = true needs class labels, but mixture has none; allowed: digits")
    refused(["train", "toy2d", *sets, "--set", "diffusion.p_uncond=1", "--out", str(out)], out,
            "diffusion.p_uncond must be a number >= 0 and < 1, got 1")
    refused(["train", "toy2d", *sets, "--set", "data.labels=yes", "--out", str(out)], out,
            "data.labels must be true or false, got 'yes'")
    assert not out.exists()


def test_class_and_cfg_sampling(cond: Path, tmp_path: Path) -> None:
    def draw(name: str, *args: str) -> np.ndarray:
        code, text = run("sample", str(cond), "--n", "6", "--nfe", "4", "--out", str(tmp_path / name), *args)
        assert code == 0, text
        return np.load(tmp_path / name)

    uncond = draw("u.npy")
    cond3 = draw("c.npy", "--class", "2")
    np.testing.assert_allclose(draw("w1.npy", "--class", "2", "--cfg", "1"), cond3)
    np.testing.assert_allclose(draw("w0.npy", "--class", "2", "--cfg", "0"), uncond, atol=1e-5)
    guided = draw("w3.npy", "--class", "2", "--cfg", "3")
    assert not np.allclose(guided, cond3, atol=1e-4) and np.isfinite(guided).all()
    np.testing.assert_allclose(draw("r.npy", "--class", "2", "--cfg", "3", "--cfg-interval", "0,1e9",
                                    "--cfg-rescale", "0"), guided, atol=1e-6)
    assert not np.allclose(draw("i.npy", "--class", "2", "--cfg", "3", "--cfg-interval", "0,0.5"), guided, atol=1e-4)
    every = draw("all.npy", "--class", "all", "--cfg", "2")
    assert every.shape == (CLASSES * 6, 2)
    np.testing.assert_allclose(every[:6], draw("w2.npy", "--class", "0", "--cfg", "2"), atol=1e-5)


def test_class_all_grid_has_a_labelled_row_per_class(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    code, text = run("train", "digits", "--set", "steps=2", "--set", "data.labels=true", "--out", str(out), "--quiet")
    assert code == 0, text
    for args, name in [([], "plain.png"), (["--class", "all", "--cfg", "2"], "rows.png")]:
        code, text = run("sample", str(out), "--n", "3", "--nfe", "2", "--solver", "ddim", *args,
                         "--out", str(tmp_path / name))
        assert code == 0, text
    plain, rows = (np.asarray(Image.open(tmp_path / n)) for n in ("plain.png", "rows.png"))
    assert rows.shape[0] > plain.shape[0] and rows.shape[1] > 3 * 40  # 10 rows of 3, and a label margin
    margin = rows[:, :8]
    assert margin.max() > 0 and len({int(r) for r in np.nonzero(margin.max(1))[0] // (rows.shape[0] // 10)}) == 10


def test_class_and_cfg_refuse_bad_input(cond: Path, toy: Path) -> None:
    refused(["sample", str(cond), "--class", "3"], cond, "--class must be an integer from 0 to 2 or all",
            "3 classes", "got '3'")
    refused(["sample", str(cond), "--class", "-1"], cond, "got '-1'")
    refused(["sample", str(cond), "--class", "some"], cond, "got 'some'")
    refused(["sample", str(cond), "--class", "1", "--cfg", "-1"], cond, "'--cfg'", "-1.0 is not in the range x>=0")
    refused(["sample", str(cond), "--class", "1", "--cfg", "inf"], cond, "scale must be a finite number >= 0, got inf")
    refused(["sample", str(cond), "--cfg", "2"], cond, "--cfg needs --class")
    refused(["sample", str(cond), "--class", "1", "--cfg-rescale", "0.5"], cond, "--cfg-rescale needs --cfg")
    refused(["sample", str(cond), "--class", "1", "--cfg-interval", "0,1"], cond, "--cfg-interval needs --cfg")
    refused(["sample", str(cond), "--class", "1", "--cfg", "2", "--cfg-rescale", "2"], cond, "'--cfg-rescale'")
    refused(["sample", str(cond), "--class", "1", "--cfg", "2", "--cfg-interval", "3,1"], cond,
            "interval must be (lo, hi) with 0 <= lo < hi", "(3.0, 1.0)")
    refused(["sample", str(cond), "--class", "1", "--cfg", "2", "--cfg-interval", "x"], cond,
            "--cfg-interval expects lo,hi", "got 'x'")
    refused(["sample", str(toy), "--class", "1"], toy, "--class needs a class-conditional run")
    refused(["sample", str(toy), "--class", "1", "--cfg", "2"], toy,
            "--class needs a class-conditional run")
    refused(["sample", str(toy), "--cfg", "2"], toy, "--cfg needs a class-conditional run")


def test_cfg_on_a_run_without_label_dropout_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_run(toy_config(labelled_points(tmp_path / "points.npz", 64), "diffusion.p_uncond=0"), out, progress=False)
    refused(["sample", str(out), "--class", "1", "--cfg", "2"], out, "diffusion.p_uncond = 0", "got 2.0")
    assert run("sample", str(out), "--class", "1", "--cfg", "1", "--n", "2", "--nfe", "2",
               "--out", str(tmp_path / "ok.npy"))[0] == 0
