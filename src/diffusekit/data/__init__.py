"""Data sets (float32 in [-1, 1], optional int64 labels) and an in-memory loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from diffusekit.data.images import (
    ARRAY_EXTENSIONS,
    FASHION_MNIST_ROOT,
    load_array,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist5k,
    load_mnist_idx,
    random_flip,
    read_idx,
    write_idx,
)
from diffusekit.data.emoji import load_emoji
from diffusekit.data.loader import ArrayLoader
from diffusekit.data.toys import CONDITIONAL_TOY_NAMES, TOY_NAMES, make_conditional_toy, make_toy

__all__ = [
    "DATASET_NAMES",
    "TOY_NAMES",
    "CONDITIONAL_TOY_NAMES",
    "make_conditional_toy",
    "FASHION_MNIST_ROOT",
    "load_dataset",
    "make_toy",
    "load_digits",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "load_mnist_idx",
    "load_mnist5k",
    "load_image_folder",
    "load_array",
    "load_emoji",
    "random_flip",
    "ArrayLoader",
]

DATASET_NAMES: tuple[str, ...] = ("digits", "fashion", "mnist5k", "mnist", "emoji", *TOY_NAMES, *CONDITIONAL_TOY_NAMES)


def _no_kwargs(name: str, kw: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(set(kw) - set(allowed))
    if extra:
        raise ValueError(f"dataset {name!r} does not take {', '.join(extra)}; allowed: {', '.join(allowed) or 'none'}")


def load_dataset(name: str | os.PathLike[str], **kw: Any) -> tuple[Tensor, Tensor | None]:
    """Load a data set by name or path; returns ``(data, labels or None)``.

    Names: ``digits``; ``fashion`` (``split``, ``root``); ``mnist5k``;
    ``mnist`` (idx files: ``root``, ``split``); ``emoji`` (colour, ``size`` default 32); toys ``mixture``, ``moons``,
    ``swiss_roll``, ``checkerboard``, ``rings`` (``n`` default 10000, ``seed``
    default 0; no labels); ``shifted_mixture`` (``n``, ``seed``; condition vectors (N, 1) in place of
    labels, for ``data.condition = "vector"``). Paths: a folder -> :func:`load_image_folder`
    (``size`` required, ``channels``); ``.npy`` / ``.npz`` / ``.csv`` -> :func:`load_array` (``key``).
    """
    s = os.fspath(name)
    if s == "digits":
        _no_kwargs(s, kw)
        return load_digits()
    if s in ("fashion", "fashion-mnist", "fashion_mnist"):
        _no_kwargs(s, kw, ("split", "root"))
        return load_fashion_mnist(**kw)
    if s == "mnist5k":
        _no_kwargs(s, kw)
        return load_mnist5k()
    if s == "mnist":
        _no_kwargs(s, kw, ("root", "split"))
        if "root" not in kw:
            raise ValueError("dataset 'mnist' needs root=<folder with train-images-idx3-ubyte[.gz] etc.>")
        return load_mnist_idx(**kw)
    if s == "emoji":
        _no_kwargs(s, kw, ("size",))
        return load_emoji(**kw)
    if s in TOY_NAMES:
        _no_kwargs(s, kw, ("n", "seed"))
        return make_toy(s, int(kw.get("n", 10000)), int(kw.get("seed", 0))), None
    if s in CONDITIONAL_TOY_NAMES:
        _no_kwargs(s, kw, ("n", "seed"))
        return make_conditional_toy(s, int(kw.get("n", 10000)), int(kw.get("seed", 0)))
    p = Path(s)
    if p.suffix.lower() in ARRAY_EXTENSIONS:
        _no_kwargs(s, kw, ("key",))
        return load_array(p, **kw)
    if p.is_dir():
        _no_kwargs(s, kw, ("size", "channels"))
        if "size" not in kw:
            raise ValueError(f"image folder {p} needs an image size (config: data.image_size=<int>; "
                             "images are resized and centre-cropped)")
        images, labels, _ = load_image_folder(p, **kw)
        return images, labels
    if p.is_file():
        raise ValueError(f"unsupported dataset file {p}: allowed {', '.join(ARRAY_EXTENSIONS)}, or a folder of images")
    if os.sep in s or (os.altsep and os.altsep in s) or p.suffix:
        raise FileNotFoundError(f"dataset path not found: {p}")
    raise ValueError(
        f"unknown dataset {s!r}; allowed: {', '.join(DATASET_NAMES)}, an image folder, or a .npy/.npz/.csv file"
    )
