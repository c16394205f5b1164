"""The noisy classifier's loss, the distillation losses and the imputation loss train on shards like ``DSMLoss``: rows ``offset`` to
``offset + B`` of a global batch draw the whole batch's randomness and keep their rows, so data-parallel ranks and
gradient-accumulation micro-batches see exactly the single-process batch (the one-process simulation of ranks in
``test_distributed.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import diffusekit as dk
from diffusekit.data import ArrayLoader
from diffusekit.distill.consistency import ConsistencyLoss
from diffusekit.distill.progressive import ProgressiveLoss
from diffusekit.distill.reflow import ReflowLoss
from diffusekit.distill.teacher_step import SolverStep
from diffusekit.models import MLP
from diffusekit.models.noisy_classifier import NoisyClassifier, TimeClassifier
from diffusekit.models.series import SeriesNet
from diffusekit.parameterization import ConsistencyParam
from diffusekit.tasks.imputation import ImputationLoss
from diffusekit.train import TrainConfig, Trainer
from diffusekit.train.classifier import ClassifierLoss


def mlp_denoiser(schedule: dk.NoiseSchedule, parameterization: Any = "eps") -> dk.Denoiser:
    return dk.Denoiser(MLP(2, width=16, depth=1, num_classes=3, zero_init=False), schedule, parameterization)


def classifier() -> tuple[Callable[..., Any], Any]:
    return ClassifierLoss("uniform"), TimeClassifier(NoisyClassifier((2,), 3, width=16, depth=1), dk.VPSchedule())


def progressive() -> tuple[Callable[..., Any], Any]:
    teacher = mlp_denoiser(dk.VPSchedule())
    return ProgressiveLoss(teacher, 4, label_dropout=0.3, null_label=3), mlp_denoiser(dk.VPSchedule())


def consistency(time: str, distil: bool) -> Callable[[], tuple[Callable[..., Any], Any]]:
    def make() -> tuple[Callable[..., Any], Any]:
        schedule = dk.EDMSchedule()
        student = mlp_denoiser(schedule, ConsistencyParam())
        teacher = SolverStep(mlp_denoiser(schedule), "euler") if distil else None
        return ConsistencyLoss(schedule, teacher, student.net, mu=0.9, n=6, total_steps=10, time=time,
                               label_dropout=0.3, null_label=3), student

    return make


def imputation() -> tuple[Callable[..., Any], Any]:
    net = SeriesNet(2, width=16, depth=1)
    for p in net.out.parameters():  # not the zero init: the outputs must matter
        torch.nn.init.normal_(p, std=0.3)
    return ImputationLoss(p_forecast=0.5), dk.Denoiser(net, dk.VPSchedule(), "eps")


def reflow() -> tuple[Callable[..., Any], Any]:
    return ReflowLoss(label_dropout=0.3, null_label=3), mlp_denoiser(dk.FlowSchedule(), "velocity")


LOSSES = {"classifier": classifier, "progressive": progressive, "consistency": consistency("uniform", True),
          "consistency-training": consistency("lognormal", False), "reflow": reflow, "imputation": imputation}


@pytest.mark.parametrize("name", list(LOSSES))
def test_shards_of_a_global_batch_are_the_whole_batch(name: str) -> None:
    torch.manual_seed(0)
    loss, model = LOSSES[name]()
    # reflow: (data, coupled noise) pairs; imputation: windows (K = 2 series, L = 6)
    x = torch.randn(12, 2, 2) if name == "reflow" else torch.randn(12, 2, 6) if name == "imputation" else torch.randn(12, 2)
    y = torch.arange(12) % 3
    with torch.no_grad():
        whole = loss(model, x, y, generator=torch.Generator().manual_seed(5))
        parts = [loss(model, x[a:a + 4], y[a:a + 4], generator=torch.Generator().manual_seed(5), offset=a,
                      global_batch=12) for a in (0, 4, 8)]
    torch.testing.assert_close(torch.cat([p.per_sample for p in parts]), whole.per_sample, rtol=1e-5, atol=1e-7)
    assert torch.equal(torch.cat([p.t for p in parts]), whole.t)
    first = loss(model, x[:4], y[:4], generator=torch.Generator().manual_seed(5))  # a batch of its own differs
    assert not torch.equal(first.t, whole.t[:4]) or not torch.allclose(first.per_sample, whole.per_sample[:4])
    with pytest.raises(ValueError, match="rows 10 to 14 do not lie in a global batch of 12"):
        loss(model, x[:4], y[:4], generator=torch.Generator(), offset=10, global_batch=12)


def test_classifier_training_with_micro_batches_equals_the_whole_batch() -> None:
    def fit(accumulate: int) -> Trainer:
        torch.manual_seed(0)
        model = TimeClassifier(NoisyClassifier((2,), 3, width=16, depth=1), dk.VPSchedule())
        data = torch.randn(64, 2)
        cfg = TrainConfig(lr=1e-3, warmup_steps=1, ema_half_life=None, accumulate=accumulate, log_every=2,
                          progress=False, use_labels=True)
        trainer = Trainer(model, ArrayLoader(data, torch.arange(64) % 3, batch_size=16, seed=1), ClassifierLoss(), cfg)
        trainer.fit(4)
        return trainer

    a, b = fit(1), fit(4)
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
