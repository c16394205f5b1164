"""Dhariwal & Nichol's Algorithm 1 (``MeanShiftClassifierGuidance``): the ancestral step's mean shifted by
s Sigma grad log p(y | x_t), on the labelled oracle with the exact p(y | x_t)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusekit as dk

from .test_conditional import cond  # noqa: F401 (fixture: a 3-class conditional toy run)
from .test_guidance import conditional_responsibilities, labelled
from .test_run_folder import refused, run

F64 = torch.float64


def draw(den: dk.DenoiserLike, n: int, steps: int, cond: object, *, variance: str = "large",
         shift: bool = True, solver: str = "ddpm") -> torch.Tensor:
    made = dk.make_solver(solver, variance=variance) if solver == "ddpm" else dk.make_solver(solver)
    return dk.sample(den, made, shape=(2,), batch=n, steps=steps, cond=cond, seed=7, dtype=F64, progress=False,
                     constraints=[den] if shift else ()).x  # type: ignore[list-item]


def test_mean_shift_with_the_exact_classifier_draws_the_exact_conditional_law() -> None:
    """s = 1, 100 DDPM steps: log p(x|y), the within-class mode weights and p(y|x) of 4,000 samples match
    exact draws from p(x|y) within Monte-Carlo error, and differ clearly from the unguided sampler's."""
    mix = labelled(dk.VPSchedule())
    n, y = 4000, 0
    x = draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 1.0), n, 100, y)
    exact = mix.sample(n, seed=8, cond=y)
    lp, lp_exact = mix.log_prob(x, None, y), mix.log_prob(exact, None, y)
    se = math.sqrt((lp.var() + lp_exact.var()) / n)
    assert abs(float(lp.mean() - lp_exact.mean())) < 4 * se
    r = conditional_responsibilities(mix, x, y)[:, 1]  # weight of the class's 3/4 mode
    assert abs(float(r.mean()) - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    assert float(mix.class_log_prob(x)[:, y].exp().mean()) > 0.99
    unguided = mix.log_prob(draw(mix, n, 100, None, shift=False), None, y)
    assert float(lp.mean() - unguided.mean()) > 10 * se  # the test can tell guidance from none


@pytest.mark.parametrize("variance", ["small", "large"])
def test_mean_shift_approaches_the_conditional_sampler_at_first_order(variance: str) -> None:
    """With the same noise, Algorithm 1's samples approach the exact conditional model's DDPM samples
    as the steps double, the median gap halving (first order in the step: Sigma vs the exact shift
    (alpha_{t-1}/alpha_t) sigma_{t|t-1}^2 of the score form)."""
    mix = labelled(dk.VPSchedule())
    gaps = []
    for steps in (25, 50, 100, 200):
        guided = draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 1.0), 500, steps, 0, variance=variance)
        gaps.append(float((guided - draw(mix, 500, steps, 0, variance=variance, shift=False)).norm(dim=1).median()))
    ratios = [a / b for a, b in zip(gaps, gaps[1:])]
    assert all(1.6 < q < 3.2 for q in ratios), (gaps, ratios)
    assert gaps[-1] < 0.01, gaps


def test_the_scale_sets_the_law() -> None:
    """s = 0 is the unguided sampler itself (same noise, so its unconditional law, class 0 at its prior
    weight 0.4); the fraction in class 0 grows with s towards 1."""
    mix = labelled(dk.VPSchedule())
    n = 1000
    plain = draw(mix, n, 50, None, shift=False)
    zero = draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 0.0), n, 50, 0)
    torch.testing.assert_close(zero, plain, rtol=0, atol=0)
    share = [float(mix.class_log_prob(draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, s), n, 50, 0))
                   [:, 0].exp().mean()) for s in (0.0, 0.3, 1.0)]
    assert abs(share[0] - 0.4) < 4 * math.sqrt(0.4 * 0.6 / n), share
    assert share[0] + 0.1 < share[1] < share[2] - 0.1 and share[2] > 0.99, share


