"""The trainer: a 2-D toy learns the true density, exact resume, checkpoints, EMA, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import diffusekit as dk
from diffusekit.data import ArrayLoader
from diffusekit.losses import DSMLoss
from diffusekit.models import MLP
from diffusekit.oracle import GaussianMixture
from diffusekit.train import (
    EMA,
    CheckpointMismatchError,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    scatter_2d,
)
from diffusekit.image_grid import save_image_grid
from diffusekit.train import checkpoint as ckpt_module


def _mixture(schedule: dk.NoiseSchedule) -> GaussianMixture:
    means = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    return GaussianMixture(means, [0.3, 0.4, 0.35], schedule)


def test_toy_mixture_trains_to_the_true_log_likelihood(tmp_path: Path) -> None:
    """A small eps-prediction MLP trained for 1200 steps (min-SNR-5 weighting) samples (DDIM) with a mean
    true log-density within 0.3 nats of exact samples' (an untrained or mode-collapsed model is > 1 nat off)."""
    schedule = dk.VPSchedule()
    mix = _mixture(schedule)
    loader = ArrayLoader(mix.sample(20000, seed=0).float(), batch_size=128, seed=0)
    torch.manual_seed(0)
    den = dk.Denoiser(MLP(2, width=64, depth=3, time_scale=1000.0), schedule, "eps")
    calls: list[int] = []
    cfg = TrainConfig(lr=3e-3, warmup_steps=50, ema_half_life=50, ema_rampup=0.1, log_every=100,
                      checkpoint_every=600, sample_every=600, progress=False)
    trainer = Trainer(den, loader, DSMLoss("min_snr", "stratified"), cfg, run_dir=tmp_path,
                      sample_fn=lambda d, step, run_dir: calls.append(step))
    last = trainer.fit(1200)
    n = 4000
    x = dk.sample(trainer.ema_denoiser, dk.DDIM(), shape=(2,), batch=n, steps=100, seed=0, progress=False).x
    got = mix.log_prob(x).mean().item()
    exact = mix.log_prob(mix.sample(n, seed=1)).mean().item()
    print(f"mean log p: model {got:.3f}, exact {exact:.3f}")
    assert abs(got - exact) < 0.3, (got, exact)
    # bookkeeping: JSONL every 100 steps, loss curve, checkpoints, sample callback
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(100, 1201, 100))
    assert {"loss", "lr", "grad_norm", "steps_per_sec"} <= set(records[-1])
    assert records[-1] == last
    assert records[-1]["loss"] < records[0]["loss"]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert calls == [600, 1200]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000600.safetensors", "step-00001200.safetensors"]


def _small_setup(seed_init: int, bf16: bool = False, run_dir: Path | None = None, **cfg_kw) -> Trainer:  # type: ignore[no-untyped-def]
    schedule = dk.VPSchedule()
    data = _mixture(schedule).sample(512, seed=0).float()
    labels = torch.arange(512) % 3
    loader = ArrayLoader(data, labels, batch_size=32, seed=1)
    torch.manual_seed(seed_init)
    net = MLP(2, width=32, depth=2, num_classes=3, dropout=0.2, time_scale=1000.0)
    den = dk.Denoiser(net, schedule, "v")
    cfg = TrainConfig(lr=1e-3, warmup_steps=5, grad_clip=0.5, ema_half_life=4.0, ema_rampup=0.5, precision="bf16" if bf16 else "fp32",
                      log_every=3, progress=False, **cfg_kw)
    loss = DSMLoss("min_snr", "lognormal", label_dropout=0.2, null_label=3)
    return Trainer(den, loader, loss, cfg, run_dir=run_dir)


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_after_interrupt_is_bit_identical(tmp_path: Path, bf16: bool) -> None:
    """20 steps in one go == 13 steps (interrupted; last checkpoint at 10) + a new trainer resuming + 10 more."""
    a = _small_setup(0, bf16, tmp_path / "a")
    a.fit(20)
    b = _small_setup(0, bf16, tmp_path / "b", checkpoint_every=5)
    for info in b.steps(20):
        if info.step == 13:
            break  # interrupted: steps 11-13 are lost
    c = _small_setup(99, bf16, tmp_path / "b", checkpoint_every=5)  # a different initialisation, overwritten
    assert c.resume() and c.step == 10
    c.fit(20)
    for (name, pa), pc in zip(a.net.named_parameters(), c.net.parameters()):
        assert torch.equal(pa, pc), name
    for pa, pc in zip(a.ema.module.parameters(), c.ema.module.parameters()):  # type: ignore[union-attr]
        assert torch.equal(pa, pc)
    assert a.data.state_dict() == c.data.state_dict()  # type: ignore[attr-defined]
    # the metrics log continues where the checkpoint was, with the same numbers
    log_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    log_c = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    def strip(lines):
        return [{k: v for k, v in json.loads(s).items() if k not in ("steps_per_sec", "elapsed")} for s in lines]
    assert strip(log_a) == strip(log_c)


