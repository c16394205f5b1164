"""2-D toy distributions for diffusion experiments.

Every generator returns a float32 tensor (n, 2) scaled so the support lies in
(or, for the Gaussian-noise components, essentially in) [-1, 1]^2, and is
deterministic given ``seed`` (a private :class:`torch.Generator` is used; the
global RNG is untouched).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import SupportsIndex

import torch
from torch import Tensor

__all__ = ["CONDITIONAL_TOY_NAMES", "TOY_NAMES", "make_conditional_toy", "make_toy", "shifted_mixture_means"]


def _mixture(n: int, g: torch.Generator) -> Tensor:
    """8 Gaussians (std 0.05) centred on a circle of radius 0.8."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centres = 0.8 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.05 * torch.randn(n, 2, generator=g)


def _moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaving half circles (as in scikit-learn's make_moons), noise 0.04."""
    upper = torch.rand(n, generator=g) < 0.5
    theta = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([(x - 0.5) / 1.6, (y - 0.25) / 1.6], dim=1)
    return pts + 0.04 * torch.randn(n, 2, generator=g)


def _swiss_roll(n: int, g: torch.Generator) -> Tensor:
    """2-D Swiss roll ``t (cos t, sin t)`` for ``t in [1.5 pi, 4.5 pi]``, noise 0.02."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (4.5 * math.pi * 1.05)
    return pts + 0.02 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 "black" cells of a 4x4 checkerboard over [-1, 1]^2."""
    x = 2 * torch.rand(n, generator=g) - 1
    col = ((x + 1) * 2).floor().clamp(0, 3).long()
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
    y = -1 + 0.5 * (row.float() + torch.rand(n, generator=g))
    return torch.stack([x, y], dim=1)


def _rings(n: int, g: torch.Generator) -> Tensor:
    """Three concentric circles of radii 0.3, 0.6, 0.9 (mass proportional to radius), noise 0.025."""
    radii = torch.tensor([0.3, 0.6, 0.9])
    k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
    theta = 2 * math.pi * torch.rand(n, generator=g)
    r = radii[k]
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return pts + 0.025 * torch.randn(n, 2, generator=g)


_TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "mixture": _mixture,
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
    "rings": _rings,
}

TOY_NAMES: tuple[str, ...] = tuple(_TOYS)


def make_toy(name: str, n: SupportsIndex, seed: int = 0) -> Tensor:
    """Sample ``n`` points (n, 2) float32 from the named toy distribution.

    Names: ``mixture`` (8 Gaussians on a circle), ``moons``, ``swiss_roll``,
    ``checkerboard``, ``rings``.
    """
    if name not in _TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; allowed: {', '.join(TOY_NAMES)}")
    try:
        count = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be a positive int, got {n!r}") from None
    if count < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    return _TOYS[name](count, g).to(torch.float32).contiguous()


# ---- toys with a condition vector per point -------------------------------------------------------
SHIFTED_MIXTURE_STD = 0.1


def shifted_mixture_means(c: Tensor) -> Tensor:
    """The two component means (B, 2, 2) of ``shifted_mixture`` at conditions c (B, 1): (-+0.5, 0.5 c)."""
    x = torch.tensor([-0.5, 0.5], dtype=c.dtype, device=c.device)
    return torch.stack([x.expand(c.shape[0], 2), (0.5 * c).expand(c.shape[0], 2)], dim=2)


def _shifted_mixture(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """c ~ U(-1, 1); x ~ N((-0.5, 0.5 c), 0.1^2) or N((0.5, 0.5 c), 0.1^2), each with probability 1/2."""
    c = 2 * torch.rand(n, 1, generator=g) - 1
    k = torch.randint(0, 2, (n,), generator=g)
    means = shifted_mixture_means(c)[torch.arange(n), k]
    return means + SHIFTED_MIXTURE_STD * torch.randn(n, 2, generator=g), c


_CONDITIONAL_TOYS: dict[str, Callable[[int, torch.Generator], tuple[Tensor, Tensor]]] = {
    "shifted_mixture": _shifted_mixture,
}

CONDITIONAL_TOY_NAMES: tuple[str, ...] = tuple(_CONDITIONAL_TOYS)


def make_conditional_toy(name: str, n: SupportsIndex, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points (n, 2) and their condition vectors (n, k), float32: ``shifted_mixture`` (a two-component
    mixture whose vertical position is half the condition c ~ U(-1, 1), k = 1)."""
    if name not in _CONDITIONAL_TOYS:
        raise ValueError(f"unknown conditional toy {name!r}; allowed: {', '.join(CONDITIONAL_TOY_NAMES)}")
    count = operator.index(n)
    if count < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    x, c = _CONDITIONAL_TOYS[name](count, torch.Generator().manual_seed(int(seed)))
    return x.float().contiguous(), c.float().contiguous()
