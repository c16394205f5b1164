"""`diffusekit eval --metrics vlb` and `eval --vlb` are one bound: the same variance and trajectory, with the
run's learned variance by default on a run with a variance head (a tiny learned-variance toy run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffusekit.cli import main
from diffusekit.config import PRESETS
from diffusekit.evaluate import evaluate_run, real_data
from diffusekit.likelihood import discrete_vlb
from diffusekit.pipeline import load_run, train_run

LEARNED = ["steps=2", "checkpoint_every=2", "log_every=2", "data.num_samples=256", "data.batch_size=64",
           "model.learn_variance=true", "diffusion.loss='hybrid'", "diffusion.schedule='discrete'",
           "diffusion.parameterization='eps'", "diffusion.weighting='eps'", "diffusion.time_sampling='uniform'"]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("learned") / "run"
    train_run(PRESETS["toy2d"].with_overrides(LEARNED), out, progress=False, report=lambda m: None)
    return out


def test_vlb_metric_defaults_to_the_learned_variance_on_every_step(learned_run: Path) -> None:
    result = evaluate_run(learned_run, "vlb", n=16, progress=False)["metrics"]["vlb"]
    run = load_run(learned_run, report=lambda m: None)
    x = real_data(run, 16).x
    bound = {v: float(discrete_vlb(run.denoiser, x, variance=v, decoder="gaussian").total.mean() / 2)
             for v in ("learned", "small")}
    assert abs(bound["learned"] - bound["small"]) > 1e-3  # the two variances give different bounds here
    assert result["value"] == pytest.approx(bound["learned"], rel=1e-6)
    assert result["details"]["variance"] == "learned" and result["details"]["K"] == 1000


def test_metric_and_vlb_flag_give_one_bound_for_the_variance_and_trajectory_asked(learned_run: Path,
                                                                                 tmp_path: Path) -> None:
    setting = ["--variance", "large", "--trajectory", "quadratic", "--nfe", "5", "--n", "16", "--quiet"]
    code, text = run_cli("eval", str(learned_run), "--vlb", *setting, "--out", str(tmp_path / "v.json"))
    assert code == 0, text
    flag = json.loads((tmp_path / "v.json").read_text())
    code, text = run_cli("eval", str(learned_run), "--metrics", "vlb", *setting, "--out", str(tmp_path / "e.json"))
    assert code == 0, text
    metric = json.loads((tmp_path / "e.json").read_text())["metrics"]["vlb"]
    assert (flag["variance"], flag["trajectory"], flag["K"]) == ("large", "quadratic", 5)
    assert metric["details"]["steps"] == flag["steps"] and len(flag["steps"]) == 5
    assert metric["value"] == pytest.approx(flag["bound"], rel=1e-9)
    code, text = run_cli("eval", str(learned_run), "--vlb", "--nfe", "5", "--n", "16", "--quiet",
                         "--out", str(tmp_path / "w.json"))  # --nfe alone with --vlb: the even 5-step trajectory
    assert code == 0 and "learned variance, even trajectory, K = 5" in text, text


def test_bound_settings_are_checked_first(learned_run: Path) -> None:
    code, text = run_cli("eval", str(learned_run), "--metrics", "sw", "--variance", "large", "--quiet")
    assert code == 2 and "with vlb among the metrics" in text and len(text.strip().splitlines()) == 1, text
    code, text = run_cli("eval", str(learned_run), "--metrics", "vlb", "--trajectory", "best", "--quiet")
    assert code == 2 and "trajectory must be one of even, quadratic, dp, got 'best'" in text, text
