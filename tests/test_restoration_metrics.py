"""PSNR and SSIM: identities and one window against the formula written out."""

from __future__ import annotations

import math

import torch

from diffusekit.metrics.restoration import psnr, ssim


def test_psnr_and_ssim_identities() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    torch.testing.assert_close(ssim(x, x), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((4,), 10 * math.log10(4 / 0.01), dtype=torch.float64))
    near, far = ssim(x + 0.05 * noise, x), ssim(x + 0.5 * noise, x)
    assert bool((near < 1).all() and (far < near).all())
    torch.testing.assert_close(ssim(x, x + 0.3 * noise), ssim(x + 0.3 * noise, x))  # symmetric


def test_ssim_on_a_7x7_image_is_the_weighted_formula() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 1, 7, 7, generator=g, dtype=torch.float64), torch.rand(1, 1, 7, 7, generator=g, dtype=torch.float64)
    r = torch.arange(7, dtype=torch.float64) - 3
    w = torch.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / 1.5**2)
    w = w / w.sum()
    ma, mb = (w * a).sum(), (w * b).sum()
    va, vb, cv = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
    c1, c2 = 0.02**2, 0.06**2
    expect = (2 * ma * mb + c1) * (2 * cv + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    torch.testing.assert_close(ssim(a, b)[0], expect)
