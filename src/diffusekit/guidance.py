"""Guidance: denoiser wrappers that turn a Prediction into a guided one (DESIGN principle 5).

Every guidance here only changes the Prediction (its x0, eps and score), so it works with
every solver (ancestral, DDIM, ODE, SDE) and every task, and composes with constraints.

- ``ClassifierFreeGuidance``: eps_u + w (eps_c - eps_u) from one batched forward pass
  (Ho & Salimans 2022), optionally only on a noise interval (Kynkäänniemi et al. 2024) and
  rescaled (Lin et al. 2024, sec. 3.4).
- ``EnergyGuidance``: score - s grad_x E_t(x, c) for any differentiable energy (Bao's
  "energy guidance", seed 002; Zhao et al. 2022, EGSDE), optionally of the denoised estimate.
- ``ClassifierGuidance``: the energy -log p(y | x_t, t) of a time-aware classifier
  (Dhariwal & Nichol 2021, sec. 4, Algorithm 2); ``MeanShiftClassifierGuidance``: their Algorithm 1,
  the ancestral step's mean shifted by s Sigma grad log p (a wrapper and ``after_step`` hook); ``LowDensityEnergy``: the similarity of a feature
  embedding to its class mean, pushed away (Sehwag et al. 2022).
- Closed forms for Gaussian data: the law of the CFG-guided probability-flow ODE and the
  tilted density p(x|y)^w p(x)^(1-w) it is often said to sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .denoiser import Cond, DenoiserLike, DenoiserWrapper
from .parameterization import Prediction
from .schedules.base import NoiseSchedule
from .stepping import Step, StepContext
from .utils import append_dims
from .variances import ReverseVariance

Time = float | Tensor


def _check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _per_sample(cond: Cond, batch: int, device: torch.device) -> Tensor:
    """``cond`` as a per-sample tensor (batch, ...): a scalar is repeated, a batch is kept."""
    c = torch.as_tensor(cond, device=device)
    if c.ndim == 0:
        return c.expand(batch)
    if c.shape[0] != batch:
        raise ValueError(f"cond must be one value or one per sample (batch {batch}), got shape {tuple(c.shape)}")
    return c


def _labels(cond: Cond, batch: int, device: torch.device) -> Tensor:
    """``cond`` as (batch,) integer class labels."""
    if cond is None:
        raise ValueError("this guidance needs class labels as cond, got cond=None")
    y = _per_sample(cond, batch, device)
    if y.is_floating_point() or y.is_complex() or y.ndim != 1:
        raise ValueError(f"cond must be an integer label or ({batch},) integer labels, got {cond!r}")
    return y.long()


def _first(v: Tensor, b: int) -> Tensor:
    """The first half's rows of a coefficient that broadcasts against a doubled batch."""
    return v if v.ndim == 0 or v.shape[0] == 1 else v[:b]


def null_condition(denoiser: DenoiserLike) -> int | float:
    """The null ("unconditional") condition of a conditional denoiser: the oracle's ``null_label``,
    the class embedding's of a ``Denoiser``'s network (label dropout, Ho & Salimans 2022 sec. 3.2),
    or NaN for a network with a condition-vector embedding; looked up through wrappers."""
    obj: object = denoiser
    while obj is not None:
        label = getattr(obj, "null_label", None)
        net = getattr(obj, "net", None)
        embed = getattr(net, "class_embed", None)
        if label is None and embed is not None:
            label = embed.null_label
        if label is None and getattr(net, "cond_embed", None) is not None:
            return net.cond_embed.null_value  # type: ignore[union-attr]
        if label is not None:
            return int(label)
        obj = getattr(obj, "inner", None)
    raise ValueError("this denoiser has no null label; pass null= (its condition for 'unconditional')")


