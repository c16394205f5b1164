"""Property tests for diffusekit.models (networks, embeddings, presets)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from diffusekit.models import (
    MLP,
    ClassEmbedding,
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    UNet,
    count_parameters,
    levels_for_image_size,
    levels_for_resolutions,
    mlp_preset,
    unet_preset,
)
from diffusekit.models.unet import AttentionBlock, num_groups_for


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors run faster (and far more robustly on a loaded 2-core box) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_unet(in_channels: int = 1, **kw: object) -> UNet:
    cfg: dict = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,))
    cfg.update(kw)
    return UNet(in_channels, **cfg)


def perturb_zero_params(module: nn.Module, scale: float = 0.1) -> None:
    """Give every all-zero parameter (zero-init layers) random values."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_unet_shape(channels: int, size: int) -> None:
    net = small_unet(channels)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([3.0, 500.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_out_channels_and_rectangular() -> None:
    net = small_unet(3, out_channels=6, channel_mult=(1, 2, 2), attention_levels=(1, 2))
    out = net(torch.randn(2, 3, 16, 24), torch.rand(2))
    assert out.shape == (2, 6, 16, 24)


def test_unet_zero_output_at_init() -> None:
    net = small_unet(3, num_classes=4)
    out = net(torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 1, 4]))
    assert torch.count_nonzero(out) == 0


def test_unet_gradients_flow() -> None:
    net = small_unet(3, dropout=0.1)
    x = torch.randn(2, 3, 8, 8)
    (net(x, torch.rand(2)) - x).square().sum().backward()
    assert net.conv_out.weight.grad is not None and net.conv_out.weight.grad.abs().sum() > 0
    net.zero_grad()
    perturb_zero_params(net)
    x.requires_grad_(True)
    (net(x, torch.rand(2)) - 1).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unet_conditioning_changes_output() -> None:
    torch.manual_seed(0)
    net = small_unet(1, num_classes=3).eval()
    perturb_zero_params(net)
    x = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1)
    t = torch.full((4,), 0.3)
    with torch.no_grad():
        out = net(x, t, torch.tensor([0, 1, 2, 3]))
        out_none = net(x[:1], t[:1])
        out_t = net(x[:1], torch.tensor([0.9]), torch.tensor([0]))
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(out[i], out[j]), (i, j)
    torch.testing.assert_close(out_none[0], out[3])  # cond=None is the null label
    assert not torch.allclose(out_t[0], out[0])  # noise level matters too


def test_unet_no_batch_mixing() -> None:
    net = small_unet(3).eval()
    perturb_zero_params(net)
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    with torch.no_grad():
        full = net(x, t)
        single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("c_noise", [torch.tensor([0.0, 999.0]), torch.tensor([1e-3, 1.0]), torch.tensor([-2.5, 5.0])])
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_unet_noise_ranges(c_noise: torch.Tensor, embedding: str) -> None:
    net = small_unet(1, embedding=embedding)
    perturb_zero_params(net)
    out = net(torch.randn(2, 1, 8, 8), c_noise)
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])


def test_unet_scalar_and_integer_c_noise() -> None:
    net = small_unet(1)
    x = torch.randn(3, 1, 8, 8)
    assert net(x, torch.tensor(5)).shape == x.shape
    assert net(x, torch.tensor([1, 2, 3])).shape == x.shape


