"""The exponential-integrator kernel shared by DPM-Solver, DEIS, UniPC and the Gaussian end.

With lambda = log(alpha / sigma), the probability-flow ODE has the exact solutions
(DPM-Solver, Lu et al. 2022a, eq. 3.4; DPM-Solver++, Lu et al. 2022b, eq. 8)

    noise form:  x1 = (alpha1/alpha0) x0 - sigma1 int_{lam0}^{lam1} e^{lam1 - lam} eps(lam) dlam,
    data form:   x1 = (sigma1/sigma0) x0 + alpha1 int_{lam0}^{lam1} e^{-(lam1 - lam)} D(lam) dlam,

and every exponential integrator replaces eps (or the data prediction D) by the polynomial
in lambda through some model outputs, then integrates it exactly. With tau = (lam -
lam0) / h in [0, 1] and nodes tau_j, the weights beta_j of ``sum_j beta_j M_j`` are the
integrals of the Lagrange basis against h e^{z (1 - tau)} (``lagrange.lagrange_weights``
with the moments ``h k! phi_{k+1}(z)``, z = -h data, +h noise). This single rule
(``exp_weights``) is

- DPM-Solver-k singlestep (Lu 2022a, Alg. 1-2; nodes 0, r1, r2 inside the step),
- DPM-Solver-k / DPM-Solver++(kM) multistep (Lu 2022b, Alg. 2 and the 3M rule;
  nodes at earlier steps, tau_j < 0),
- SDE-DPM-Solver++ (Lu 2022b, sec. 5 / appendix; with eta, z = -(1 + eta) h),
- UniP / UniC (``unipc.py``) and the log-rho DEIS variant.

Coefficients are Python floats in float64; phi functions use expm1 or their
Taylor series. Two limits need their own rule and every solver shares them:

- alpha0 = 0 (zero terminal SNR, lambda0 = -inf): the step is the exact limit
  x1 = alpha1 x0_hat + sigma1 eps_hat (DDIM), in both forms (``ddim_limit``);
- sigma1 = 0 (the clean end, lambda1 = +inf, exp(-h) = 0): the data form's first
  order step is exactly x1 = D0 (the noise form's is the same limit); polynomials in
  lambda cannot be extrapolated to lambda = +inf, so higher orders there interpolate
  eps in rho = sigma/alpha instead (``clean_end``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..stepping import Step
from ..tuned import FINAL_STEPS_MAX_ORDER, SHORT_GRID_STEPS
from .lagrange import lagrange_weights, unit_moments

_SERIES_TERMS = 24


def exp_moments(z: float, n: int) -> list[float]:
    """m_k(z) = int_0^1 e^{z (1 - tau)} tau^k dtau = k! phi_{k+1}(z) for k < n.

    Hochbruck & Ostermann 2010 (exponential integrators), eq. (2.10). For |z| < 1 the
    Taylor series m_k = k! sum_j z^j / (j + k + 1)! avoids cancellation; otherwise the
    recursion m_0 = expm1(z) / z, m_k = (k m_{k-1} - 1) / z (integration by parts).
    """
    if abs(z) < 1.0:
        out = []
        for k in range(n):
            term = 1.0 / math.factorial(k + 1)  # z^0 / (k+1)!
            total = term
            for j in range(1, _SERIES_TERMS):
                term *= z / (j + k + 1)
                total += term
            out.append(math.factorial(k) * total)
        return out
    m = [math.expm1(z) / z]
    for k in range(1, n):
        m.append((k * m[-1] - 1.0) / z)
    return m


def exp_moments_tensor(z: Tensor, n: int) -> list[Tensor]:
    """``exp_moments`` elementwise for a float64 tensor z (series for |z| < 1)."""
    small = z.abs() < 1.0
    zs = torch.where(small, torch.ones_like(z), z)
    rec = [torch.expm1(zs) / zs]
    for k in range(1, n):
        rec.append((k * rec[-1] - 1.0) / zs)
    out = []
    for k in range(n):
        term = torch.full_like(z, 1.0 / math.factorial(k + 1))
        total = term.clone()
        for j in range(1, _SERIES_TERMS):
            term = term * z / (j + k + 1)
            total = total + term
        out.append(torch.where(small, math.factorial(k) * total, rec[k]))
    return out


def lincomb(
    x: Tensor, scale: float, coeffs: list[float], terms: list[Tensor]
) -> Tensor:
    """scale * x + sum_i coeffs[i] * terms[i] with one kernel per term."""
    out = x * scale
    for c, t in zip(coeffs, terms):
        if c != 0.0:
            out.add_(t, alpha=c)
    return out


class Node(NamedTuple):
    """One model evaluation kept for later steps: its log-SNR and its prediction, whose x0 and
    eps are built only if a step reads them (a data-form solver never builds eps)."""

    lam: float
    pred: Prediction

    @property
    def x0(self) -> Tensor:
        return self.pred.x0

    @property
    def eps(self) -> Tensor:
        return self.pred.eps

    @staticmethod
    def of(pred: Prediction, lam: float) -> Node:
        return Node(lam, pred)


def check_form(form: str) -> None:
    """Validate an exponential integrator's ``form``: 'data' (integrates x0) or 'noise' (eps)."""
    if form not in ("data", "noise"):
        raise ValueError(
            f"form must be 'data' (DPM-Solver++) or 'noise' (DPM-Solver), got {form!r}"
        )