class ClassifierFreeGuidance(DenoiserWrapper):
    """Classifier-free guidance: eps = eps_u + w (eps_c - eps_u), the same for x0 and the score.

    Ho & Salimans 2022, eq. 6, whose (1 + w) eps_c - w eps_u is this with w -> 1 + w:
    ``scale`` = 1 is the conditional model, 0 the unconditional one, > 1 guides. The
    conditional and the unconditional call are ONE forward pass of ``inner`` on the doubled
    batch, with the condition ``null`` in the second half (a label index for a network
    trained with label dropout, or a condition tensor of one sample's shape; by default the
    denoiser's own null label, see ``null_condition``).

    ``interval = (lo, hi)`` guides only where lo < sigma/alpha <= hi (EDM's noise level,
    sigma for VE/EDM schedules) and is the conditional model elsewhere (Kynkäänniemi et al.
    2024, "Applying guidance in a limited interval"); a time outside it costs one plain call.
    ``rescale`` = phi in [0, 1] rescales the guided data prediction to the conditional one's
    per-sample standard deviation, x0 <- x0 (phi std(x0_c) / std(x0) + 1 - phi) (Lin et al.
    2024, sec. 3.4, against over-exposure at large w); phi = 0 is plain CFG.
    """

    def __init__(
        self,
        inner: DenoiserLike,
        scale: float,
        *,
        null: int | float | Tensor | None = None,
        interval: tuple[float, float] | None = None,
        rescale: float = 0.0,
    ) -> None:
        super().__init__(inner)
        self.scale = _check_scale("scale", scale)
        self.null = null_condition(inner) if null is None else null
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi (sigma/alpha), got {interval!r}")
        self.interval = interval
        if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not 0 <= rescale <= 1:
            raise ValueError(f"rescale must be a number in [0, 1], got {rescale!r}")
        self.rescale = float(rescale)

    def active(self, t: Time) -> bool | Tensor:
        """Whether guidance applies at ``t``: a bool for one shared time, (B,) bools for per-sample times."""
        if self.interval is None:
            return True
        tt = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(tt.to(torch.float64))
        level = sigma / alpha
        inside = (level > self.interval[0]) & (level <= self.interval[1])
        return bool(inside) if inside.ndim == 0 else inside

    def forward(self, x: Tensor, t: Time, cond: Cond = None) -> Prediction:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition, got cond=None")
        active = self.active(t)
        if active is False:
            return self.inner(x, t, cond)
        b = x.shape[0]
        c = _per_sample(cond, b, x.device)
        null = torch.as_tensor(self.null, dtype=c.dtype, device=x.device).expand_as(c)
        tt = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim == 1 else t
        both = self.inner(torch.cat([x, x]), tt, torch.cat([c, null]))
        alpha, sigma = _first(both.alpha, b), _first(both.sigma, b)
        x0_c, x0_u = both.x0[:b], both.x0[b:]
        eps_c, eps_u = both.eps[:b], both.eps[b:]
        guided = Prediction(x, alpha, sigma, torch.lerp(x0_u, x0_c, self.scale), torch.lerp(eps_u, eps_c, self.scale))
        if self.rescale:
            spread = x0_c.flatten(1).std(1, correction=0) / guided.x0.flatten(1).std(1, correction=0)
            guided = guided.with_x0(guided.x0 * append_dims(self.rescale * spread + 1 - self.rescale, x.ndim))
        if isinstance(active, Tensor):
            m = append_dims(active.to(x.device), x.ndim)
            guided = Prediction(x, alpha, sigma, torch.where(m, guided.x0, x0_c), torch.where(m, guided.eps, eps_c))
        return guided