def test_mean_shift_on_a_conditional_model_and_ddim() -> None:
    """inner_cond: the conditional model guided again (s = 0: exactly its run); DDIM with eta = 1 is DDPM with
    the small variance, guided alike."""
    mix = labelled(dk.VPSchedule())
    cond = draw(mix, 64, 20, 1, shift=False)
    torch.testing.assert_close(draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 0.0, inner_cond=True),
                                    64, 20, 1), cond, rtol=0, atol=0)
    guided = lambda solver: draw(dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 1.0), 64, 20, 1,  # noqa: E731
                                 variance="small", solver=solver)
    ddim = dk.sample(g := dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 1.0), dk.make_solver("ddim", eta=1.0),
                     shape=(2,), batch=64, steps=20, cond=1, seed=7, dtype=F64, progress=False, grid="uniform_t",
                     constraints=[g]).x
    torch.testing.assert_close(ddim, guided("ddpm"), rtol=1e-9, atol=1e-9)


def test_mean_shift_refuses_what_it_cannot_do() -> None:
    mix = labelled(dk.VPSchedule())
    guide = lambda: dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, 1.0)  # noqa: E731
    for solver in ("dpmpp_2m", "ddim"):
        with pytest.raises(ValueError, match=f"needs an ancestral solver; allowed: ddpm, or ddim with eta > 0; "
                                             f"got solver '{solver}'"):
            g = guide()
            dk.sample(g, dk.make_solver(solver), shape=(2,), batch=4, steps=5, cond=0, progress=False, constraints=[g])
    with pytest.raises(ValueError, match=r"must also be passed in sample\(..., constraints"):
        dk.sample(guide(), dk.make_solver("ddpm"), shape=(2,), batch=4, steps=5, cond=0, progress=False)
    with pytest.raises(ValueError, match="needs class labels as cond"):
        guide()(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        dk.MeanShiftClassifierGuidance(mix, mix.class_log_prob, -1.0)


# ---- the command line -------------------------------------------------------------------------
def test_mean_shift_from_the_cli(cond: Path, tmp_path: Path) -> None:  # noqa: F811
    """``--classifier-form mean-shift``: ddpm by default; s = 0 is the unguided ddpm run; s = 2 moves the samples;
    ddim with eta > 0 is accepted, other solvers and misuse are refused in one line."""
    folder = tmp_path / "clf"
    code, text = run("train-classifier", str(cond), "--steps", "20", "--width", "16", "--out", str(folder), "--quiet")
    assert code == 0, text

    def draw_cli(name: str, *args: str) -> np.ndarray:
        code, text = run("sample", str(cond), "--n", "6", "--nfe", "8", "--out", str(tmp_path / name), *args)
        assert code == 0, text
        return np.load(tmp_path / name)

    shift = ("--class", "1", "--classifier", str(folder), "--classifier-form", "mean-shift")
    plain = draw_cli("u.npy", "--solver", "ddpm")
    np.testing.assert_allclose(draw_cli("s0.npy", *shift, "--scale", "0"), plain, atol=1e-6)
    guided = draw_cli("s2.npy", *shift, "--scale", "2")
    assert np.isfinite(guided).all() and not np.allclose(guided, plain, atol=1e-4)
    np.testing.assert_allclose(draw_cli("d2.npy", *shift, "--scale", "2", "--solver", "ddpm"), guided)
    assert draw_cli("e.npy", *shift, "--solver", "ddim", "--option", "eta=0.5").shape == (6, 2)
    refused(["sample", str(cond), *shift, "--solver", "dpmpp_2m"], cond,
            "classifier guidance form 'mean-shift'", "allowed: ddpm, or ddim with eta > 0; got solver 'dpmpp_2m'")
    refused(["sample", str(cond), *shift, "--solver", "ddim"], cond, "got solver 'ddim'")
    refused(["sample", str(cond), "--class", "1", "--classifier", str(folder), "--classifier-form", "shifted"], cond,
            "--classifier-form must be one of score, mean-shift, got 'shifted'")
    refused(["sample", str(cond), "--class", "1", "--classifier-form", "mean-shift"], cond,
            "--classifier-form goes with --classifier guidance")
