"""Small dataset classifiers used as feature extractors, confidence and Inception Score.

For 8x8 digits and 28x28 Fashion-MNIST the ImageNet Inception network is a poor
and slow judge, so the library trains a small CNN per dataset and uses its
penultimate layer as the feature space for Frechet distance (Heusel et al.
2017), KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi et al.
2019), and its logits for the Inception Score (Salimans et al. 2016) and a
class-confidence check. Trained weights are cached as safetensors under the
diffusekit cache folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.images import load_digits, load_fashion_mnist
from ..progress import progress_bar
from .frechet import compute_stats, default_cache_dir, frechet_distance

ArrayLike = np.ndarray | Tensor

#: Bump when the architecture or training recipe changes: old cached weights are then ignored.
RECIPE_VERSION = 1
#: Where Debian's ``dataset-fashion-mnist`` package puts the idx files.


class Classifier(nn.Module):
    """Small CNN: two conv+pool stages, a ``feature_dim`` penultimate layer and a linear head.

    Inputs are (N, C, H, W) in [-1, 1] with H, W divisible by 4. Calling the
    module returns the penultimate **features** (so it is a ``FeatureExtractor``
    with a ``name``); use :meth:`logits` for class scores.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, *, width: int = 32,
                 feature_dim: int = 128, name: str = "classifier") -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                       "width": width, "feature_dim": feature_dim}
        self.name = name
        #: True when the weights were read from the cache instead of trained in this process.
        self.from_cache = False
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def _prepare(self, x: Tensor) -> Tensor:
        expected = (self.config["in_channels"], self.config["image_size"], self.config["image_size"])
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        p = self.head.weight
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features, shape (N, feature_dim)."""
        return self.body(self._prepare(x))

    def logits(self, x: Tensor) -> Tensor:
        """Unnormalised class scores, shape (N, num_classes)."""
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`features` (the FeatureExtractor call)."""
        return self.features(x)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Predicted class indices, shape (N,), computed in batches."""
        was_training = self.training
        self.eval()
        parts = [self.logits(x[i:i + batch_size]).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
        self.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _as_image_tensor(images: ArrayLike) -> Tensor:
    t = images.detach() if isinstance(images, Tensor) else torch.from_numpy(np.asarray(images))
    t = t.to(torch.float32)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(t.shape)}")
    return t


def train_classifier(
    images: ArrayLike,
    labels: ArrayLike,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    feature_dim: int = 128,
    num_classes: int | None = None,
    name: str = "classifier",
    progress: bool = False,
) -> Classifier:
    """Train a :class:`Classifier` on (N, C, H, W) images in [-1, 1] and integer labels.

    Deterministic for a given ``seed`` (initialisation and shuffling use their own
    RNG; the global torch RNG is left as it was). AdamW with cosine-decayed
    learning rate and cross-entropy. Returns the model in eval mode on CPU.
    """
    x = _as_image_tensor(images)
    y = (labels.detach() if isinstance(labels, Tensor) else torch.from_numpy(np.asarray(labels))).long().reshape(-1)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images must be square, got {tuple(x.shape[-2:])}")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    n = x.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total_steps = max(1, epochs * steps_per_epoch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(x.shape[1], x.shape[-1], num_classes, width=width, feature_dim=feature_dim, name=name)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + float(np.cos(np.pi * min(step, total_steps) / total_steps))))
    model.train()
    bar = progress_bar(total=epochs, desc=f"train {name}", unit="epoch", enabled=progress, leave=False)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model.logits(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * idx.shape[0]
        bar.set_postfix(loss=f"{running / n:.4f}")
        bar.update(1)
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def classifier_accuracy(classifier: Classifier, images: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of correctly classified images."""
    x = _as_image_tensor(images)
    y = (labels.detach() if isinstance(labels, Tensor) else torch.from_numpy(np.asarray(labels))).long().reshape(-1)
    return float((classifier.predict(x) == y).double().mean())