class _LossWithHistory:
    """A stateful loss: DSM whose per-step history (here, the sum of the net's first weight) the trainer keeps."""

    def __init__(self) -> None:
        self.inner = DSMLoss()
        self.history: list[float] = []

    def __call__(self, denoiser, x0, cond=None, generator=None):  # type: ignore[no-untyped-def]
        return self.inner(denoiser, x0, cond, generator)

    def after_step(self, net: nn.Module, step: int) -> None:
        self.history.append(float(next(net.parameters()).sum()) + step)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])


def test_a_loss_owned_state_is_stepped_checkpointed_and_resumed(tmp_path: Path) -> None:
    def trainer(run_dir: Path) -> Trainer:
        t = _small_setup(0, run_dir=run_dir, checkpoint_every=4)
        t.loss_fn = _LossWithHistory()
        return t
    a = trainer(tmp_path / "a")
    a.fit(8)
    b = trainer(tmp_path / "b")
    b.fit(4)
    c = trainer(tmp_path / "b")
    assert c.resume() and c.loss_fn.history == b.loss_fn.history  # type: ignore[attr-defined]
    c.fit(8)
    assert len(a.loss_fn.history) == 8 and c.loss_fn.history == a.loss_fn.history  # type: ignore[attr-defined]


def test_training_changes_weights_and_resume_without_checkpoint(tmp_path: Path) -> None:
    t = _small_setup(0, run_dir=tmp_path)
    assert t.resume() is False  # nothing to resume yet
    before = [p.detach().clone() for p in t.net.parameters()]
    t.fit(3)
    assert any(not torch.equal(b, p) for b, p in zip(before, t.net.parameters()))
    # clipping: the gradients left by the last step have norm min(grad_clip, the reported pre-clip norm)
    info = next(t.steps(1))
    gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.net.parameters() if p.grad is not None]))
    assert math.isclose(gnorm.item(), min(0.5, info.grad_norm.item()), rel_tol=1e-4)
    assert [t.lr_at(s) for s in (0, 4, 9)] == pytest.approx([2e-4, 1e-3, 1e-3])


