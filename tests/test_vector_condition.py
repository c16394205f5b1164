"""Condition vectors (``data.condition = "vector"``): the MLP's vector embedding with its null token,
condition dropout to all-NaN rows, and a run on ``shifted_mixture`` whose conditional denoiser learns
the exact conditional one (a two-component mixture whose height is half the condition)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import diffusekit as dk
from diffusekit.config import PRESETS
from diffusekit.data import load_dataset
from diffusekit.data.toys import SHIFTED_MIXTURE_STD, shifted_mixture_means
from diffusekit.guidance import null_condition
from diffusekit.models import MLP, VectorEmbedding
from diffusekit.oracle import GaussianMixture
from diffusekit.pipeline import LoadedRun, load_run, prepare_run, train_run

from .test_run_folder import refused, run, toy, trained  # noqa: F401 (fixtures: a toy run without conditions)

VECTOR = ["data.name=shifted_mixture", "data.condition=vector", "data.num_samples=8192", "data.batch_size=256",
          "checkpoint_every=100000", "optim.ema_half_life=40", "optim.warmup_steps=20"]


@pytest.fixture(scope="module")
def vector_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 250-step run on shifted_mixture with condition vectors (10% dropped to the null token)."""
    out = tmp_path_factory.mktemp("vector") / "run"
    train_run(PRESETS["toy2d"].with_overrides(["steps=250", *VECTOR]), out, progress=False)
    return out


@pytest.fixture(scope="module")
def vector_run(vector_folder: Path) -> LoadedRun:
    return load_run(vector_folder)


def test_vector_embedding_null_token_and_errors() -> None:
    emb = VectorEmbedding(2, 8)
    torch.nn.init.normal_(emb.null)
    c = torch.tensor([[0.5, -1.0], [float("nan")] * 2, [0.0, 2.0]])
    out = emb(c, 3, torch.device("cpu"))
    torch.testing.assert_close(out[1], emb.null.detach())
    torch.testing.assert_close(out[[0, 2]], emb.mlp(c[[0, 2]]))
    torch.testing.assert_close(emb(None, 2, torch.device("cpu")), emb.null.detach().expand(2, 8))
    with pytest.raises(ValueError, match="all NaN"):
        emb(torch.tensor([[0.5, float("nan")]]), 1, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        emb(torch.zeros(1, 3), 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="not both"):
        MLP(2, num_classes=3, cond_dim=2)
    assert null_condition(dk.Denoiser(MLP(2, width=8, cond_dim=1), dk.VPSchedule())) != null_condition(
        dk.Denoiser(MLP(2, width=8, cond_dim=1), dk.VPSchedule()))  # NaN: unequal to itself


def test_shifted_mixture_data_and_its_run_folder(tmp_path: Path) -> None:
    x, c = load_dataset("shifted_mixture", n=4000, seed=1)
    assert x.shape == (4000, 2) and c.shape == (4000, 1) and c.is_floating_point()
    resid = x[:, 1] - 0.5 * c[:, 0]
    assert abs(float(resid.std()) - SHIFTED_MIXTURE_STD) < 0.01 and abs(float(x[:, 0].abs().mean()) - 0.5) < 0.01
    prepared = prepare_run(PRESETS["toy2d"].with_overrides(["steps=2", *VECTOR]), tmp_path / "run", progress=False)
    assert prepared.info.cond_dim == 1 and prepared.info.num_classes is None
    assert prepared.denoiser.net.cond_dim == 1 and prepared.loss.label_dropout == 0.1
    with pytest.raises(ValueError, match="data.condition = vector needs condition vectors"):
        prepare_run(PRESETS["toy2d"].with_overrides(["data.condition=vector"]), tmp_path / "r2", progress=False)
    with pytest.raises(ValueError, match="data.condition = vector needs model.kind = mlp"):
        prepare_run(PRESETS["toy2d"].with_overrides([*VECTOR, "model.kind=unet"]), tmp_path / "r3", progress=False)
    with pytest.raises(ValueError, match="data.condition must be none, vector or lowres:K with an integer factor K >= 2, got 'image'"):
        PRESETS["toy2d"].with_overrides(["data.condition=image"])
    assert not (tmp_path / "r2").exists()


def test_vector_conditioned_denoiser_learns_the_conditional_law(vector_run: LoadedRun) -> None:
    """At every noise level the conditional x0-prediction is close to the exact conditional
    denoiser at that condition, and from moderate noise on (where the condition matters) far
    closer than the null-token (unconditional) prediction;
    CFG with w = 1 is the conditional model; samples sit at the condition's height."""
    den = vector_run.denoiser
    for c in (-0.8, 0.0, 0.8):
        means = shifted_mixture_means(torch.tensor([[c]], dtype=torch.float64))[0]
        exact = GaussianMixture(means, SHIFTED_MIXTURE_STD, den.schedule)
        cond = torch.full((400, 1), c)
        for t in (0.05, 0.3, 1.0):
            x = exact.sample(400, seed=1, t=t).float()
            with torch.no_grad():
                err = (den(x, t, cond).x0 - exact(x.double(), t).x0).norm(dim=1).mean()
                err_null = (den(x, t).x0 - exact(x.double(), t).x0).norm(dim=1).mean()
                cfg1 = dk.ClassifierFreeGuidance(den, 1.0)(x, t, cond).x0
            assert float(err) < 0.05 and (c == 0.0 or t < 0.3 or float(err) < 0.3 * float(err_null)), (c, t, err, err_null)
            torch.testing.assert_close(cfg1, den(x, t, cond).x0, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            x0 = dk.sample(den, shape=(2,), batch=400, cond=cond, seed=0, progress=False).x
        assert abs(float(x0[:, 1].mean()) - 0.5 * c) < 0.03 and abs(float(x0[:, 1].std()) - SHIFTED_MIXTURE_STD) < 0.03


def test_sampling_with_a_condition_vector_from_the_cli(vector_folder: Path, toy: Path, tmp_path: Path) -> None:  # noqa: F811
    def draw(name: str, *args: str) -> np.ndarray:
        code, text = run("sample", str(vector_folder), "--n", "200", "--nfe", "10", "--out", str(tmp_path / name), *args)
        assert code == 0, text
        return np.load(tmp_path / name)

    high = draw("h.npy", "--cond", "0.8")
    assert abs(float(high[:, 1].mean()) - 0.4) < 0.03
    np.testing.assert_allclose(draw("w1.npy", "--cond", "0.8", "--cfg", "1"), high)
    np.testing.assert_allclose(draw("w0.npy", "--cond", "0.8", "--cfg", "0"), draw("u.npy"), atol=1e-5)
    assert float(draw("w3.npy", "--cond", "0.8", "--cfg", "3")[:, 1].mean()) > 0.4  # pushed past the condition
    for value in ("1,2", "x", "nan"):
        refused(["sample", str(vector_folder), "--cond", value], vector_folder,
                "--cond expects 1 finite number(s)", repr(value))
    refused(["sample", str(vector_folder), "--cfg", "2"], vector_folder, "--cfg needs --class", "or --cond")
    refused(["sample", str(vector_folder), "--class", "1", "--cond", "0"], vector_folder, "--class needs a class-conditional run")
    refused(["sample", str(toy), "--cond", "0"], toy, "--cond needs a run trained with data.condition = vector")