def test_unet_bad_inputs_raise() -> None:
    net = small_unet(1, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"10x10.*divisible by 4"):
        net(torch.randn(1, 1, 10, 10), torch.rand(1))
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="num_classes=None"):
        net(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="attention_levels"):
        small_unet(1, attention_levels=(2,))
    cnet = small_unet(1, num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        cnet(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([3]))


@pytest.mark.parametrize("channels", [1, 5, 24, 48, 96, 100, 128])
def test_group_count_divides(channels: int) -> None:
    g = num_groups_for(channels)
    assert channels % g == 0 and 1 <= g <= 32


def test_unet_odd_base_channels() -> None:
    net = UNet(5, base_channels=20, channel_mult=(1, 3), num_res_blocks=1, attention_levels=(0, 1), head_channels=8)
    assert net(torch.randn(2, 5, 8, 8), torch.rand(2)).shape == (2, 5, 8, 8)


def test_attention_matches_naive() -> None:
    torch.manual_seed(0)
    blk = AttentionBlock(32, head_channels=16)
    nn.init.normal_(blk.proj.weight, std=0.1)
    x = torch.randn(2, 32, 4, 4)
    b, c, h, w = x.shape
    heads = blk.num_heads
    assert heads == 2
    qkv = blk.qkv(blk.norm(x)).reshape(b, 3, heads, c // heads, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, HW)
    att = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(c // heads), dim=-1)
    ref = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(b, c, h, w)
    torch.testing.assert_close(blk(x), x + blk.proj(ref), atol=1e-5, rtol=1e-4)


def test_embeddings() -> None:
    t = torch.tensor([0.0, 0.5, 999.0])
    sin = SinusoidalEmbedding(16, max_period=100.0, scale=2.0)(t)
    assert sin.shape == (3, 16) and sin.abs().max() <= 1.0
    assert not torch.allclose(sin[0], sin[1])
    four = GaussianFourierEmbedding(16, scale=4.0)
    assert four(t).shape == (3, 16)
    torch.testing.assert_close(four.W, GaussianFourierEmbedding(16, scale=4.0).W)  # seeded
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(15)
    emb = ClassEmbedding(10, 8)
    assert emb.table.num_embeddings == 11 and emb.null_label == 10
    torch.testing.assert_close(emb(None, 2, torch.device("cpu")), emb.table.weight[[10, 10]])
    with pytest.raises(ValueError, match="integer"):
        emb(torch.tensor([0.5]), 1, torch.device("cpu"))


def test_mlp_shapes_and_conditioning() -> None:
    net = MLP(2, width=32, depth=2, num_classes=3, layer_norm=True)
    x = torch.randn(5, 2)
    out = net(x, torch.rand(5), torch.tensor([0, 1, 2, 3, 0]))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    perturb_zero_params(net)
    with torch.no_grad():
        a = net(x[:1].expand(2, -1), torch.full((2,), 0.5), torch.tensor([0, 1]))
    assert not torch.allclose(a[0], a[1])
    assert net(torch.randn(4, 2), torch.rand(4)).shape == (4, 2)  # cond=None -> null label
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        net(torch.randn(4, 3), torch.rand(4))
    wide = MLP(7, width=16, depth=1, embedding="fourier")
    assert wide(torch.randn(3, 7), torch.tensor([-1.0, 0.0, 1.0])).shape == (3, 7)


def test_mlp_gradients_and_fits() -> None:
    torch.manual_seed(0)
    net = MLP(2, width=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.randn(256, 2)
    t = torch.rand(256)
    target = torch.stack([x[:, 1], torch.sin(3 * t)], dim=1)
    losses = []
    for _ in range(100):
        loss = (net(x, t) - target).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]


def test_presets() -> None:
    tiny = unet_preset("tiny", 1, 8, num_classes=10)
    assert 300_000 <= count_parameters(tiny) <= 1_000_000
    assert tiny.num_levels == 2 and tiny.attention_levels == (1,)  # attention at 4x4
    x = torch.randn(2, 1, 8, 8)
    assert tiny(x, torch.rand(2), torch.tensor([1, 10])).shape == x.shape
    small = unet_preset("small", 1, 28)
    assert small.num_levels == 3 and small.size_divisor == 4
    assert unet_preset("tiny", 3, 32, dropout=0.2).num_levels == 2  # overrides accepted
    assert mlp_preset("tiny", 2)(torch.randn(3, 2), torch.rand(3)).shape == (3, 2)
    assert count_parameters(mlp_preset("small", 2, num_classes=4)) > count_parameters(mlp_preset("tiny", 2))
    for bad in (lambda: unet_preset("huge", 1, 8), lambda: mlp_preset("huge", 2)):
        with pytest.raises(ValueError, match="tiny, small, base"):
            bad()


def test_count_parameters_and_levels() -> None:
    lin = nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    assert lin.bias is not None
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12
    assert levels_for_image_size(28, 4) == 3
    assert levels_for_image_size(32, 4) == 4
    assert levels_for_image_size(8, 4) == 2
    assert levels_for_image_size(7, 4) == 1
    assert levels_for_resolutions(32, (16, 8), 4) == (1, 2)