def _gradient(e: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """grad_x of a per-sample energy ``e`` (B,) computed from ``x``."""
    if e.shape != (x.shape[0],):
        raise ValueError(f"the energy must return one value per sample ({x.shape[0]},), got shape {tuple(e.shape)}")
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return g


class Energy(Protocol):
    """A differentiable energy E_t(x, c) -> (B,): guidance moves samples towards low energy."""

    def __call__(self, x: Tensor, t: Time, cond: Cond) -> Tensor: ...


class EnergyGuidance(DenoiserWrapper):
    """Energy guidance: score <- score - s grad_x E_t(x, c), i.e. eps <- eps + s sigma grad_x E.

    The reverse SDE/ODE with s_t(x) - grad E_t(x, c) (Bao, seed 002 "Energy guidance";
    Zhao et al. 2022, EGSDE): at each noise level the score of p_t(x) exp(-s E_t(x, c)) / Z,
    which the sampler draws exactly only when these are the marginals of one diffusion (as for
    s = 1 and E = -log p_t(y | x), classifier guidance).
    With ``denoised=True`` the energy is evaluated at the denoised estimate x0_hat(x_t) and
    differentiated through ``inner`` (as Sehwag et al. 2022 on the predicted image), which
    lets an energy defined on clean data (a classifier, an encoder) guide; otherwise at x_t.
    ``inner_cond``: whether ``inner`` gets ``cond`` (a conditional model) or None.

    The gradient is taken inside the call under ``torch.enable_grad()`` on a detached x
    (``sample`` runs without autograd), and the result is detached; only when autograd is on
    and x itself requires grad (``sample(grad=True)`` from such an x_T) is it kept differentiable.
    """

    def __init__(
        self, inner: DenoiserLike, energy: Energy, scale: float, *, denoised: bool = False, inner_cond: bool = True
    ) -> None:
        super().__init__(inner)
        self.energy = energy
        self.scale = _check_scale("scale", scale)
        self.denoised = denoised
        self.inner_cond = inner_cond

    def forward(self, x: Tensor, t: Time, cond: Cond = None) -> Prediction:
        inner_cond = cond if self.inner_cond else None
        outer = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if outer else x.detach().requires_grad_(True)
            if self.denoised:
                pred = self.inner(xg, t, inner_cond)
                grad = _gradient(self.energy(pred.x0, t, cond), xg, outer)
            else:
                grad = _gradient(self.energy(xg, t, cond), xg, outer)
        if not self.denoised:
            pred = self.inner(x, t, inner_cond)
        keep = (lambda v: v) if outer else Tensor.detach  # noqa: E731
        delta = self.scale * pred.sigma * grad  # added to eps
        alpha = pred.alpha
        ratio = torch.where(alpha > 0, pred.sigma / alpha, torch.zeros_like(alpha))  # x0 moves by -sigma/alpha delta
        return Prediction(x, alpha, pred.sigma, keep(pred.x0) - ratio * delta, keep(pred.eps) + delta)


class ClassifierEnergy:
    """E_t(x, y) = -log p(y | x_t, t) from a time-aware classifier ``(x_t, t) -> logits (B, C)``."""

    def __init__(self, classifier: Callable[[Tensor, Time], Tensor]) -> None:
        self.classifier = classifier

    def __call__(self, x: Tensor, t: Time, cond: Cond) -> Tensor:
        log_p = torch.log_softmax(self.classifier(x, t), dim=-1)
        return -log_p.gather(1, _labels(cond, x.shape[0], log_p.device)[:, None])[:, 0]


class ClassifierGuidance(EnergyGuidance):
    """Classifier guidance: eps <- eps - s sigma grad_x log p(y | x_t, t).

    Dhariwal & Nichol 2021, sec. 4.2 eq. 14 and Algorithm 2 (DDIM), with the gradient scale
    s of sec. 4.3 (s grad log p = grad log p^s / Z): the score of p_t(x) p_t(y | x)^s, so
    with the exact p(y | x_t) and s = 1 it is the exact conditional score. An ancestral
    solver then shifts its mean by s beta/sqrt(alpha_t) grad log p, Algorithm 1's s Sigma grad
    log p to first order in beta. ``inner`` is unconditional unless ``inner_cond=True``.
    """

    def __init__(
        self,
        inner: DenoiserLike,
        classifier: Callable[[Tensor, Time], Tensor],
        scale: float = 1.0,
        *,
        inner_cond: bool = False,
    ) -> None:
        super().__init__(inner, ClassifierEnergy(classifier), scale, inner_cond=inner_cond)


def mean_shift_variance(solver: object) -> ReverseVariance:
    """The reverse variance Sigma of an ancestral ``solver``'s Gaussian step (its ``variance`` rule), which
    Algorithm 1 of Dhariwal & Nichol 2021 scales its mean shift by; refused for any other solver."""
    variance = getattr(solver, "variance", None)
    if not (isinstance(variance, ReverseVariance) and getattr(solver, "stochastic", False)):
        name = getattr(solver, "name", type(solver).__name__)
        raise ValueError(f"classifier guidance form 'mean-shift' (Dhariwal & Nichol's Algorithm 1) needs an ancestral "
                         f"solver; allowed: ddpm, or ddim with eta > 0; got solver {name!r}")
    return variance


class MeanShiftClassifierGuidance(DenoiserWrapper):
    """Classifier guidance of the ancestral sampler by its mean (Dhariwal & Nichol 2021, Algorithm 1):

        x_{t-1} ~ N(mu + s Sigma grad_x log p_phi(y | x_t), Sigma),

    mu and Sigma being the solver's own step (``ddpm`` with any ``ReverseVariance``, or ``ddim`` with
    eta > 0; Sigma = ``solver.variance(pred, step)``), the gradient taken at x_t. Sec. 4.1 derives it
    by conditioning the Gaussian step on p(y | x_{t-1}) linearised at x_t, so it is exact as the step
    size goes to 0; ``ClassifierGuidance`` is the score form (their Algorithm 2, every solver), whose
    ancestral step shifts the mean by s (alpha_{t-1} / alpha_t) sigma_{t|t-1}^2 grad log p instead, the
    same to first order. The step to clean data adds no noise (Sigma = 0) and is not shifted.

    The wrapper AND its constraint (as ``tasks.DPS``): pass it as the denoiser and in ``constraints``::

        guide = MeanShiftClassifierGuidance(model, classifier, s)
        sample(guide, make_solver("ddpm"), ..., cond=y, constraints=[guide])

    Its call returns ``inner``'s prediction unchanged and records the gradient; ``after_step`` adds
    s Sigma grad (``mean_shift_variance`` refuses a solver without an ancestral step). ``classifier(x_t, t)``
    gives logits; ``inner`` is unconditional unless ``inner_cond=True`` (then guided on top of it).
    """

    def __init__(
        self,
        inner: DenoiserLike,
        classifier: Callable[[Tensor, Time], Tensor],
        scale: float = 1.0,
        *,
        inner_cond: bool = False,
    ) -> None:
        super().__init__(inner)
        self.energy = ClassifierEnergy(classifier)
        self.scale = _check_scale("scale", scale)
        self.inner_cond = inner_cond
        self._grad: Tensor | None = None
        self._pred: Prediction | None = None

    def forward(self, x: Tensor, t: Time, cond: Cond = None) -> Prediction:
        if self._grad is not None:
            raise ValueError("MeanShiftClassifierGuidance must also be passed in sample(..., constraints=[...]): "
                             "its after_step shifts the mean")
        _labels(cond, x.shape[0], x.device)  # refuse a missing class before any work
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            self._grad = -_gradient(self.energy(xg, t, cond), xg)  # grad log p(y | x_t, t)
        return self.inner(x, t, cond if self.inner_cond else None)

    def on_prediction(self, pred: Prediction, t: Time) -> Prediction:
        self._pred = pred
        return pred

    def after_step(self, x: Tensor, step: Step, ctx: StepContext) -> Tensor:
        grad, pred, self._grad, self._pred = self._grad, self._pred, None, None
        variance = mean_shift_variance(ctx.solver)
        if grad is None or pred is None or step.to_zero:
            return x
        return x + self.scale * variance(pred, step.like(x)) * grad


class LowDensityEnergy:
    """E(x, y) = sim(f(x), mu_y): guidance lowers it, moving samples away from their class's
    typical embedding into the rarer parts of the class (Sehwag et al. 2022, "Generating high
    fidelity data from low-density regions using diffusion models", sec. 3).

    ``encoder`` maps x (B, ...) to features (B, F); ``class_means`` (C, F) are the classes'
    mean features on the data; sim is the cosine similarity (seed 002's dot product f(x) . mu_y
    on normalised features: an unnormalised dot product would push samples out of their class
    along mu_y). Use with ``EnergyGuidance(..., denoised=True)`` on a class-conditional model,
    so the features are those of the denoised estimate, not of the noisy x_t.
    """

    def __init__(self, encoder: Callable[[Tensor], Tensor], class_means: Tensor) -> None:
        if class_means.ndim != 2 or not class_means.is_floating_point():
            raise ValueError(f"class_means must be a floating (C, F) tensor, got shape {tuple(class_means.shape)}")
        self.encoder = encoder
        self.class_means = class_means

    @classmethod
    @torch.no_grad()
    def from_data(cls, encoder: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 1024) -> "LowDensityEnergy":
        """The energy with ``class_means`` = the mean ``encoder`` features of each class of data ``x``, labels ``y``."""
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
            raise ValueError(f"y must hold one integer label per item ({x.shape[0]},), got shape {tuple(y.shape)}")
        z = torch.cat([encoder(part).flatten(1) for part in x.split(batch)]).double()
        onehot = F.one_hot(y.long(), int(y.max()) + 1).to(z)
        return cls(encoder, onehot.T @ z / onehot.sum(0)[:, None].clamp(min=1))

    def __call__(self, x: Tensor, t: Time, cond: Cond) -> Tensor:
        z = self.encoder(x).flatten(1)
        return F.cosine_similarity(z, self.class_means.to(z)[_labels(cond, x.shape[0], z.device)], dim=1)


# ---- closed forms for Gaussian data ------------------------------------------------------
class DiagonalGaussian(NamedTuple):
    """N(mean, diag(var)) with float64 (D,) tensors."""

    mean: Tensor
    var: Tensor

    def kl(self, other: "DiagonalGaussian") -> float:
        """KL(self || other) in nats."""
        r = self.var / other.var
        return float(0.5 * (r + (self.mean - other.mean) ** 2 / other.var - 1 - r.log()).sum())


def _as_gaussian(g: DiagonalGaussian) -> DiagonalGaussian:
    mean, var = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in g)
    var = var.expand_as(mean) if var.numel() == 1 else var
    if var.shape != mean.shape or not bool((var > 0).all()):
        raise ValueError(f"a Gaussian needs positive variances of shape {tuple(mean.shape)}, got {var.tolist()}")
    return DiagonalGaussian(mean, var)


