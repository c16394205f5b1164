"""`diffusekit sample --variance/--trajectory`, `eval --vlb` and `train RUN --head` on a tiny DDPM run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diffusekit.cli import main
from diffusekit.likelihood.analytic import MOMENTS_FILE, run_moments
from diffusekit.pipeline import load_run, load_training_data
from diffusekit.run_variances import load_head

pytestmark = pytest.mark.slow  # trains a tiny run, estimates moments at 1,000 steps (~1 min on a shared CPU)

DDPM = ["--set", "diffusion.schedule=discrete", "--set", "diffusion.parameterization=eps", "--set",
        "diffusion.time_sampling=discrete", "--set", "diffusion.weighting=simple", "--set", "diffusion.p_uncond=0"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    code, text = run("train", "digits", "--set", "steps=3", "--set", "model.preset=tiny", *DDPM, "--out", str(out), "--quiet")
    assert code == 0, text
    loaded = load_run(out)
    run_moments(out, loaded.denoiser, load_training_data(loaded.config)[0], samples=2)  # few samples: a fast test
    return out


def test_heads_train_and_every_variance_samples_and_bounds(tiny_run: Path, tmp_path: Path) -> None:
    code, text = run("train", str(tiny_run), "--head", "npr", "--head-steps", "3", "--quiet")
    assert code == 0 and "npr head" in text, text
    assert load_head(tiny_run, "npr").kind == "npr" and (tiny_run / MOMENTS_FILE).is_file()
    for variance, trajectory, extra in (("analytic", "dp", []), ("npr", "quadratic", []), ("large", "even", []),
                                        ("analytic", "even", ["--solver", "ddim", "--option", "eta=0"])):
        out = tmp_path / f"{variance}-{trajectory}.npy"
        code, text = run("sample", str(tiny_run), "--variance", variance, "--trajectory", trajectory, "--nfe", "4",
                         "--n", "3", *extra, "--out", str(out))
        assert code == 0, text
        assert np.isfinite(np.load(out)).all() and "4 NFE" in text
    code, text = run("eval", str(tiny_run), "--vlb", "--variance", "analytic", "--trajectory", "dp", "--nfe", "5",
                     "--n", "6", "--quiet", "--out", str(tmp_path / "v.json"))
    assert code == 0 and "bits/dim" in text, text
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["K"] == 5 and len(res["steps"]) == 5 and res["steps"][-1] == 1000 and np.isfinite(res["bound"])


def test_variance_options_give_one_line_errors(tiny_run: Path) -> None:
    code, text = run("sample", str(tiny_run), "--variance", "sn", "--nfe", "3")
    assert code == 2 and "no sn head; train one: diffusekit train" in text, text
    code, text = run("sample", str(tiny_run), "--variance", "optimal", "--nfe", "3")
    assert code == 2 and "--variance must be one of" in text, text
    code, text = run("sample", str(tiny_run), "--variance", "small", "--solver", "heun", "--nfe", "3")
    assert code == 2 and "apply to the ancestral samplers" in text, text
    code, text = run("sample", str(tiny_run), "--variance", "small", "--solver", "ddim", "--nfe", "3")
    assert code == 2 and "needs a variance made for eta=0" in text, text
    code, text = run("eval", str(tiny_run), "--vlb", "--trajectory", "best", "--nfe", "3", "--quiet")
    assert code == 2 and "trajectory must be one of" in text, text
    code, text = run("sample", str(tiny_run), "--variance", "learned", "--nfe", "3")
    assert code == 2 and "learned" in text, text