def test_checkpoint_from_another_model_gives_a_one_line_error(tmp_path: Path) -> None:
    net = MLP(2, width=32, depth=2)
    path = save_checkpoint(tmp_path, 7, net, ema=net, state={})
    for other, words in [(MLP(2, width=16, depth=2), ["shape mismatch for", "checkpoint [32"]),
                         (MLP(2, width=32, depth=3), ["missing blocks.2."]),
                         (MLP(2, width=32, depth=1), ["unexpected blocks.1."])]:
        with pytest.raises(CheckpointMismatchError) as err:
            load_checkpoint(path, other)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"checkpoint {path} does not match this model")
        assert all(w in msg for w in words), msg
        with pytest.raises(CheckpointMismatchError):
            load_weights(tmp_path, other)
    # the trainer's resume gives the same error for a run of another model
    t = Trainer(dk.Denoiser(MLP(2, width=16, depth=2), dk.VPSchedule()), [torch.zeros(4, 2)],
                config=TrainConfig(progress=False), run_dir=tmp_path.parent / "run")
    with pytest.raises(CheckpointMismatchError, match="does not match this model"):
        t.resume(path)
    # a matching model loads, and the EMA weights are what load_weights returns by default
    same = MLP(2, width=32, depth=2)
    assert load_weights(tmp_path, same) == {}
    for p, q in zip(same.parameters(), net.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_writes_are_atomic_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Linear(3, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, net, state={"x": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002.safetensors", "step-00000003.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000002.safetensors", "step-00000002.state.pt",
        "step-00000003.safetensors", "step-00000003.state.pt",
    ]

    def broken_save_file(tensors, path, metadata=None):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", broken_save_file)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 4, net, state={"x": 4})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "step-00000004.safetensors").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000003.safetensors"
    fresh = nn.Linear(3, 2)
    state = load_checkpoint(tmp_path, fresh)
    assert state["x"] == 3 and state["step"] == 3
    assert not torch.equal(fresh.weight, net.weight)  # the failed save did not replace step 3


def test_ema_half_life_and_power_schedule() -> None:
    """After h updates with half-life h, a step change is half absorbed: 1 - beta^h = 1/2."""
    model = nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, half_life=10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1, 11):
        ema.update(model, step)
    torch.testing.assert_close(ema.module.weight, torch.full((4, 4), 0.5), rtol=1e-6, atol=1e-6)
    assert EMA.half_life_of(ema.decay(5)) == pytest.approx(10)
    # general identity: ema_n = beta^n ema_0 + sum_k (1 - beta) beta^(n-k) theta_k
    beta = ema.decay(1)
    thetas = torch.randn(6)
    e = EMA(nn.Linear(1, 1, bias=False), half_life=10)
    e0 = e.module.weight.item()
    src = nn.Linear(1, 1, bias=False)
    for k, th in enumerate(thetas, 1):
        with torch.no_grad():
            src.weight.fill_(th)
        e.update(src, k)
    n = len(thetas)
    expected = beta**n * e0 + sum((1 - beta) * beta ** (n - k) * thetas[k - 1].item() for k in range(1, n + 1))
    assert e.module.weight.item() == pytest.approx(expected, rel=1e-5)
    # ramp-up: half-life min(h, r * step); power warm-up: 1 - (1 + step/gamma)^-p, capped
    ramp = EMA(model, half_life=100, rampup=0.5)
    assert ramp.decay(10) == pytest.approx(0.5 ** (1 / 5))
    assert ramp.decay(1000) == pytest.approx(0.5 ** (1 / 100))
    power = EMA(model, power=2 / 3, max_decay=0.999)
    assert power.decay(0) == 0.0
    assert power.decay(7) == pytest.approx(1 - 8 ** (-2 / 3))
    assert power.decay(10**9) == 0.999
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_image_grid_and_scatter_files(tmp_path: Path) -> None:
    images = torch.full((5, 1, 8, 8), 1.0)
    images[1] = -1.0
    path = save_image_grid(images, tmp_path / "grid.png", nrow=3, padding=2)
    img = Image.open(path)
    assert img.size == (3 * 10 + 2, 2 * 10 + 2) and img.mode == "L"
    px = torch.from_numpy(np.asarray(img).copy())
    assert px[2:10, 2:10].eq(255).all() and px[2:10, 12:20].eq(0).all()  # image 0 white, image 1 black
    assert px[0].eq(0).all() and px[12:20, 22:30].eq(0).all()  # padding and the empty 6th cell
    rgb = save_image_grid(torch.rand(4, 3, 6, 6) * 2 - 1, tmp_path / "rgb.png", nrow=2)
    assert Image.open(rgb).mode == "RGB"
    out = scatter_2d({"data": torch.randn(50, 2), "model": torch.randn(50, 2)}, tmp_path / "s.png", lim=3)
    assert out.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_lr_warmup_then_cosine_decay_to_zero() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, decay_steps=110, ema_half_life=None, progress=False)
    t = Trainer(dk.Denoiser(MLP(2, width=16, depth=2), dk.VPSchedule()), [torch.zeros(4, 2)], DSMLoss(), cfg)
    lrs = [t.lr_at(s) for s in range(120)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warm-up rises
    assert all(a > b for a, b in zip(lrs[10:109], lrs[11:110]))  # decay falls
    assert lrs[60] == pytest.approx(0.5e-3) and lrs[110] == 0.0 and lrs[119] == 0.0
    constant = Trainer(t.denoiser, [torch.zeros(4, 2)], DSMLoss(), TrainConfig(lr=1e-3, warmup_steps=10, progress=False))
    assert constant.lr_at(500) == 1e-3
    with pytest.raises(ValueError, match="decay_steps must exceed warmup_steps=10"):
        TrainConfig(warmup_steps=10, decay_steps=5)
