"""Linear measurement operators y = A x for zero-shot inverse problems.

Each operator maps a batch x (B, *shape) to y (B, *out) and gives the transpose A^T and the
Moore-Penrose pseudo-inverse A^+ that projection methods need (DDNM, Wang et al. 2023, sec. 3.1;
replacement inpainting). ``matrix`` is the dense (M, D) matrix, for the exact posterior oracle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import check_positive_float, check_positive_int


class LinearOperator:
    """A linear map A from (B, *shape) to (B, *out): ``A(x)``, ``A.T(y)``, ``A.pinv(y)``."""

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def T(self, y: Tensor) -> Tensor:  # noqa: N802  (the transpose, as in numpy)
        """A^T y."""
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y (so that A A^+ A = A and A^+ A is the orthogonal projection onto A's row space)."""
        raise NotImplementedError

    def gram_pinv(self, v: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        """A^T (r2 A A^T + s2 I)^-1 v for r2 > 0, s2 >= 0; A^+ v / r2 when s2 = 0 (PiGDM, Song et al.
        2023, eq. 8 and its noiseless form). ``r2``: a number or one per sample (B,)."""
        raise NotImplementedError

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """x + A^+ (y - A x): x with its row-space part replaced by y's (DDNM's range-null split)."""
        return x + self.pinv(y - self(x))

    def matrix(self, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense (M, D) matrix of A on inputs of ``shape`` (one sample's shape)."""
        d = math.prod(shape)
        basis = torch.eye(d, dtype=dtype).reshape(d, *shape)
        return self(basis).reshape(d, -1).T


def _per_sample(c: Tensor | float, like: Tensor) -> Tensor:
    """A number or (B,) values shaped to broadcast over ``like`` (B, ...)."""
    c = torch.as_tensor(c, device=like.device)
    return c.reshape(-1, *[1] * (like.ndim - 1)) if c.ndim else c


class Mask(LinearOperator):
    """Inpainting / imputation: y = the entries of x where ``keep`` is True, flattened (B, M).

    A selects rows of the identity, so A A^T = I and A^+ = A^T (zeros at the unknown entries).
    """

    def __init__(self, keep: Tensor) -> None:
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool or not bool(keep.any()):
            raise ValueError(f"keep must be a boolean tensor of one sample's shape with a True entry, got {keep.dtype}")
        self.keep = keep
        self.index = keep.flatten().nonzero()[:, 0]

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self.index.to(x.device)]

    def T(self, y: Tensor) -> Tensor:  # noqa: N802
        out = y.new_zeros(y.shape[0], self.keep.numel())
        out[:, self.index.to(y.device)] = y
        return out.reshape(y.shape[0], *self.keep.shape)

    def pinv(self, y: Tensor) -> Tensor:
        return self.T(y)

    def gram_pinv(self, v: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        return self.T(v / _per_sample(r2 + s2, v))

    @classmethod
    def random(cls, shape: Sequence[int], keep_fraction: float, seed: int = 0) -> "Mask":
        """Keep each entry independently with probability ``keep_fraction`` (at least one)."""
        if not 0 < keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
        u = torch.rand(math.prod(shape), generator=torch.Generator().manual_seed(seed))
        u[u.argmin()] = 0.0
        return cls((u < keep_fraction).reshape(*shape))

    @classmethod
    def box(cls, shape: Sequence[int], top: int, left: int, height: int, width: int) -> "Mask":
        """Hide a height x width box at (top, left) of the last two axes; keep the rest."""
        keep = torch.ones(*shape, dtype=torch.bool)
        keep[..., top : top + height, left : left + width] = False
        return cls(keep)


class AvgPool(LinearOperator):
    """Super-resolution: y = factor x factor average pooling of images (B, C, H, W).

    A A^T = I / factor^2, so A^+ = factor^2 A^T = nearest-neighbour upsampling.
    """

    def __init__(self, factor: int) -> None:
        self.factor = check_positive_int("factor", factor)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the pooling factor {self.factor}")
        return F.avg_pool2d(x, self.factor)

    def T(self, y: Tensor) -> Tensor:  # noqa: N802
        return self.pinv(y) / self.factor**2

    def pinv(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    def gram_pinv(self, v: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        return self.pinv(v / _per_sample(r2 + self.factor**2 * s2, v))  # A A^T = I / factor^2


class GaussianBlur(LinearOperator):
    """Deblurring: y = k * x, a circular convolution of images (B, C, H, W) with a Gaussian of
    standard deviation ``std`` pixels, applied in the Fourier domain.

    A = F^-1 diag(K) F with real K (the kernel is symmetric), so A^T = A and A^+ keeps only the
    frequencies with K > ``cutoff`` max(K) (the truncated-SVD pseudo-inverse).
    """

    def __init__(self, std: float, size: Sequence[int], cutoff: float = 1e-3) -> None:
        check_positive_float("std", std)
        if len(size) != 2:
            raise ValueError(f"size must be the image's (H, W), got {tuple(size)}")
        h, w = (check_positive_int("size", int(v)) for v in size)
        if not 0 <= cutoff < 1:
            raise ValueError(f"cutoff must be in [0, 1) (a fraction of the largest frequency response), got {cutoff!r}")
        # the transfer function of the separable kernel exp(-r^2 / 2 std^2) at circular pixel offsets
        ky = torch.fft.fft(torch.exp(-0.5 * (torch.fft.fftfreq(h, 1 / h, dtype=torch.float64) / std) ** 2)).real
        kx = torch.fft.rfft(torch.exp(-0.5 * (torch.fft.fftfreq(w, 1 / w, dtype=torch.float64) / std) ** 2)).real
        k = ky[:, None] * kx[None, :]
        self.transfer = k / k[0, 0]
        self.inverse = torch.where(self.transfer.abs() > cutoff * self.transfer.abs().max(), 1 / self.transfer, 0.0)
        self.size = (h, w)

    def _filter(self, x: Tensor, k: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"this blur is built for images of size {self.size}, got {tuple(x.shape[-2:])}")
        return torch.fft.irfft2(torch.fft.rfft2(x) * k.to(device=x.device, dtype=x.dtype), s=self.size)

    def __call__(self, x: Tensor) -> Tensor:
        return self._filter(x, self.transfer)

    def T(self, y: Tensor) -> Tensor:  # noqa: N802
        return self(y)

    def pinv(self, y: Tensor) -> Tensor:
        return self._filter(y, self.inverse)

    def gram_pinv(self, v: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        r2 = _per_sample(r2, v).to(torch.float64)  # broadcasts against the (H, W // 2 + 1) response
        k = self.transfer.to(r2.device)
        return self._filter(v, self.inverse.to(r2.device) / r2 if s2 == 0 else k / (r2 * k**2 + s2))
