"""Variational bounds on -log p(x0): discrete-time DDPM and continuous-time VDM.

Discrete (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, sec. 2 and 3.1):

    L = KL(q(x_N | x0) || p(x_N)) + sum_{i >= 2} E KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i))
        - E log p(x0 | x_1),

on any increasing grid t_1 < ... < t_N (for a ``DiscreteSchedule`` its N knots,
alpha_i^2 = alpha_bar_i). With s < t, alpha_ts = alpha_t / alpha_s and
sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2 (beta_t for consecutive DDPM steps),
the posterior q(x_s | x_t, x0) has mean (alpha_ts sigma_s^2 x_t + alpha_s sigma_ts^2 x0) / sigma_t^2
and variance sigma_ts^2 sigma_s^2 / sigma_t^2 (beta tilde, Ho et al. eq. 7). The model
uses the same mean with the prediction x0_hat and the fixed variance 'small'
(beta tilde) or 'large' (sigma_ts^2 = beta). Every KL is between Gaussians in
closed form; with 'small' it is (SNR_s - SNR_t) ||x0 - x0_hat||^2 / 2 (VDM eq. 13).

L_0 is the discretized Gaussian decoder for n-bit data on Ho et al.'s lattice
x0 = 2 k / (2^n - 1) - 1 (eq. 13; edges at +-inf at the ends), or a Gaussian
density for continuous data, with mean x0_hat(x_1) and variance 'clipped'
(beta tilde of the second step, as Nichol & Dhariwal's fixed variances),
'likelihood' (sigma_1^2 / alpha_1^2, the width of q(x_1 | x0) in x0) or a number.

Continuous (Kingma et al. 2021, VDM, eq. 17 rewritten in lambda = log(alpha/sigma)):

    L = KL(q(z_T | x) || p(z_T)) + E[-log p(x | z_eps)]
        + int_{lambda_T}^{lambda_eps} e^{2 lambda} E ||x - x0_hat(z_lambda)||^2 d lambda,

the diffusion loss being the continuous-time limit of the sum above. The
integral uses Gauss-Legendre nodes in lambda, one noise draw per node and
sample. The decoder p(x | z_eps) is N(x; z/alpha, sigma^2/alpha^2) (VDM's
choice, proportional to q(z | x); its expectation over z is taken in closed
form), or its discretized version for n-bit data.
With the exact denoiser, E[L] = H(z_eps) - D log alpha_eps + KL(q(z_T) || p(z_T)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..denoiser import Cond, Denoiser
from ..noise import NoiseSource
from ..parameterization import Prediction
from ..schedules.base import NoiseSchedule
from ..schedules.discrete import DiscreteSchedule
from ..stepping import Step
from ..variances import ReverseVariance, eps_gain, eta_var, make_variance, posterior_var, transition_var
from .analytic import schedule_times
from .dequantize import log_normal_mass
from ..utils import check_positive_int

LN2 = math.log(2.0)


@dataclass(frozen=True)
class VLBResult:
    """Per-sample bound terms in nats (float64).

    ``terms`` (B, N): column 0 is L_0 = -log p(x0 | x_1) (the reconstruction term),
    column i >= 1 the KL of step t_{i+1} -> t_i (discrete), or the diffusion-loss
    contribution of quadrature node i (continuous; column 0 is then the decoder).
    ``prior`` (B,) is L_T; ``total`` = prior + terms.sum(1); ``nfe`` model calls (batched).
    """

    terms: Tensor
    prior: Tensor
    total: Tensor
    bits_per_dim: Tensor
    nfe: int


def gaussian_kl_elements(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per element (arguments broadcast)."""
    return 0.5 * (torch.log(var_p / var_q) + var_q / var_p + (mean_q - mean_p) ** 2 / var_p - 1.0)


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over all but the batch dimension."""
    return gaussian_kl_elements(mean_q, var_q, mean_p, var_p).flatten(1).sum(1)


def prior_kl(schedule: NoiseSchedule, x0: Tensor, t: float) -> Tensor:
    """KL(q(x_t | x0) || N(0, prior_std^2 I)): L_T of Ho et al. eq. 5, per sample."""
    a, s = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    p2 = schedule.prior_std() ** 2
    x = x0.double()
    kl = 0.5 * ((a**2 * x**2 + s**2) / p2 - 1.0 - math.log(s**2 / p2))
    return kl.flatten(1).sum(1)


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: Tensor, n_bits: int = 8) -> Tensor:
    """log P(x0) per sample under a Gaussian discretized to Ho et al.'s n-bit lattice on [-1, 1].

    Bins have half-width 1 / (2^n - 1); the first and last bins extend to -inf and +inf.
    """
    half = 1.0 / (2**n_bits - 1)
    x0, mean = x0.double(), mean.double()
    std = torch.as_tensor(std, dtype=torch.float64, device=x0.device).expand_as(x0)
    a = torch.where(x0 < -1 + 1e-3 * half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    b = torch.where(x0 > 1 - 1e-3 * half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    return log_normal_mass(a, b).flatten(1).sum(1)


@dataclass(frozen=True)
class Transitions:
    """The reverse steps t_i -> t_{i-1} of an increasing grid t_1 < ... < t_N, as (N,) float64 columns.

    Row i >= 1 is the step t_{i+1} -> t_i (0-based), row 0 the decoder step t_1 -> 0 (alpha = 1,
    sigma = 0 there). ``large`` = sigma_{t|s}^2 (beta; sigma_1^2 in row 0), ``small`` = beta tilde
    (row 0 clipped to row 1's, as Nichol & Dhariwal 2021's decoder; NaN when N = 1), ``c_x0`` the
    weight of x0 in the posterior mean alpha_s sigma_{t|s}^2 / sigma_t^2 (Ho et al. 2020, eq. 7).
    """

    step: Step
    large: Tensor
    small: Tensor
    c_x0: Tensor


def transitions(schedule: NoiseSchedule, t: Tensor) -> Transitions:
    """The ``Transitions`` of the increasing grid ``t`` (float64, CPU)."""
    a, s = _alpha_sigma(schedule, t)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    step = Step(0, t, torch.cat([zero, t[:-1]]), a, s, torch.cat([one, a[:-1]]), torch.cat([zero, s[:-1]]), None)
    large = transition_var(step)
    small = posterior_var(step)
    small = torch.cat([small[1:2] if t.numel() > 1 else torch.full_like(small[:1], math.nan), small[1:]])
    return Transitions(step, large, small, step.alpha1 * large / step.sigma0**2)


def posterior_kl(x0: Tensor, x0_hat: Tensor, c_x0: Tensor, var_q: Tensor, var_p: Tensor) -> Tensor:
    """KL(q(x_s | x_t, x0) || N(mean(x_t, x0_hat), var_p)) per element.

    q and the model share the posterior-mean form (Ho et al. 2020, eq. 7), so the means differ
    by c_x0 (x0 - x0_hat) only; the arguments broadcast against x0.
    """
    return gaussian_kl_elements(c_x0 * x0, var_q, c_x0 * x0_hat, var_p)


def _alpha_sigma(schedule: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor]:
    a, s = schedule.alpha_sigma(t.to(torch.float64).cpu())
    return a, s


def _grid(schedule: NoiseSchedule, steps: int | None, times: Tensor | None) -> Tensor:
    """Increasing model times t_1 < ... < t_N (float64, CPU)."""
    if times is not None:
        t = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
        if t.numel() < 1 or (t.numel() > 1 and not bool((t[1:] > t[:-1]).all())):
            raise ValueError("times must be strictly increasing")
        schedule.validate_t(t)
        return t
    if steps is not None and isinstance(schedule, DiscreteSchedule) and schedule.num_steps % steps == 0:
        stride = schedule.num_steps // steps  # a respaced DDPM: every stride-th knot
        return torch.arange(1, steps + 1, dtype=torch.float64) * stride / schedule.num_steps
    return schedule_times(schedule, steps)


def _predict_x0(
    denoiser: Denoiser, x0: Tensor, t: Tensor, stream: int, src: NoiseSource, cond: Cond, chunk: int
) -> tuple[Tensor, Tensor, Tensor | None, int]:
    """x_t = alpha x0 + sigma eps for every (node, sample) pair and the model's x0 there.

    ``t`` (S,) times; returns (x_t (S, B, ...), x0_hat (S, B, ...), the learned variance
    interpolation (S, B, ...) or None (``Prediction.var_interp``), number of batched calls).
    Noise for node j comes from stream ``stream + j`` of each sample's own generator.
    """
    b = x0.shape[0]
    a, s = _alpha_sigma(denoiser.schedule, t)
    shape = x0.shape[1:]
    xs, hats, interps, calls = [], [], [], 0
    for lo in range(0, t.numel(), chunk):
        hi = min(lo + chunk, t.numel())
        eps = torch.stack([src.normal(stream + j, shape, x0.dtype) for j in range(lo, hi)])
        aa = a[lo:hi].to(x0).reshape(-1, 1, *([1] * len(shape)))
        ss = s[lo:hi].to(x0).reshape(-1, 1, *([1] * len(shape)))
        x_t = aa * x0[None] + ss * eps
        tt = t[lo:hi].repeat_interleave(b)
        cc = None
        if cond is not None:
            cc = torch.as_tensor(cond).repeat(hi - lo, *([1] * (torch.as_tensor(cond).ndim - 1)))
        with torch.no_grad():
            pred = denoiser(x_t.reshape(-1, *shape), tt, cc)
        xs.append(x_t)
        hats.append(pred.x0.reshape(x_t.shape))
        if pred.var_interp is not None:
            interps.append(pred.var_interp.reshape(x_t.shape))
        calls += 1
    return torch.cat(xs), torch.cat(hats), torch.cat(interps) if interps else None, calls


def decoder_nll(x0: Tensor, mean: Tensor, var: Tensor | float, decoder: str, n_bits: float) -> Tensor:
    """-log p(x0 | x_1) per sample for a Gaussian N(mean, var) decoder: 'discretized' on the n-bit
    lattice (Ho et al. 2020, eq. 13) or a 'gaussian' density (continuous data)."""
    var = torch.as_tensor(var, dtype=torch.float64, device=x0.device)
    if decoder == "discretized":
        return -discretized_gaussian_log_likelihood(x0, mean, var.sqrt(), n_bits)
    if decoder == "gaussian":
        sq = (x0.double() - mean.double()) ** 2
        return (0.5 * (torch.log(2 * math.pi * var) + sq / var)).flatten(1).sum(1)
    raise ValueError(f"decoder must be 'discretized' or 'gaussian', got {decoder!r}")


def discrete_vlb(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    cond: Cond = None,
    steps: int | None = None,
    times: Tensor | None = None,
    variance: str | ReverseVariance = "small",
    decoder: str = "discretized",
    decoder_variance: str | float = "clipped",
    n_bits: float = 8,
    seed: int = 0,
    chunk: int = 16,
) -> VLBResult:
    """The DDPM bound (Ho et al. 2020, eq. 5) per sample, every term in closed form given the model's call.

    ``steps``/``times`` set the grid, any K-step sub-trajectory t_1 < ... < t_K (default: every
    knot of a ``DiscreteSchedule``; a divisor of its N respaces it as in Nichol & Dhariwal 2021,
    sec. 4). ``variance`` is the sampler's reverse variance, so the bound is that sampler's:
    'small' (beta tilde), 'large' (beta), 'learned' (the model's variance head, Nichol & Dhariwal
    2021, eq. 15) or any ``ReverseVariance`` (Analytic-DPM, SN/NPR heads; per sample and per
    element). A rule made for DDIM's eta (``variance.eta``) is compared with
    q_lambda(x_s | x_t, x0), lambda^2 = eta^2 beta tilde (Bao et al. 2022a, eq. 3; the same
    marginals; eta = 0 has no finite bound). ``decoder`` 'discretized' (data on the n-bit
    lattice in [-1, 1]) or 'gaussian' (continuous data); ``decoder_variance`` as in the module
    doc (a variance with ``decoder_var`` gets it and returns its own: 'learned' interpolates from it,
    analytic / sn / npr ignore it). One forward-noise draw per (sample,
    step), from per-sample streams of ``seed``; ``chunk`` steps share one batched model call.
    """
    rule = make_variance(variance)
    eta = getattr(rule, "eta", 1.0)
    if eta == 0:
        raise ValueError("the bound of a deterministic step (eta = 0) is infinite; allowed: eta > 0")
    schedule = denoiser.schedule
    t = _grid(schedule, steps, times)
    n = t.numel()
    tr = transitions(schedule, t)
    b = x0.shape[0]
    x0 = x0.double() if not x0.is_floating_point() else x0
    src = NoiseSource.from_seed(seed, b, x0.device)
    x_t, hat, interp, calls = _predict_x0(denoiser, x0, t, 0, src, cond, chunk)
    x0d, hatd = x0.double()[None], hat.double()
    dims = [1] * (x0.ndim - 1)

    def col(v: Tensor) -> Tensor:
        return v.to(x0.device).reshape(-1, 1, *dims)

    def rows(lo: int, hi: int) -> tuple[Prediction, Step]:
        """The model's predictions and the Steps of transitions lo..hi-1, shaped (S, B, ...)."""
        st = tr.step
        step = Step(0, col(st.t0[lo:hi]), col(st.t1[lo:hi]), *(col(v[lo:hi]) for v in (st.alpha0, st.sigma0, st.alpha1, st.sigma1)), None)
        pred = Prediction(x_t[lo:hi].double(), step.alpha0, step.sigma0, hatd[lo:hi],
                          var_interp=None if interp is None else interp[lo:hi].double())
        return pred, step

    pred, step = rows(1, n)
    var_p = torch.as_tensor(rule(pred, step), dtype=torch.float64, device=x0.device)
    if eta == 1:  # DDPM: q is the posterior (Ho et al. 2020, eq. 7)
        kl = posterior_kl(x0d, hatd[1:], col(tr.c_x0[1:]), col(tr.small[1:]), var_p)
    else:  # q_lambda: mean alpha_s x0 + sqrt(sigma_s^2 - lambda^2) (x_t - alpha_t x0) / sigma_t (Bao et al. 2022a, eq. 3),
        # whose weight on x0 is alpha_s - sqrt(sigma_s^2 - lambda^2) alpha_t / sigma_t = eps_gain alpha_t / sigma_t
        c_x0 = eps_gain(step, eta) * step.alpha0 / step.sigma0
        kl = posterior_kl(x0d, hatd[1:], c_x0, eta_var(step, eta), var_p)
    kl = kl.flatten(2).sum(2).transpose(0, 1)  # (B, n-1)
    if isinstance(decoder_variance, str):
        if decoder_variance == "clipped":
            if n < 2:
                raise ValueError("the 'clipped' decoder variance needs at least two steps")
            dvar = float(tr.small[0])
        elif decoder_variance == "likelihood":
            dvar = float(tr.large[0] / tr.step.alpha0[0] ** 2)
        else:
            raise ValueError(f"decoder_variance must be 'clipped', 'likelihood' or a number, got {decoder_variance!r}")
    else:
        dvar = float(decoder_variance)
    decoder_var = getattr(rule, "decoder_var", None)
    dvar_t = dvar if decoder_var is None else decoder_var(*rows(0, 1), dvar)[0]
    l0 = decoder_nll(x0, hat[0], dvar_t, decoder, n_bits)
    terms = torch.cat([l0[:, None], kl], 1)
    prior = prior_kl(schedule, x0, float(t[-1]))
    total = prior + terms.sum(1)
    d = x0[0].numel()
    return VLBResult(terms, prior, total, total / (d * LN2), calls)


