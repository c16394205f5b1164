"""Full-reference image quality for restoration: PSNR and SSIM (Wang et al. 2004, IEEE TIP, eq. 13).

Images (N, C, H, W) in [-1, 1] (data range 2). SSIM uses a Gaussian window of std 1.5 (the paper's
sec. III.C), of size min(7, H, W), over the 'valid' positions, averaged over positions and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape or x.ndim != 4:
        raise ValueError(f"images must both be (N, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-image PSNR in dB: 10 log10(range^2 / MSE) (N,)."""
    _check(x, ref)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, ref: Tensor, data_range: float = 2.0, sigma: float = 1.5) -> Tensor:
    """Per-image mean SSIM (N,), with C1 = (0.01 L)^2, C2 = (0.03 L)^2."""
    _check(x, ref)
    size = min(7, x.shape[-1], x.shape[-2])
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    w = (g[:, None] * g[None, :] / g.sum() ** 2).to(x.device)
    c = x.shape[1]
    kernel = w.expand(c, 1, size, size)
    a, b = x.double(), ref.double()

    def blur(v: Tensor) -> Tensor:
        return F.conv2d(v, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
