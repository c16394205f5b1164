"""Integrals of Lagrange interpolants: the weights of every multistep rule in ``solvers``.

A multistep (Adams-type) step replaces the integrand by the polynomial through values
M_j at nodes tau_j and integrates it exactly against a weight w on [0, 1]:

    int_0^1 w(tau) sum_j l_j(tau) M_j dtau = sum_j beta_j M_j,   beta_j = int_0^1 w(tau) l_j(tau) dtau,

with l_j the Lagrange basis (Hairer, Norsett & Wanner, Solving ODEs I, sec. III.1). The
rules differ only in w and the interpolation variable:

- Adams-Bashforth / LMS in s = sigma / alpha and DEIS in rho: w = 1 (``unit_moments``);
- the exponential integrators (DPM-Solver, UniPC): w(tau) = h e^{z (1 - tau)}
  (``exponential.exp_moments``);
- tAB-DEIS and ``gaussian_pc``: the interpolation variable is a nonlinear function of the
  integration variable, so w is the Jacobian, and its moments come from Gauss-Legendre
  quadrature (``quadrature_moments``).

All of them call ``lagrange_weights`` with the moments of their w.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from torch import Tensor

Number = TypeVar("Number", float, Tensor)


def lagrange_weights(nodes: Sequence[Number], moments: Sequence[Number]) -> list[Number]:
    """beta_j = int w l_j for the Lagrange basis l_j on ``nodes``, from moments[k] = int w tau^k.

    The weights solve the moment equations sum_j beta_j tau_j^k = moments[k] (k < n): with
    l_j(tau) = sum_k c_jk tau^k, beta_j = sum_k c_jk moments[k]. Exact for polynomials of
    degree < n = len(nodes). Python floats (float64), or tensors elementwise (one rule per
    sample, as the adaptive DPM-Solver needs).
    """
    n = len(nodes)
    if n == 1:
        return [moments[0]]
    out = []
    for j, tj in enumerate(nodes):
        poly = [1.0]  # monomial coefficients of prod_{m != j} (tau - tau_m), increasing powers
        denom = 1.0
        for m, tm in enumerate(nodes):
            if m == j:
                continue
            nxt = [0.0] * (len(poly) + 1)
            for k, c in enumerate(poly):
                nxt[k + 1] += c
                nxt[k] -= tm * c
            poly = nxt
            denom *= tj - tm
        out.append(sum(c * g for c, g in zip(poly, moments[:n])) / denom)
    return out


def unit_moments(n: int) -> list[float]:
    """Moments int_0^1 tau^k dtau = 1 / (k + 1) of the unit weight, k < n (Adams weights)."""
    return [1.0 / (k + 1) for k in range(n)]


def quadrature_moments(points: np.ndarray, weights: np.ndarray, n: int) -> list[float]:
    """Moments sum_q weights[q] points[q]^k, k < n, of a weight given by a quadrature rule."""
    return [float((weights * points**k).sum()) for k in range(n)]
