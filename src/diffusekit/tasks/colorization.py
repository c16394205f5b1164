"""Colorization by the score-SDE decoupling (Song et al. 2021, sec. 5 and app. I.4).

RGB is mapped by an orthogonal 3 x 3 transform M to a decorrelated colour space whose first
channel is the (scaled) luminance u . rgb, u = w / |w| for luminance weights w (summing to 1).
A greyscale image g = w . rgb fixes exactly that channel, y = g / |w|, and leaves the two others
free: colorization is the linear inverse problem y = A x with A = the first row of M applied
per pixel. A A^T = I, so A^+ = A^T, and ``Replacement(Greyscale(), y)`` (or RePaint) replaces
the luminance channel of x_t by a noised y after every step -- the paper's "replace the first
channel in the decorrelated space" -- while any solver generates the colour channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .operators import LinearOperator

#: Luminance weights: ``mean`` (equal, the score-SDE paper's transform) or ``rec601`` (ITU-R BT.601 luma).
LUMINANCE_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "mean": (1 / 3, 1 / 3, 1 / 3),
    "rec601": (0.299, 0.587, 0.114),
}


def decorrelating_transform(weights: Sequence[float]) -> Tensor:
    """The orthogonal (3, 3) float64 M whose first row is w / |w|; the other rows complete it by
    Gram-Schmidt on the standard basis (so M is fixed by ``weights``)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (3,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"luminance weights must be 3 finite non-negative numbers with a positive sum, got {list(weights)}")
    rows = [w / w.norm()]
    for e in torch.eye(3, dtype=torch.float64):
        v = e - sum((e @ r) * r for r in rows)
        if float(v.norm()) > 1e-6 and len(rows) < 3:
            rows.append(v / v.norm())
    return torch.stack(rows)


class Greyscale(LinearOperator):
    """y = u . rgb per pixel for images (B, 3, H, W) -> (B, 1, H, W): the first channel of the
    decorrelated colour space. Rows of an orthogonal matrix, so A A^T = I and A^+ = A^T."""

    def __init__(self, weights: str | Sequence[float] = "mean") -> None:
        if isinstance(weights, str):
            if weights not in LUMINANCE_WEIGHTS:
                raise ValueError(f"unknown luminance weights {weights!r}; allowed: {', '.join(LUMINANCE_WEIGHTS)} or 3 numbers")
            weights = LUMINANCE_WEIGHTS[weights]
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.transform = decorrelating_transform(w)
        self.weights = w / w.sum()  # luminance g = weights . rgb
        self.scale = float(self.weights.norm())  # y = g / scale

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"colorization needs RGB images (B, 3, H, W), got shape {tuple(x.shape)}")

    def to_decorrelated(self, x: Tensor) -> Tensor:
        """M rgb per pixel (B, 3, H, W); channel 0 is ``self(x)``."""
        self._check(x)
        return torch.einsum("ij,bjhw->bihw", self.transform.to(device=x.device, dtype=x.dtype), x)

    def from_decorrelated(self, z: Tensor) -> Tensor:
        """M^T z per pixel: the inverse of ``to_decorrelated``."""
        self._check(z)
        return torch.einsum("ji,bjhw->bihw", self.transform.to(device=z.device, dtype=z.dtype), z)

    def __call__(self, x: Tensor) -> Tensor:
        return self.to_decorrelated(x)[:, :1]

    def T(self, y: Tensor) -> Tensor:  # noqa: N802
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"a greyscale measurement has shape (B, 1, H, W), got {tuple(y.shape)}")
        return y * self.transform[0].to(device=y.device, dtype=y.dtype)[None, :, None, None]

    def pinv(self, y: Tensor) -> Tensor:
        return self.T(y)

    def luminance(self, x: Tensor) -> Tensor:
        """g = w . rgb (B, 1, H, W), in the images' own range (w sums to 1)."""
        return self(x) * self.scale

    def measurement(self, grey: Tensor) -> Tensor:
        """The measurement y = A x of any colour image x with luminance ``grey`` (B, 1, H, W)."""
        return grey / self.scale

    def grey_image(self, grey: Tensor) -> Tensor:
        """The greyscale baseline: R = G = B = g (it has luminance g, so it satisfies A x = y)."""
        return grey.expand(-1, 3, -1, -1)
