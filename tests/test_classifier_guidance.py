"""The noise-aware classifier p(y | x_t, t): trained with the Trainer on the labelled oracle it
approaches the exact p(y | x_t), and guidance through it approaches exact classifier guidance;
``diffusekit train-classifier`` and ``sample --classifier / --energy`` end to end, and their refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.models.noisy_classifier import NoisyClassifier, TimeClassifier
from diffusekit.oracle import GaussianMixture
from diffusekit.train.classifier import ClassifierLoss, fit_classifier, load_classifier

from .test_conditional import cond  # noqa: F401 (fixture: a 3-class conditional toy run)
from .test_guidance import conditional_responsibilities, labelled
from .test_run_folder import refused, run, toy, trained  # noqa: F401 (fixtures: an unlabelled toy run)

F64 = torch.float64
COUNTS = (2400, 1200, 2400)  # the labelled oracle's class weights 0.4, 0.2, 0.4


@pytest.fixture(scope="module")
def oracle_and_classifier() -> tuple[GaussianMixture, TimeClassifier]:
    """The 3-class 2-D oracle (VP) and a noise-aware MLP classifier trained 250 steps on 6,000 exact draws."""
    torch.manual_seed(0)
    mix = labelled(dk.VPSchedule())
    x = torch.cat([mix.sample(c, seed=y, cond=y) for y, c in enumerate(COUNTS)]).float()
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(COUNTS)])
    model = TimeClassifier(NoisyClassifier((2,), 3, width=64, depth=2), mix.schedule)
    fit_classifier(model, x, y, 250, batch_size=256, lr=3e-3)
    return mix, model.eval()


def test_trained_classifier_approaches_the_exact_posterior(
        oracle_and_classifier: tuple[GaussianMixture, TimeClassifier]) -> None:
    """KL(exact p(y|x_t) || trained) is small at every noise level, far below the untrained net's."""
    mix, model = oracle_and_classifier
    untrained = TimeClassifier(NoisyClassifier((2,), 3, width=64, depth=2), mix.schedule)
    for t in (0.05, 0.3, 0.6, 0.9):
        x = mix.sample(2000, seed=20, t=t)
        exact = mix.class_log_prob(x, t)

        def kl(m: TimeClassifier) -> float:
            with torch.no_grad():
                log_q = torch.log_softmax(m(x.float(), t).double(), 1)
            return float((exact.exp() * (exact - log_q)).sum(1).mean())

        assert kl(model) < 0.03 and kl(model) < 0.1 * kl(untrained), (t, kl(model), kl(untrained))


def test_guidance_with_the_trained_classifier_approaches_exact_classifier_guidance(
        oracle_and_classifier: tuple[GaussianMixture, TimeClassifier]) -> None:
    """Guided eps where class y's guided samples are (x_t ~ p_t(x | y)): the trained classifier's error
    against exact classifier guidance is a fraction of the guidance term, far below an untrained one's;
    4,000 samples of class 0: log p(x|y), class and mode weights near the exact conditional law."""
    mix, model = oracle_and_classifier
    untrained = TimeClassifier(NoisyClassifier((2,), 3, width=64, depth=2), mix.schedule)
    y = torch.arange(3).repeat_interleave(100)
    as64 = lambda m: (lambda x, t: m(x.float(), t).double())  # noqa: E731
    clf = as64(model)
    for t in (0.1, 0.3, 0.5, 0.8):
        x = torch.cat([mix.sample(100, seed=21 + k, cond=k, t=t) for k in range(3)])
        exact = dk.ClassifierGuidance(mix, mix.class_log_prob, 1.0)(x, t, y).eps
        term = float((exact - mix(x, t).eps).norm(dim=1).mean())
        err, err0 = (float((dk.ClassifierGuidance(mix, c, 1.0)(x, t, y).eps - exact).norm(dim=1).mean()) / term
                     for c in (clf, as64(untrained)))
        assert err < 0.6 and err < 0.4 * err0, (t, err, err0)
    n, cls = 4000, 0
    draw = lambda den, c: dk.sample(den, dk.make_solver("dpmpp_2m"), shape=(2,), batch=n, steps=25,  # noqa: E731
                                    cond=c, seed=7, dtype=F64, progress=False).x
    guided, exact = draw(dk.ClassifierGuidance(mix, clf, 1.0), cls), mix.sample(n, seed=8, cond=cls)
    lp, lp_exact = mix.log_prob(guided, None, cls), mix.log_prob(exact, None, cls)
    unguided = mix.log_prob(draw(mix, None), None, cls)
    gap, gap_unguided = float(lp_exact.mean() - lp.mean()), float(lp_exact.mean() - unguided.mean())
    assert abs(gap) < 0.05 * gap_unguided, (gap, gap_unguided)
    assert float(mix.class_log_prob(guided)[:, cls].exp().mean()) > 0.97
    r = conditional_responsibilities(mix, guided, cls)[:, 1].mean()
    assert abs(float(r) - 0.75) < 0.05  # the 3/4 component of class 0 (exact: 0.75)