def continuous_vlb(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    cond: Cond = None,
    t_eps: float | None = None,
    t_max: float | None = None,
    nodes: int = 64,
    decoder: str = "gaussian",
    n_bits: int = 8,
    seed: int = 0,
    chunk: int = 16,
) -> VLBResult:
    """VDM's continuous-time bound (Kingma et al. 2021, eq. 17) with the diffusion loss in lambda.

    Prior KL at ``t_max``, decoder term at ``t_eps`` (defaults: the schedule's ends),
    and int e^{2 lambda} E||x0 - x0_hat||^2 d lambda by ``nodes``-point Gauss-Legendre
    quadrature in lambda, with one forward-noise draw per (sample, node).
    ``decoder``: 'gaussian' (continuous data) or 'discretized' (n-bit lattice data).
    """
    schedule = denoiser.schedule
    t0 = float(schedule.t_min if t_eps is None else t_eps)
    t1 = float(schedule.t_max if t_max is None else t_max)
    schedule.validate_t(torch.tensor([t0, t1], dtype=torch.float64))
    check_positive_int("nodes", nodes)
    lam0 = float(schedule.log_snr(torch.tensor(t0, dtype=torch.float64)))
    lam1 = float(schedule.log_snr(torch.tensor(t1, dtype=torch.float64)))
    if not (math.isfinite(lam0) and math.isfinite(lam1)) or not lam1 < lam0:
        raise ValueError(f"need finite log-SNRs with lambda(t_max) < lambda(t_eps), got {lam1:g}, {lam0:g}")
    u, w = np.polynomial.legendre.leggauss(nodes)
    lam = torch.tensor(0.5 * (lam0 - lam1) * u + 0.5 * (lam0 + lam1), dtype=torch.float64)
    wts = torch.tensor(0.5 * (lam0 - lam1) * w, dtype=torch.float64)
    t = schedule.t_of_log_snr(lam).clamp(t0, t1)
    b = x0.shape[0]
    x0 = x0.double() if not x0.is_floating_point() else x0
    src = NoiseSource.from_seed(seed, b, x0.device)
    _, hat, _, calls = _predict_x0(denoiser, x0, t, 1, src, cond, chunk)
    err = (x0.double()[None] - hat.double()).pow(2).flatten(2).sum(2)  # (nodes, B)
    diffusion = (wts * torch.exp(2 * lam))[:, None].to(err) * err
    # decoder at t_eps: z = alpha x0 + sigma eps, p(x | z) = N(z / alpha, sigma^2 / alpha^2)
    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t0, dtype=torch.float64)))
    d = x0[0].numel()
    if decoder == "gaussian":  # E_eps of -log N(x; z/alpha, sigma^2/alpha^2), in closed form
        recon = torch.full((b,), 0.5 * d * (math.log(2 * math.pi * (s0 / a0) ** 2) + 1.0), dtype=torch.float64)
        recon = recon.to(x0.device)
    else:
        eps = src.normal(0, x0.shape[1:], torch.float64)
        z = a0 * x0.double() + s0 * eps
        recon = decoder_nll(x0, z / a0, (s0 / a0) ** 2, decoder, n_bits)
    terms = torch.cat([recon[:, None], diffusion.transpose(0, 1)], 1)
    prior = prior_kl(schedule, x0, t1)
    total = prior + terms.sum(1)
    return VLBResult(terms, prior, total, total / (d * LN2), calls)
