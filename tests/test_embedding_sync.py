"""Class and condition-vector embeddings read no tensor value on the host in their forward pass (no GPU sync
per call), yet bad labels or condition rows still get a one-line ValueError naming them on the CPU.

A forward that reads a value (``.item()``, ``int(t)``, ``bool(t)``) fails on the meta device, which has no
values, and breaks a ``torch.compile(fullgraph=True)`` graph: both are checked here."""

from __future__ import annotations

import pytest
import torch

from diffusekit.models import MLP, ClassEmbedding, UNet, VectorEmbedding

META = torch.device("meta")


def test_conditional_networks_run_on_the_meta_device() -> None:
    with META:
        classes = MLP(2, width=16, depth=1, num_classes=3)
        vectors = MLP(2, width=16, depth=1, cond_dim=2)
        unet = UNet(1, base_channels=16, channel_mult=(1,), num_res_blocks=1, num_classes=3)
        x, t = torch.randn(4, 2), torch.rand(4)
        assert classes(x, t, torch.tensor([0, 1, 2, 3])).shape == (4, 2)
        assert vectors(x, t, torch.tensor([[0.5, 1.0]] * 3 + [[float("nan")] * 2])).shape == (4, 2)
        assert unet(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 3])).shape == (2, 1, 8, 8)


def test_embeddings_compile_to_one_graph() -> None:
    torch._dynamo.reset()
    labels = ClassEmbedding(3, 8)
    vectors = VectorEmbedding(2, 8)
    cpu = torch.device("cpu")
    y = torch.tensor([0, 3, 1])
    c = torch.tensor([[0.5, 1.0], [float("nan")] * 2])
    got = torch.compile(lambda v: labels(v, 3, cpu), fullgraph=True, backend="eager")(y)
    torch.testing.assert_close(got, labels.table.weight[y])
    got = torch.compile(lambda v: vectors(v, 2, cpu), fullgraph=True, backend="eager")(c)
    torch.testing.assert_close(got[1], vectors.null.detach())


def test_bad_labels_and_condition_rows_still_get_one_line_errors() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\] \(3 = null label\), got range \[-1, 2\]"):
        ClassEmbedding(3, 8)(torch.tensor([0, -1, 2]), 3, cpu)
    with pytest.raises(ValueError, match=r"got range \[0, 4\]"):
        MLP(2, width=8, depth=1, num_classes=3)(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="either all NaN"):
        VectorEmbedding(2, 8)(torch.tensor([[0.5, float("nan")], [1.0, 1.0]]), 2, cpu)
