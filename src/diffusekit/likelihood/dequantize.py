"""Bits per dimension of discrete (8-bit) data under a continuous density, by dequantization.

Theis et al. 2016, sec. 3.1; Ho et al. 2019 (Flow++), sec. 3.1. An integer
image k in {0, ..., 2^n - 1}^D is mapped to x = low + (high - low) (k + u) / 2^n
with u in [0, 1)^D. For any density p on x and any q(u | k) on the unit cube,

    log P(k) >= E_{u ~ q} [log p(x(k, u)) + D log((high - low) / 2^n) - log q(u | k)],

where the middle term is the Jacobian of u -> x (Jensen; uniform dequantization is
q = 1, log q = 0). In bits per dimension, for the usual [-1, 1] scaling of 8-bit
data, bpd = nll_x / (D ln 2) + 7 (score SDE's "+ 7"; Song et al. 2021, app. D.2).

A variational dequantizer (Flow++) is any callable ``dequantizer(k, noise_seed)``
returning (u, log q(u | k)) with u in [0, 1)^D shaped like k and log q summed per
sample; with the optimal q(u | k) proportional to p(x(k, u)) the bound is tight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..noise import NoiseSource
from ..utils import check_positive_int

LN2 = math.log(2.0)
Dequantizer = Callable[[Tensor, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class DequantizedResult:
    """Per-sample bits/dim (B,) with its Monte-Carlo standard error over dequantization draws
    (and, where the log-density reports one, its own estimator error), plus the draws (B, S)."""

    bits_per_dim: Tensor
    std_error: Tensor
    log_p_draws: Tensor
    log_q_draws: Tensor


def scale_to_data(k: Tensor, u: Tensor, n_bits: int = 8, low: float = -1.0, high: float = 1.0) -> Tensor:
    """x = low + (high - low) (k + u) / 2^n: integer levels plus offsets in [0, 1) to the data range."""
    return low + (high - low) * (k.to(u.dtype) + u) / 2**n_bits


def log_jacobian(dim: int, n_bits: int = 8, low: float = -1.0, high: float = 1.0) -> float:
    """D log((high - low) / 2^n): log |det d x / d (k + u)|, the change of variables to the level scale."""
    return dim * math.log((high - low) / 2**n_bits)


def uniform_dequantize(k: Tensor, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """u ~ U[0, 1)^D per sample from per-sample noise streams; log q(u | k) = 0."""
    src = NoiseSource.from_seed(seed, k.shape[0], k.device)
    z = src.normal(0, k.shape[1:], torch.float64)
    u = torch.special.ndtr(z).clamp(0.0, 1.0 - 1e-12).to(dtype)  # Phi(z) ~ U[0, 1)
    return u, torch.zeros(k.shape[0], dtype=torch.float64, device=k.device)


def bits_per_dim_from_log_p(
    log_p_x: Tensor, dim: int, n_bits: int = 8, low: float = -1.0, high: float = 1.0, log_q: Tensor | float = 0.0
) -> Tensor:
    """bpd = -(log p(x) + D log((high - low)/2^n) - log q(u | k)) / (D ln 2) for one dequantization draw."""
    return -(log_p_x + log_jacobian(dim, n_bits, low, high) - log_q) / (dim * LN2)


def dequantized_bits_per_dim(
    log_prob: Callable[[Tensor], Tensor],
    k: Tensor,
    *,
    n_bits: int = 8,
    low: float = -1.0,
    high: float = 1.0,
    samples: int = 1,
    dequantizer: Dequantizer | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> DequantizedResult:
    """Upper bound on the bits/dim of integer data ``k`` (B, ...) under the density ``log_prob``.

    ``log_prob(x)`` returns log p(x) in nats per sample for x in the data range, e.g.
    ``lambda x: ode_log_likelihood(denoiser, x).log_p``. ``samples`` dequantization
    draws per image (seeds ``seed``, ``seed + 1``, ...); uniform unless a variational
    ``dequantizer(k, seed) -> (u, log q)`` is given. Theis et al. 2016; Ho et al. 2019.
    """
    check_positive_int("samples", samples)
    levels = 2**n_bits
    if bool(((k < 0) | (k >= levels)).any()) or (k.is_floating_point() and bool((k != k.round()).any())):
        raise ValueError(f"k must hold integers in [0, {levels - 1}]")
    d = k[0].numel()
    deq = dequantizer if dequantizer is not None else (lambda kk, s: uniform_dequantize(kk, s, dtype))
    lps, lqs = [], []
    for s in range(samples):
        u, log_q = deq(k, seed + s)
        if u.shape != k.shape:
            raise ValueError(f"the dequantizer returned u of shape {tuple(u.shape)} for k of shape {tuple(k.shape)}")
        x = scale_to_data(k, u.to(dtype), n_bits, low, high)
        lps.append(log_prob(x).double())
        lqs.append(torch.as_tensor(log_q, dtype=torch.float64, device=k.device).expand(k.shape[0]))
    log_p = torch.stack(lps, 1)
    log_q = torch.stack(lqs, 1)
    per_draw = bits_per_dim_from_log_p(log_p, d, n_bits, low, high, log_q)
    bpd = per_draw.mean(1)
    se = per_draw.std(1) / math.sqrt(samples) if samples > 1 else torch.full_like(bpd, math.nan)
    return DequantizedResult(bpd, se, log_p, log_q)


def gaussian_dequantized_bits_per_dim(
    k: Tensor, mean: Tensor, std: Tensor, *, n_bits: int = 8, low: float = -1.0, high: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Closed forms for a diagonal Gaussian p = N(mean, std^2) (reference for tests and sanity checks).

    Returns (uniform-dequantization bpd, exact discrete bpd): the first uses
    E_u[(x - m)^2] = (c - m)^2 + w^2 / 12 for x uniform on a bin of width w and centre c;
    the second is -log2 of the Gaussian mass of each bin, per dimension.
    """
    k = k.double()
    d = k[0].numel()
    w = (high - low) / 2**n_bits
    lo_edge = low + w * k
    centre = lo_edge + 0.5 * w
    mean = torch.as_tensor(mean, dtype=torch.float64).expand_as(k)
    std = torch.as_tensor(std, dtype=torch.float64).expand_as(k)
    e_sq = (centre - mean) ** 2 + w**2 / 12
    e_log_p = (-0.5 * math.log(2 * math.pi) - std.log() - 0.5 * e_sq / std**2).flatten(1).sum(1)
    uniform_bpd = -(e_log_p + d * math.log(w)) / (d * LN2)
    a, b = (lo_edge - mean) / std, (lo_edge + w - mean) / std
    log_mass = log_normal_mass(a, b).flatten(1).sum(1)
    return uniform_bpd, -log_mass / (d * LN2)


def log_normal_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (uses the upper tail where a > 0)."""
    flip = a > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))