class GaussianODEMap(NamedTuple):
    """The affine map x_T -> x_0 of a linear probability-flow ODE, x_0 = gain x_T + offset, and
    the law it makes of the schedule's prior."""

    gain: Tensor
    offset: Tensor
    law: DiagonalGaussian


def cfg_gaussian_ode_map(
    schedule: NoiseSchedule, scale: float, cond: DiagonalGaussian, uncond: DiagonalGaussian
) -> GaussianODEMap:
    """The exact output law of the CFG-guided probability-flow ODE when p(x|y) = ``cond`` and
    the unconditional (null) model p(x) = ``uncond`` are Gaussians with exact denoisers.

    In y = x/alpha, s = sigma/alpha (EDM's coordinates, Karras et al. 2022 eq. 4) the ODE is
    dy/ds = eps_w(y, s) = a(s) y + b(s), per dimension, with
    a = (1-w) s/(v_u + s^2) + w s/(v_c + s^2) and b = -(1-w) s m_u/(v_u + s^2) - w s m_c/(v_c + s^2).
    Its fundamental solution is Phi(s) = (v_u + s^2)^((1-w)/2) (v_c + s^2)^(w/2), so from the
    prior at t_max, y_0 = Phi(0)/Phi(s_T) y_T + Phi(0) int_0^s_T (-b/Phi) ds (the integral by
    quadrature in float64). As s_T -> inf the variance tends to v_u^(1-w) v_c^w, whereas the
    tilted density has 1/(w/v_c + (1-w)/v_u) (``tilted_gaussian``): CFG does not sample the
    tilted density (Bradley & Nakkiran 2024; Chidambaram et al. 2024).
    """
    from scipy.integrate import quad_vec

    w = _check_scale("scale", scale)
    (mc, vc), (mu, vu) = _as_gaussian(cond), _as_gaussian(uncond)
    if mc.shape != mu.shape:
        raise ValueError(f"cond and uncond must have the same dimension, got {tuple(mc.shape)} and {tuple(mu.shape)}")
    alpha_T, sigma_T = (float(v) for v in schedule.alpha_sigma(torch.tensor(schedule.t_max, dtype=torch.float64)))
    if alpha_T <= 0:
        raise ValueError(f"the closed form needs alpha(t_max) > 0, got {alpha_T!r} (zero terminal SNR)")
    s_T = sigma_T / alpha_T
    vc_n, vu_n, mc_n, mu_n = (v.numpy() for v in (vc, vu, mc, mu))

    def phi(s: float):  # noqa: ANN202 (numpy)
        return (vu_n + s * s) ** ((1 - w) / 2) * (vc_n + s * s) ** (w / 2)

    def minus_b_over_phi(s: float):  # noqa: ANN202
        return ((1 - w) * s * mu_n / (vu_n + s * s) + w * s * mc_n / (vc_n + s * s)) / phi(s)

    integral, _ = quad_vec(minus_b_over_phi, 0.0, s_T, epsabs=1e-13, epsrel=1e-12)
    phi0 = torch.from_numpy(phi(0.0))
    gain_y = phi0 / torch.from_numpy(phi(s_T))
    offset = phi0 * torch.from_numpy(integral)
    gain = gain_y / alpha_T  # x_T -> y_T = x_T / alpha_T
    prior_var = torch.full_like(mc, schedule.prior_std() ** 2)
    return GaussianODEMap(gain, offset, DiagonalGaussian(offset.clone(), gain**2 * prior_var))


def tilted_gaussian(scale: float, cond: DiagonalGaussian, uncond: DiagonalGaussian) -> DiagonalGaussian:
    """p(x|y)^w p(x)^(1-w), normalised, for Gaussians: precision w/v_c + (1-w)/v_u and mean
    (w m_c/v_c + (1-w) m_u/v_u) / precision (the density CFG is often said to sample)."""
    w = _check_scale("scale", scale)
    (mc, vc), (mu, vu) = _as_gaussian(cond), _as_gaussian(uncond)
    precision = w / vc + (1 - w) / vu
    if not bool((precision > 0).all()):
        raise ValueError(f"p(x|y)^w p(x)^(1-w) is not normalisable for scale={w!r} with these variances")
    return DiagonalGaussian((w * mc / vc + (1 - w) * mu / vu) / precision, 1 / precision)
