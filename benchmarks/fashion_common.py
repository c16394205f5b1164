"""The one Fashion-MNIST model that the Fashion benchmarks of issues 13-16 share, and its FID reference.

    diffusekit train benchmarks/fashion_joint.toml --out runs/fashion-joint     # ~45-60 min on 2 CPU cores

``fashion_joint.toml`` is a CPU budget, not the paper settings: the tiny U-Net (755k parameters)
on 28x28 Fashion-MNIST for 4,000 steps of batch 64 (4.3 epochs), a DDPM (1,000-step linear
betas, eps prediction) with a learned-variance head and the hybrid loss (Nichol & Dhariwal 2021,
eq. 16), class labels dropped with probability 0.1 (Ho & Salimans 2022), so one network serves
as conditional, unconditional, learned-variance and teacher model in every table.

FID (Heusel et al. 2017) uses the Inception network of ``diffusekit.metrics.inception`` against
a fixed reference: the first :data:`REF_PER_CLASS` images of each class of the t10k test split,
whose features are cached (``diffusekit.metrics.frechet.cached_features``) so that every script
and per-class FID reuses them. With a few hundred images per side FID is biased upwards; compare
cells of equal n only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffusekit.data.images import load_fashion_mnist
from diffusekit.metrics.frechet import cached_features, frechet_distance_from_features
from diffusekit.metrics.inception import InceptionFeatures

CONFIG = Path(__file__).parent / "fashion_joint.toml"
DEFAULT_RUN = "runs/fashion-joint"
REF_PER_CLASS = 200


def fashion_run(path: str = DEFAULT_RUN) -> Path:
    """The shared run folder, trained from :data:`CONFIG` first if it has no checkpoint."""
    if not (Path(path) / "checkpoints").is_dir():
        subprocess.run([sys.executable, "-m", "diffusekit.cli", "train", str(CONFIG), "--out", path], check=True)
    return Path(path)


def reference_set(per_class: int = REF_PER_CLASS) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` t10k images of each class, (10 per_class, 1, 28, 28) in [-1, 1], and labels."""
    images, labels = load_fashion_mnist("test")
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
    return images[idx], labels[idx]


def reference_features(per_class: int = REF_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Inception features of :func:`reference_set` (cached on disk) and their labels."""
    images, labels = reference_set(per_class)
    feats = cached_features(f"{InceptionFeatures.name}-fashion_mnist-t10k-first{per_class}perclass",
                            lambda: InceptionFeatures()(images).numpy())
    return feats, labels.numpy()


def fid(samples: Tensor, labels: Tensor | None = None, per_class: bool = False) -> dict[str, float]:
    """FID of ``samples`` ([-1, 1] images) to the reference; with ``per_class``, also one FID per class
    of ``labels`` (the class each sample was asked for) against that class's reference images."""
    ref, ref_labels = reference_features()
    feats = InceptionFeatures()(samples.clamp(-1, 1)).numpy()
    out = {"all": frechet_distance_from_features(feats, ref)}
    if per_class:
        if labels is None:
            raise ValueError("per_class FID needs the labels the samples were drawn for")
        lab = labels.cpu().numpy()
        for c in range(10):
            out[str(c)] = frechet_distance_from_features(feats[lab == c], ref[ref_labels == c])
    return out