def test_classifier_loss_is_the_cross_entropy_at_the_drawn_times() -> None:
    mix = labelled(dk.VPSchedule())
    model = TimeClassifier(NoisyClassifier((2,), 3, width=8, depth=1), mix.schedule)
    x0, y = torch.randn(16, 2), torch.arange(16) % 3
    out = ClassifierLoss("uniform")(model, x0, y, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.rand(16, generator=g, dtype=F64) * (mix.schedule.t_max - mix.schedule.t_min) + mix.schedule.t_min
    x_t = mix.schedule.add_noise(x0, t, torch.randn(16, 2, generator=g))
    want = torch.nn.functional.cross_entropy(model(x_t, t), y, reduction="none")
    torch.testing.assert_close(out.per_sample, want)
    torch.testing.assert_close(out.t, t)
    with pytest.raises(ValueError, match=r"needs \(16,\) integer labels"):
        ClassifierLoss()(model, x0, None)


def test_noisy_classifier_on_images_and_its_errors() -> None:
    net = NoisyClassifier((1, 8, 8), 10, width=16, depth=2)
    model = TimeClassifier(net, dk.EDMSchedule())
    x = torch.randn(5, 1, 8, 8)
    assert model(x, 1.0).shape == (5, 10) and model.features(x, torch.full((5,), 0.5, dtype=F64)).shape == (5, 16)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 1, 8, 8\), got \(5, 1, 4, 4\)"):
        model(torch.randn(5, 1, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(5,\)"):
        model(x, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        NoisyClassifier((2,), 1)


# ---- the command line -------------------------------------------------------------------------
def test_train_classifier_and_guided_sampling_from_the_cli(cond: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "clf"
    code, text = run("train-classifier", str(cond), "--steps", "30", "--width", "16", "--out", str(folder), "--quiet")
    assert code == 0, text
    assert "trained the classifier 30 steps" in text and (folder / "classifier.json").is_file()
    model = load_classifier(folder, dk.VPSchedule())
    assert model.num_classes == 3 and not model.training

    def draw(name: str, *args: str) -> np.ndarray:
        code, text = run("sample", str(cond), "--n", "6", "--nfe", "4", "--out", str(tmp_path / name), *args)
        assert code == 0, text
        return np.load(tmp_path / name)

    uncond, cond1 = draw("u.npy"), draw("c.npy", "--class", "1")
    # scale 0 is the unconditional model, or with --cfg 1 the conditional one
    np.testing.assert_allclose(draw("s0.npy", "--class", "1", "--classifier", str(folder), "--scale", "0"), uncond,
                               atol=1e-6)
    np.testing.assert_allclose(draw("c0.npy", "--class", "1", "--cfg", "1", "--classifier", str(folder), "--scale", "0"),
                               cond1, atol=1e-6)
    guided = draw("s2.npy", "--class", "1", "--classifier", str(folder), "--scale", "2")
    assert np.isfinite(guided).all() and not np.allclose(guided, uncond, atol=1e-4)
    np.testing.assert_allclose(draw("e0.npy", "--class", "1", "--energy", "low-density", "--classifier", str(folder),
                                    "--scale", "0"), cond1, atol=1e-6)
    rare = draw("e5.npy", "--class", "1", "--energy", "low-density", "--classifier", str(folder), "--scale", "5")
    assert np.isfinite(rare).all() and not np.allclose(rare, cond1, atol=1e-4)
    # the default folder RUN/classifier; a second call continues it
    code, text = run("train-classifier", str(cond), "--steps", "2", "--width", "8", "--quiet")
    assert code == 0 and (cond / "classifier" / "classifier.json").is_file(), text
    assert draw("d.npy", "--class", "all", "--classifier").shape == (18, 2)


def test_classifier_options_refuse_bad_input(cond: Path, toy: Path, tmp_path: Path) -> None:  # noqa: F811
    refused(["sample", str(cond), "--class", "1", "--scale", "2"], cond, "--scale needs --classifier or --energy")
    refused(["sample", str(cond), "--classifier", "--scale", "2"], cond, "--classifier needs --class")
    refused(["sample", str(cond), "--energy", "low-density"], cond, "--energy needs --class")
    refused(["sample", str(cond), "--class", "1", "--energy", "high"], cond,
            "--energy must be one of low-density, got 'high'")
    refused(["sample", str(cond), "--class", "1", "--classifier", str(tmp_path / "none")], cond,
            "classifier folder not found", "none")
    refused(["sample", str(cond), "--class", "1", "--classifier", str(tmp_path)], cond,
            "holds no trained classifier", "diffusekit train-classifier RUN")
    refused(["sample", str(cond), "--class", "1", "--classifier", str(tmp_path), "--scale", "-1"], cond,
            "'--scale'", "-1.0 is not in the range x>=0")
    refused(["sample", str(cond), "--class", "1", "--cfg", "2", "--cfg-rescale", "0.5", "--classifier"], cond,
            "--cfg-interval and --cfg-rescale go with plain --cfg")
    refused(["train-classifier", str(toy), "--steps", "2"], toy, "a classifier needs class labels", "mixture has none")
    refused(["train-classifier", str(cond), "--steps", "0"], cond, "'--steps'")
    refused(["train-classifier", str(cond), "--time", "sometimes"], cond, "unknown time distribution", "sometimes")
    refused(["train-classifier", str(tmp_path / "nothing")], tmp_path, "run folder not found")


def test_low_density_energy_from_data_is_the_class_mean() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    energy = dk.LowDensityEnergy.from_data(lambda v: v, x, torch.tensor([0, 0, 1]), batch=2)
    torch.testing.assert_close(energy.class_means, torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=F64))
    assert math.isclose(float(energy(torch.tensor([[0.0, 5.0]]), 0.0, 1)), 1.0, abs_tol=1e-6)
    with pytest.raises(ValueError, match=r"one integer label per item \(3,\)"):
        dk.LowDensityEnergy.from_data(lambda v: v, x, torch.tensor([0.0, 1.0, 1.0]))