class DigitsSplit(NamedTuple):
    """sklearn digits as (N, 1, 8, 8) float32 images in [-1, 1] and int64 labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_digits_split(*, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Load sklearn's 8x8 digits, scale as (v / 16) * 2 - 1 and split reproducibly by ``seed``."""
    images, labels = load_digits()
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
    n_test = int(round(test_fraction * images.shape[0]))
    test, train = perm[:n_test], perm[n_test:]
    return DigitsSplit(images[train], labels[train], images[test], labels[test])


#: Training settings per dataset; ``epochs`` keeps training at seconds (digits) or minutes (Fashion-MNIST).
_RECIPES: dict[str, dict[str, float | int]] = {
    "digits": {"epochs": 20, "batch_size": 64, "lr": 2e-3, "width": 32, "feature_dim": 128},
    "fashion_mnist": {"epochs": 4, "batch_size": 128, "lr": 2e-3, "width": 32, "feature_dim": 128},
}
_ALIASES = {"digits": "digits", "fashion_mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
            "fashion": "fashion_mnist"}


def _dataset_key(dataset_name: str) -> str:
    key = _ALIASES.get(dataset_name.lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"no classifier for dataset {dataset_name!r}; allowed: {', '.join(sorted(_RECIPES))}")
    return key


def classifier_weights_path(dataset_name: str, cache_dir: str | os.PathLike[str] | None = None,
                            seed: int = 0) -> Path:
    """Where :func:`classifier_features` keeps the weights of a dataset's classifier."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "classifiers" / f"{_dataset_key(dataset_name)}-v{RECIPE_VERSION}-seed{seed}.safetensors"


def save_classifier(classifier: Classifier, path: str | os.PathLike[str]) -> None:
    """Write weights and config to a safetensors file atomically (temporary file + ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {k: str(v) for k, v in classifier.config.items()}
    metadata["name"] = classifier.name
    metadata["recipe_version"] = str(RECIPE_VERSION)
    state = {k: v.detach().contiguous().cpu() for k, v in classifier.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache file is shareable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_classifier(path: str | os.PathLike[str]) -> Classifier:
    """Read a classifier written by :func:`save_classifier` (eval mode, CPU)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    ints = {k: int(meta[k]) for k in ("in_channels", "image_size", "num_classes", "width", "feature_dim")}
    model = Classifier(ints["in_channels"], ints["image_size"], ints["num_classes"], width=ints["width"],
                       feature_dim=ints["feature_dim"], name=meta.get("name", "classifier"))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.from_cache = True
    return model


def classifier_features(
    dataset_name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    train_data: tuple[ArrayLike, ArrayLike] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Classifier:
    """The trained classifier for ``digits`` or ``fashion_mnist``, loaded from cache or trained and saved.

    Digits train on the training part of :func:`load_digits_split` (``seed`` 0),
    so its test part is held out. Fashion-MNIST trains on ``train_data`` if given,
    else on the train idx files in ``data_dir`` (default: Debian's location).
    The result's ``from_cache`` tells whether it was loaded.
    """
    key = _dataset_key(dataset_name)
    path = classifier_weights_path(key, cache_dir, seed)
    if path.is_file():
        try:
            return load_classifier(path)
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # unreadable or stale file: retrain and overwrite
    if train_data is not None:
        images, labels = train_data
    elif key == "digits":
        split = load_digits_split()
        images, labels = split.train_images, split.train_labels
    else:
        images, labels = load_fashion_mnist("train", data_dir)
    recipe = _RECIPES[key]
    model = train_classifier(
        images, labels, seed=seed, epochs=int(recipe["epochs"]), batch_size=int(recipe["batch_size"]),
        lr=float(recipe["lr"]), width=int(recipe["width"]), feature_dim=int(recipe["feature_dim"]),
        num_classes=10, name=f"classifier_{key}_v{RECIPE_VERSION}_seed{seed}", progress=progress)
    save_classifier(model, path)
    return model


def classifier_frechet_distance(
    samples: ArrayLike,
    dataset_name: str = "digits",
    *,
    real: ArrayLike | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> float:
    """Frechet distance between ``samples`` and real images in the dataset classifier's feature space.

    d^2 = |mu_s - mu_r|^2 + tr(S_s + S_r - 2 (S_s S_r)^{1/2}) between Gaussian fits of the
    penultimate features of :func:`classifier_features` (the FID formula of Heusel et al.
    2017 with the small dataset classifier in place of Inception). ``samples`` and ``real``
    are (N, C, H, W) in [-1, 1]; ``real`` defaults to all 1,797 sklearn digits for
    ``digits`` and to the Fashion-MNIST test split for ``fashion_mnist``.
    """
    key = _dataset_key(dataset_name)
    classifier = classifier_features(key, cache_dir, seed=seed)
    if real is None:
        real = load_digits()[0] if key == "digits" else load_fashion_mnist("test")[0]
    stats = [compute_stats(classifier, _as_image_tensor(x), batch_size, progress=False) for x in (samples, real)]
    return frechet_distance(stats[0], stats[1])


class Confidence(NamedTuple):
    """Mean top-class probability and per-class counts of predicted labels."""

    mean_confidence: float
    histogram: np.ndarray


def confidence_from_probs(probs: Tensor, num_classes: int) -> Confidence:
    """Mean top-class probability and predicted-class counts from (N, classes) probabilities."""
    if probs.shape[0] == 0:
        raise ValueError("no samples")
    conf, pred = probs.double().max(dim=1)
    hist = np.bincount(pred.cpu().numpy(), minlength=num_classes).astype(np.int64)
    return Confidence(float(conf.mean()), hist)


@torch.no_grad()
def classifier_confidence(classifier: Classifier, samples: ArrayLike, batch_size: int = 1024) -> Confidence:
    """Mean max softmax probability of ``samples`` and the histogram (counts) of predicted classes.

    Sharp, confident predictions spread evenly over classes are what the
    Inception Score rewards (Salimans et al. 2016); this reports both parts.
    """
    x = _as_image_tensor(samples)
    probs = [torch.softmax(classifier.logits(x[i:i + batch_size]).double(), dim=1).cpu() for i in range(0, x.shape[0], batch_size)]
    return confidence_from_probs(torch.cat(probs) if probs else torch.empty(0, classifier.num_classes), classifier.num_classes)


def logistic_digits_confidence(samples: ArrayLike) -> Confidence:
    """The demo's recognisability figure: a scikit-learn logistic regression trained on all
    real 8x8 digits (pixels 0..16) scores samples in [-1, 1] (clipped, mapped back to 0..16)."""
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits()
    clf = LogisticRegression(max_iter=5000).fit(((images + 1) * 8).flatten(1).numpy(), labels.numpy())
    x = _as_image_tensor(samples).clamp(-1, 1)
    probs = torch.from_numpy(clf.predict_proba(((x + 1) * 8).flatten(1).double().numpy()))
    return confidence_from_probs(probs, 10)


class InceptionScore(NamedTuple):
    """Mean and std of exp(E KL(p(y|x) || p(y))) over splits."""

    mean: float
    std: float


def inception_score(logits: ArrayLike, splits: int = 10) -> InceptionScore:
    """Inception Score from class logits (Salimans et al. 2016), any classifier.

    IS = exp(E_x KL(p(y|x) || p(y))) computed on each of ``splits`` consecutive
    chunks (p(y) is the chunk's mean prediction); returns mean and std over chunks.
    """
    z = logits.detach().to("cpu", torch.float64) if isinstance(logits, Tensor) else torch.from_numpy(
        np.asarray(logits, dtype=np.float64))
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (N, classes), got {tuple(z.shape)}")
    if not 1 <= splits <= z.shape[0]:
        raise ValueError(f"splits must be in [1, N={z.shape[0]}], got {splits}")
    log_p = torch.log_softmax(z, dim=1)
    scores = []
    for chunk in torch.tensor_split(log_p, splits, dim=0):
        log_marginal = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    arr = np.asarray(scores)
    return InceptionScore(float(arr.mean()), float(arr.std()))
