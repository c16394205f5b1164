"""The exact oracle: a Gaussian mixture whose every diffusion quantity is known in closed form.

For data x0 ~ sum_k w_k N(mu_k, Q diag(s_k^2) Q^T) (Q orthogonal, the identity by default)
and x_t = alpha x0 + sigma eps, the noise is isotropic, so in the eigen-frame y = Q^T x every
component is diagonal; below, x, mu_k are in that frame and results are mapped back by Q.
the marginal is p_t(x) = sum_k w_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)),
and with responsibilities r_k(x) the posterior means are

    E[x0 | x_t]  = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)),
    E[eps | x_t] = sum_k r_k sigma / v_k (x_t - alpha mu_k),     v_k = alpha^2 s_k^2 + sigma^2.

``GaussianMixture`` is a ``Denoiser``, so every sampler runs on it unchanged, and
it also gives the exact score, log p_t, exact samples and a float64 reference
solution of the probability-flow ODE (Song et al. 2021, eq. 13), against which
solvers' convergence orders and likelihoods are tested.

Components may carry class labels (several components per class), which makes the
oracle class-conditional: p(x | y), the classifier p(y | x_t) and therefore every
guided score (classifier, classifier-free, energy guidance) are exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .denoiser import Cond, Denoiser
from .parameterization import Prediction
from .schedules.angle import angle_at, angle_of, angle_velocity
from .schedules.base import NoiseSchedule
from .utils import append_dims


class GaussianMixture(Denoiser):
    """A mixture of Gaussians, exact for any schedule and any data shape.

    ``means`` is (K, D); ``stds`` a float, (K,) (isotropic) or (K, D) (diagonal);
    ``weights`` (K,) (uniform by default). ``rotation``: an orthogonal (D, D) Q shared by
    the components, whose covariances are then Q diag(stds_k^2) Q^T (full covariance;
    ``stds`` are the standard deviations along Q's columns). ``shape`` reshapes the D-vector, e.g.
    (1, 4, 4) to pose as images.

    Class-conditional calls take ``cond`` = a class label (one per sample, or one for all):
    the denoiser, score and ``log_prob`` are then those of p(x | y). ``labels`` (K,) gives
    each component's class in 0..C-1 (every class needs a component; several components
    may share a class); by default each component is its own class, so ``cond`` is the
    component index. The label ``null_label`` = C means "no condition" (the unconditional
    mixture), as the null label of the networks' class embedding, so one batch may mix
    conditional and unconditional samples (classifier-free guidance).
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        stds: float | Tensor | Sequence,
        schedule: NoiseSchedule,
        weights: Tensor | Sequence | None = None,
        shape: Sequence[int] | None = None,
        labels: Tensor | Sequence[int] | None = None,
        rotation: Tensor | Sequence | None = None,
    ) -> None:
        super().__init__(None, schedule, "x0")
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        stds = stds.expand(k, d) if stds.ndim == 0 else (stds[:, None].expand(k, d) if stds.ndim == 1 else stds)
        if stds.shape != (k, d) or not bool((stds > 0).all()):
            raise ValueError(f"stds must be positive, scalar, (K,) or (K, D) for K={k}, D={d}")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers")
        if rotation is not None:
            rotation = torch.as_tensor(rotation, dtype=torch.float64)
            if rotation.shape != (d, d) or not torch.allclose(rotation.T @ rotation, torch.eye(d, dtype=torch.float64), atol=1e-10):
                raise ValueError(f"rotation must be an orthogonal ({d}, {d}) matrix")
        self.register_buffer("means", means)
        self.register_buffer("rotation", rotation)
        self.register_buffer("variances", stds.pow(2).contiguous())
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        labels = torch.arange(k) if labels is None else torch.as_tensor(labels)
        if labels.shape != (k,) or labels.is_floating_point() or labels.is_complex() or bool((labels < 0).any()):
            raise ValueError(f"labels must be {k} non-negative integers (a class per component), got {labels.tolist()}")
        labels = labels.long()
        num_classes = int(labels.max()) + 1
        if labels.unique().numel() != num_classes:
            raise ValueError(f"labels must use every class 0..{num_classes - 1}, got {sorted(set(labels.tolist()))}")
        members = labels == torch.arange(num_classes)[:, None]  # (C, K)
        self.register_buffer("labels", labels)
        self.register_buffer("members", torch.cat([members, torch.ones(1, k, dtype=torch.bool)]))  # null row: all
        class_log_weights = self.log_weights.masked_fill(~members, -math.inf).logsumexp(1)
        self.register_buffer("class_log_weights", torch.cat([class_log_weights, class_log_weights.new_zeros(1)]))
        self.data_shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.data_shape) != d:
            raise ValueError(f"shape {self.data_shape} does not hold {d} values")

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        return self.members.shape[0] - 1

    @property
    def null_label(self) -> int:
        """The label meaning "unconditional" (``num_classes``)."""
        return self.num_classes

    def class_index(self, cond: Cond, batch: int) -> Tensor:
        """``cond`` (a label, or one per sample) as (batch,) long labels in 0..null_label, checked."""
        y = torch.as_tensor(cond, device=self.means.device)
        if y.is_floating_point() or y.is_complex() or y.ndim > 1 or (y.ndim == 1 and y.shape[0] != batch):
            raise ValueError(f"cond must be an integer label or ({batch},) integer labels, got {cond!r}")
        y = y.long().expand(batch)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.null_label):
            raise ValueError(
                f"class labels must be in [0, {self.null_label}] ({self.null_label} = null label), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )
        return y

    def to_frame(self, x: Tensor) -> Tensor:
        """Flat (B, D) points in the components' eigen-frame, y = Q^T x (x itself without rotation)."""
        return x if self.rotation is None else x @ self.rotation

    def from_frame(self, y: Tensor) -> Tensor:
        """The inverse of ``to_frame``: x = Q y."""
        return y if self.rotation is None else y @ self.rotation.T

    # ---- closed forms --------------------------------------------------------
    def _joint(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log w_k + log N(y; alpha mu_k, v_k) (B, K), 1 / v_k (B or 1, K, D), y - alpha mu_k (B, K, D),
        y) in the eigen-frame y = Q^T x (|det Q| = 1 leaves the density); v_k has one row when every
        sample is at the same noise level."""
        if alpha.numel() > 1 and bool((alpha == alpha[0]).all()) and bool((sigma == sigma[0]).all()):
            alpha, sigma = alpha[:1], sigma[:1]
        a = alpha.reshape(-1, 1, 1)
        prec = 1 / (a**2 * self.variances + sigma.reshape(-1, 1, 1) ** 2)
        y = self.to_frame(x)
        diff = y[:, None, :] - a * self.to_frame(self.means)
        log_n = 0.5 * (torch.log(prec / (2 * math.pi)).sum(-1) - (diff**2 * prec).sum(-1))
        return self.log_weights + log_n, prec, diff, y

    def posterior(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Cond = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(E[x0 | x], E[eps | x], log p_t(x)) for flat float64 x (B, D) and alpha, sigma (B,);
        with ``cond``, of p_t(x | y).

        Computed in the eigen-frame (``to_frame``), where each component is diagonal, and
        mapped back: E[x0 | x] = Q E[y0 | Q^T x], likewise for eps. At one noise level for the
        whole batch the sums over components are (B, K) @ (K, D) products.
        """
        logits, prec, diff, x_frame = self._joint(x, alpha, sigma)
        if cond is not None:
            y = self.class_index(cond, x.shape[0])
            logits = logits.masked_fill(~self.members[y], -math.inf)
        log_p = torch.logsumexp(logits, 1)
        r = torch.softmax(logits, 1)
        a, s = (v[: prec.shape[0]].reshape(-1, 1, 1) for v in (alpha, sigma))
        means = self.to_frame(self.means)
        gain = a * self.variances * prec  # E[y0 | y, k] = mu_k + gain_k (y - a mu_k)
        if prec.shape[0] == 1:  # sum_k r_k (c_k + g_k y) as (B, K) @ (K, D)
            x0 = r @ (means * (1 - a * gain))[0] + x_frame * (r @ gain[0])
            eps = x_frame * (r @ (s * prec)[0]) - r @ (s * a * means * prec)[0]
        else:
            x0 = (r[..., None] * (means + gain * diff)).sum(1)
            eps = (r[..., None] * (s * prec * diff)).sum(1)
        x0, eps = self.from_frame(x0), self.from_frame(eps)
        if cond is not None:
            log_p = log_p - self.class_log_weights[y]
        return x0, eps, log_p

    def posterior_covariance(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Exact Cov[x0 | x_t] (float64, (B, D, D)) for x (B, ...): the law of total covariance over
        components, sum_k r_k (diag(V_k) + m_k m_k^T) - m m^T with m_k = E[y0 | y, k] and
        V_k = s_k^2 sigma^2 / v_k in the eigen-frame, mapped back by Q."""
        alpha, sigma = self._coeffs(t, x)
        logits, prec, diff, _ = self._joint(x.flatten(1).double(), alpha, sigma)
        r = torch.softmax(logits, 1)
        a, s = (v[: prec.shape[0]].reshape(-1, 1, 1) for v in (alpha, sigma))
        m_k = self.to_frame(self.means) + a * self.variances * prec * diff  # (B, K, D)
        v_k = (self.variances * s**2 * prec).expand_as(m_k)
        m = torch.einsum("bk,bkd->bd", r, m_k)
        cov = torch.diag_embed(torch.einsum("bk,bkd->bd", r, v_k)) + torch.einsum("bk,bkd,bke->bde", r, m_k, m_k)
        cov = cov - m[:, :, None] * m[:, None, :]
        if self.rotation is not None:
            cov = self.rotation @ cov @ self.rotation.T
        return cov

    def class_log_prob(self, x: Tensor, t: float | Tensor | None = None) -> Tensor:
        """Exact log p(y | x_t) for every class y (float64, (B, C)); differentiable in x, so it
        serves as the time-aware classifier of classifier guidance. ``t=None``: clean data."""
        alpha, sigma = self._coeffs_or_clean(t, x)
        logits = self._joint(x.flatten(1).double(), alpha, sigma)[0]
        per_class = logits[:, None, :].masked_fill(~self.members[:-1], -math.inf).logsumexp(-1)  # (B, C)
        return per_class - logits.logsumexp(1, keepdim=True)

    def _coeffs(self, t: float | Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self._time(t, x)
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        return alpha.to(x.device), sigma.to(x.device)

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        alpha, sigma = self._coeffs(t, x)
        x0, eps, _ = self.posterior(x.flatten(1).double(), alpha, sigma, cond)
        back = lambda v: v.to(x.dtype).reshape(x.shape)  # noqa: E731
        return Prediction(
            x, append_dims(alpha.to(x.dtype), x.ndim), append_dims(sigma.to(x.dtype), x.ndim), back(x0), back(eps)
        )

    def _coeffs_or_clean(self, t: float | Tensor | None, x: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) (B,) at ``t``, or of clean data (1, 0) when ``t`` is None."""
        if t is None:
            alpha = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return alpha, torch.zeros_like(alpha)
        return self._coeffs(t, x)

    def log_prob(self, x: Tensor, t: float | Tensor | None = None, cond: Cond = None) -> Tensor:
        """Exact log p_t(x) (float64, shape (B,)), or log p_t(x | y) with ``cond``; ``t=None``
        means the data distribution."""
        alpha, sigma = self._coeffs_or_clean(t, x)
        return self.posterior(x.flatten(1).double(), alpha, sigma, cond)[2]

    def score(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Tensor:
        """Exact grad_x log p_t(x)."""
        return self(x, t, cond).score

    # ---- exact samples -------------------------------------------------------
    def sample(self, n: int, seed: int = 0, cond: Cond = None, t: float | None = None) -> Tensor:
        """n exact draws from the data distribution (or from p_t if ``t`` is given), float64;
        with ``cond`` (a label or n labels), from p(x | y)."""
        g = torch.Generator().manual_seed(seed)
        if cond is None:
            comp = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=g)
        else:
            probs = self.log_weights.exp()[None] * self.members[self.class_index(cond, n)]
            comp = torch.multinomial(probs.cpu(), 1, generator=g)[:, 0]
        comp = comp.to(self.means.device)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64).to(self.means.device)
        x0 = self.means[comp] + self.from_frame(self.variances[comp].sqrt() * z)
        if t is not None:
            alpha, sigma = self.schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
            eps = torch.randn(n, self.dim, generator=g, dtype=torch.float64).to(x0.device)
            x0 = float(alpha) * x0 + float(sigma) * eps
        return x0.reshape(n, *self.data_shape)

    # ---- reference probability-flow ODE solution ----------------------------
    def ode_solution(
        self,
        x_start: Tensor,
        t_start: float,
        t_end: float | None = None,
        cond: Cond = None,
        rtol: float = 1e-10,
        atol: float = 1e-10,
    ) -> Tensor:
        """Reference solution of the probability-flow ODE from ``x_start`` at ``t_start``.

        Runs on the CPU. ``t_end=None`` integrates to clean data (sigma = 0). The ODE is solved
        with DOP853 in float64 in the angle variable phi = atan2(sigma, alpha)
        (``schedules.angle``: x_phi = x / sqrt(alpha^2 + sigma^2) obeys the schedule-independent
        dx_phi/dphi = cos(phi) E[eps|x] - sin(phi) E[x0|x] at alpha = cos(phi), sigma = sin(phi),
        so zero terminal SNR is no special case).
        """
        from scipy.integrate import solve_ivp

        def angle_scale(t: float | None) -> tuple[float, float]:
            if t is None:
                return angle_of(1.0, 0.0)  # clean data
            self.schedule.validate_t(t)
            return angle_at(self.schedule, t)

        phi0, r0 = angle_scale(t_start)
        phi1, r1 = angle_scale(t_end)
        shape = x_start.shape
        y0 = (x_start.detach().double().cpu().flatten(1) / r0)
        b = y0.shape[0]
        oracle = self if self.means.device.type == "cpu" else copy.deepcopy(self).cpu()

        def rhs(phi: float, y: np.ndarray) -> np.ndarray:
            yt = torch.from_numpy(y).reshape(b, -1)
            c, s = math.cos(phi), math.sin(phi)
            x0, eps, _ = oracle.posterior(
                yt, torch.full((b,), c, dtype=torch.float64), torch.full((b,), s, dtype=torch.float64), cond
            )
            return angle_velocity(x0, eps, c, s).flatten().numpy()

        sol = solve_ivp(rhs, (phi0, phi1), y0.flatten().numpy(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        out = torch.from_numpy(sol.y[:, -1]).reshape(b, -1) * r1
        return out.reshape(shape).to(x_start.device)

    # ---- exact posterior of a linear Gaussian measurement ---------------------
    def covariances(self) -> Tensor:
        """The components' covariance matrices (K, D, D), float64: Q diag(s_k^2) Q^T under a rotation."""
        c = torch.diag_embed(self.variances)
        return c if self.rotation is None else self.rotation @ c @ self.rotation.T

    def measurement_posterior(self, matrix: Tensor, y: Tensor, noise_std: float = 0.0) -> "MixturePosterior":
        """The exact posterior p(x0 | y) for y = A x0 + n, n ~ N(0, noise_std^2 I).

        ``matrix`` A is (M, D) (``tasks.LinearOperator.matrix`` builds it from an operator),
        ``y`` one measurement (M,). ``noise_std`` = 0 (exact inpainting, a noiseless
        projection) needs A of full row rank. See ``MixturePosterior``.
        """
        return MixturePosterior.of(self, matrix, y, noise_std)


class MixturePosterior:
    """A Gaussian mixture posterior: the exact p(x0 | y) of a Gaussian-mixture prior and a linear
    Gaussian measurement y = A x0 + n, n ~ N(0, s^2 I) (Bayes' rule in closed form).

    Per component k (prior N(mu_k, S_k), weight w_k), with C_k = A S_k A^T + s^2 I and the
    Kalman gain G_k = S_k A^T C_k^-1 (Bishop 2006, eq. 2.113-2.117; Murphy 2012, sec. 4.4):

        w_k' ∝ w_k N(y; A mu_k, C_k),   m_k = mu_k + G_k (y - A mu_k),   P_k = S_k - G_k A S_k,

    P_k = (S_k^-1 + A^T A / s^2)^-1 when s > 0. With s = 0 every P_k is singular on the
    row space of A (the posterior lives on the affine set {A x = y}): ``log_prob`` is then the
    density on that set (w.r.t. its Lebesgue measure), evaluated at a point's projection onto
    it, and ``sample`` draws on it. All numbers are float64 on the prior's device.
    """

    def __init__(self, log_weights: Tensor, means: Tensor, covariances: Tensor, rank: int, log_evidence: Tensor) -> None:
        self.log_weights, self.means, self.covariances = log_weights, means, covariances
        self.log_evidence = log_evidence  # log p(y)
        evals, evecs = torch.linalg.eigh(covariances)  # ascending; the null directions first
        self._evals = evals[:, -rank:].clamp(min=1e-300)  # (K, r)
        self._evecs = evecs[:, :, -rank:]  # (K, D, r)
        self.rank = rank

    @classmethod
    def of(cls, prior: GaussianMixture, matrix: Tensor, y: Tensor, noise_std: float = 0.0) -> "MixturePosterior":
        """Bayes' rule for ``prior`` and y = A x0 + N(0, noise_std^2 I) (see the class)."""
        dev = prior.means.device
        a = torch.as_tensor(matrix, dtype=torch.float64, device=dev)
        y = torch.as_tensor(y, dtype=torch.float64, device=dev).flatten()
        if a.ndim != 2 or a.shape[1] != prior.dim or y.shape != (a.shape[0],):
            raise ValueError(f"need A of shape (M, {prior.dim}) and y of shape (M,), got {tuple(a.shape)} and {tuple(y.shape)}")
        if not (isinstance(noise_std, int | float) and 0 <= noise_std < math.inf):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        s = prior.covariances()  # (K, D, D)
        sa = s @ a.T  # (K, D, M)
        c = a @ sa + noise_std**2 * torch.eye(a.shape[0], dtype=torch.float64, device=dev)  # (K, M, M)
        chol, info = torch.linalg.cholesky_ex(c)
        if bool((info != 0).any()):
            raise ValueError("A S A^T + s^2 I is singular: with noise_std = 0, A must have full row rank")
        resid = y - prior.means @ a.T  # (K, M)
        white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
        log_n = -0.5 * (white.pow(2).sum(-1) + a.shape[0] * math.log(2 * math.pi)) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        joint = prior.log_weights + log_n
        evidence = joint.logsumexp(0)
        gain_t = torch.cholesky_solve(sa.transpose(1, 2), chol)  # G_k^T = C_k^-1 A S_k, (K, M, D)
        means = prior.means + (gain_t.transpose(1, 2) @ resid[..., None])[..., 0]
        cov = s - sa @ gain_t
        cov = 0.5 * (cov + cov.transpose(1, 2))
        rank = prior.dim if noise_std > 0 else prior.dim - a.shape[0]
        return cls(joint - evidence, means, cov, rank, evidence)

    @property
    def weights(self) -> Tensor:
        """The posterior mode weights p(k | y) (K,)."""
        return self.log_weights.exp()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def component_log_prob(self, x: Tensor) -> Tensor:
        """log w_k' + log N(x; m_k, P_k) for flat x (B, D) -> (B, K) (on the support when s = 0)."""
        diff = x.double().flatten(1).to(self.means.device)[:, None, :] - self.means  # (B, K, D)
        proj = torch.einsum("bkd,kdr->bkr", diff, self._evecs)
        quad = (proj.pow(2) / self._evals).sum(-1)
        log_det = self._evals.log().sum(-1)
        return self.log_weights - 0.5 * (quad + log_det + self.rank * math.log(2 * math.pi))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x | y) (B,) for x of any shape (B, ...)."""
        return self.component_log_prob(x).logsumexp(1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """p(k | x, y) (B, K): which posterior mode a point belongs to."""
        return self.component_log_prob(x).softmax(1)

    def mean(self) -> Tensor:
        """E[x0 | y] (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x0 | y] (D, D), by the law of total covariance."""
        w = self.weights
        centred = self.means - self.mean()
        return (w[:, None, None] * (self.covariances + centred[:, :, None] * centred[:, None, :])).sum(0)

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """n exact draws (n, D), float64."""
        g = torch.Generator().manual_seed(seed)
        comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=g).to(self.means.device)
        z = torch.randn(n, self.rank, generator=g, dtype=torch.float64).to(self.means.device)
        scale = self._evecs[comp] * self._evals[comp].sqrt()[:, None, :]  # (n, D, r)
        return self.means[comp] + (scale @ z[..., None])[..., 0]