def check_order(order: int, allowed: range, what: str = "order") -> None:
    """Validate an integer order option (``what`` names it in the error) against ``allowed``."""
    if isinstance(order, bool) or not isinstance(order, int) or order not in allowed:
        raise ValueError(
            f"{what} must be an integer in {allowed.start}..{allowed.stop - 1}, got {order!r}"
        )


def exp_weights(
    a0: float,
    s0: float,
    a1: float,
    s1: float,
    h: float,
    nodes: list[float],
    data: bool,
    eta: float = 0.0,
    g1: float | None = None,
) -> tuple[float, list[float]]:
    """The exponential-integrator step from (alpha0, sigma0, x0) over h = lam1 - lam0 with the
    polynomial through (nodes[j], outputs[j]) (nodes in units of h, nodes[0] = 0 for the output
    at lam0), as numbers: x1 = scale x0 + sum_j coeffs[j] outputs[j] (apply with ``lincomb``).
    ``data`` picks the form; ``eta`` > 0 gives the SDE-DPM-Solver++ drift (the caller adds the
    noise). ``g1`` overrides the first-derivative moment (UniPC's B(h) variants)."""
    if data:
        zh = (1.0 + eta) * h
        scale = s1 / s0 * (math.exp(-eta * h) if eta else 1.0)
        c = a1
        m = exp_moments(-zh, len(nodes))
    else:
        zh = h
        scale = a1 / a0
        c = -s1
        m = exp_moments(h, len(nodes))
    g = [zh * v for v in m]
    if g1 is not None and len(g) > 1:
        g[1] = g1
    beta = lagrange_weights(nodes, g)
    return scale, [c * b for b in beta]


def ddim_limit(step: Step, pred: Prediction) -> Tensor:
    """x1 = alpha1 x0 + sigma1 eps: first-order step, exact in both forms at alpha0 = 0."""
    return pred.x0 * step.alpha1 + pred.eps * step.sigma1


def lowered_order(
    order: int, available: int, step: Step, n_steps: int, lower_order_final: bool
) -> int:
    """Multistep order for this step.

    Warm-up uses the history it has. With ``lower_order_final`` a short grid (<
    ``SHORT_GRID_STEPS`` = 15 steps, DPM-Solver++'s threshold) uses order <= remaining steps
    (the clean jump counts as one; Lu et al. 2022b, sec. 4 / reference code) and at most 2
    over its last three steps before the clean end (``FINAL_STEPS_MAX_ORDER``): there the data prediction changes fastest
    in lambda (each mode contracting to its own spread) and the long steps of a short
    grid make a third-order extrapolation overshoot (measured on the oracle: the
    within-mode spread at 8-10 steps goes from 1.2-1.8x to 0.93-0.98x of the truth).
    """
    k = min(order, available + 1)
    if lower_order_final and n_steps < SHORT_GRID_STEPS and step.remaining is not None:
        last, capped = FINAL_STEPS_MAX_ORDER
        k = min(k, step.remaining, capped if step.remaining <= last else k)
    return max(k, 1)


def final_step_order(final_order: int, n_steps: int, lower_order_final: bool) -> int:
    """Evaluations used by the clean-end step: ``final_order``, or 1 (the x0 jump) on
    short grids (< ``SHORT_GRID_STEPS`` = 15 steps) with ``lower_order_final``."""
    return 1 if lower_order_final and n_steps < SHORT_GRID_STEPS else final_order


def history_nodes(
    hist: tuple[Node, ...], lam0: float, h: float, k: int, data: bool
) -> tuple[list[float], list[Tensor]]:
    """Nodes (in units of h) and outputs of the k most recent evaluations, newest first."""
    nodes = [(nd.lam - lam0) / h for nd in hist[:k]]
    outs = [nd.x0 if data else nd.eps for nd in hist[:k]]
    return nodes, outs


def clean_end(x: Tensor, step: Step, hist: tuple[Node, ...], k: int) -> Tensor:
    """The step to the clean end (sigma1 = 0) from the k newest evaluations.

    k = 1 is the exact first-order limit x1 = D0 of both forms (the 'x0 jump'). For
    k > 1 the lambda-polynomials cannot be extrapolated to lambda = +inf; instead eps is
    interpolated by a polynomial in rho = sigma / alpha = e^{-lambda} and integrated down
    to rho = 0 (DEIS's rhoAB rule, Zhang & Chen 2023, eq. 15): x1 = alpha1 (x0 / alpha0 +
    sum_j C_j eps_j), C_j = int_{rho0}^{0} l_j(rho) drho.
    """
    if k <= 1 or len(hist) < 2:
        return hist[0].x0
    hist = hist[:k]
    lam0 = hist[0].lam
    # rho_j / rho0 = e^{-(lam_j - lam0)}; nodes tau = (rho_j - rho0) / (0 - rho0) = 1 - rho_j / rho0
    nodes = [1.0 - math.exp(lam0 - nd.lam) for nd in hist]
    rho0 = step.sigma0 / step.alpha0
    beta = lagrange_weights(nodes, unit_moments(len(hist)))
    a1 = step.alpha1
    return lincomb(
        x, a1 / step.alpha0, [-a1 * rho0 * b for b in beta], [nd.eps for nd in hist]
    )
