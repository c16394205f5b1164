"""The exact oracle agrees with Monte Carlo, autograd and itself."""

from __future__ import annotations

import pytest
import torch

import diffusekit as dk
from diffusekit.oracle import GaussianMixture

from .conftest import smooth_mixture


def test_denoiser_matches_monte_carlo(schedule: dk.NoiseSchedule) -> None:
    """E[x0 | x_t] by self-normalised importance sampling over exact data draws."""
    mix = smooth_mixture(schedule, dim=2)
    t = schedule.t_min + 0.3 * (schedule.t_max - schedule.t_min)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    x0 = mix.sample(400_000, seed=1)
    x_t = mix.sample(5, seed=2, t=t)
    logw = -0.5 * ((x_t[:, None, :] - alpha * x0[None]) ** 2).sum(-1) / sigma**2
    w = torch.softmax(logw, 1)
    mc = w @ x0
    ess = 1 / (w**2).sum(1)
    post_sd = x0.std(0).max()  # a loose bound on the posterior spread
    tol = 4 * post_sd / ess.sqrt()
    exact = mix(x_t, t).x0
    assert bool(((mc - exact).abs().max(1).values < tol).all()), (mc, exact, tol)


def test_score_is_gradient_of_log_density(schedule: dk.NoiseSchedule) -> None:
    mix = smooth_mixture(schedule, dim=3)
    t = schedule.t_min + 0.2 * (schedule.t_max - schedule.t_min)
    x = mix.sample(16, seed=3, t=t).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, t).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), t), grad, rtol=1e-8, atol=1e-8)


def test_log_prob_at_clean_end_is_data_density() -> None:
    mix = GaussianMixture([[0.0, 0.0]], [2.0], dk.VPSchedule())
    x = torch.randn(4, 2, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 2.0).log_prob(x).sum(1)
    torch.testing.assert_close(mix.log_prob(x), expected)


def test_exact_samples_have_mixture_moments() -> None:
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    mix = GaussianMixture(means, [0.5, 0.2], dk.VPSchedule(), weights=[0.25, 0.75])
    x = mix.sample(100_000, seed=0)
    mean = 0.25 * means[0] + 0.75 * means[1]
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)


def test_class_conditional_is_one_component() -> None:
    schedule = dk.VPSchedule()
    mix = smooth_mixture(schedule, dim=2)
    x = mix.sample(8, seed=0, t=0.5)
    for k in range(3):
        only = GaussianMixture(mix.means[k : k + 1], mix.variances[k : k + 1].sqrt(), schedule)
        cond = torch.full((8,), k)
        torch.testing.assert_close(mix(x, 0.5, cond).x0, only(x, 0.5).x0)
        torch.testing.assert_close(mix.log_prob(x, 0.5, cond), only.log_prob(x, 0.5))
    samples = mix.sample(1000, seed=0, cond=torch.tensor(1))
    torch.testing.assert_close(samples.mean(0), mix.means[1], atol=0.08, rtol=0)


def test_ode_reference_is_reproduced_at_two_tolerances(schedule: dk.NoiseSchedule) -> None:
    mix = smooth_mixture(schedule, dim=3)
    x_t = mix.sample(32, seed=4, t=schedule.t_max)
    fine = mix.ode_solution(x_t, schedule.t_max, rtol=1e-11, atol=1e-11)
    coarse = mix.ode_solution(x_t, schedule.t_max, rtol=1e-8, atol=1e-8)
    assert (fine - coarse).abs().max() < 1e-6
    assert (fine - x_t).abs().max() > 0.1  # it moved


def test_ode_reference_pushes_marginals_forward() -> None:
    """Mapping exact p_T samples through the ODE gives exact data moments (Song et al. 2021, sec. 4.3)."""
    schedule = dk.VPSchedule()
    mix = GaussianMixture([[1.0, -1.0]], [[0.5, 0.8]], schedule)
    x_T = mix.sample(4000, seed=5, t=1.0)
    x0 = mix.ode_solution(x_T, 1.0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(x0.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.tensor([0.5, 0.8], dtype=torch.float64), atol=0.03, rtol=0)


def test_oracle_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixture([1.0, 2.0], 1.0, dk.VPSchedule())
    with pytest.raises(ValueError, match="stds must be positive"):
        GaussianMixture([[1.0, 2.0]], -1.0, dk.VPSchedule())


def _rotated(schedule: dk.NoiseSchedule, dim: int = 3, components: int = 2, seed: int = 0) -> GaussianMixture:
    """Anisotropic components (stds spanning 20x) under a random rotation."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    means = torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = torch.logspace(-1, torch.log10(torch.tensor(2.0)).item(), dim, dtype=torch.float64).expand(components, dim)
    return GaussianMixture(means, stds, schedule, weights=[0.3, 0.7][:components], rotation=q)


def test_rotated_posterior_is_the_full_covariance_closed_form() -> None:
    """One component N(mu, C), C = Q diag(s^2) Q^T: E[x0 | x] = mu + alpha C (alpha^2 C + sigma^2 I)^-1 (x - alpha mu),
    and log p_t is the N(alpha mu, alpha^2 C + sigma^2 I) density."""
    schedule = dk.VPSchedule()
    mix = _rotated(schedule, components=1)
    q, mu = mix.rotation, mix.means[0]
    cov = q @ torch.diag(mix.variances[0]) @ q.T
    t = 0.4
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    x = mix.sample(6, seed=1, t=t)
    marg = alpha**2 * cov + sigma**2 * torch.eye(3, dtype=torch.float64)
    expected = mu + alpha * (cov @ torch.linalg.solve(marg, (x - alpha * mu).T)).T
    x0, eps, log_p = mix.posterior(x, torch.full((6,), alpha, dtype=torch.float64), torch.full((6,), sigma, dtype=torch.float64))
    torch.testing.assert_close(x0, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps, (x - alpha * x0) / sigma, rtol=1e-10, atol=1e-10)
    density = torch.distributions.MultivariateNormal(alpha * mu, marg).log_prob(x)
    torch.testing.assert_close(log_p, density, rtol=1e-10, atol=1e-10)


def test_rotated_score_is_gradient_of_log_density(schedule: dk.NoiseSchedule) -> None:
    mix = _rotated(schedule)
    t = schedule.t_min + 0.2 * (schedule.t_max - schedule.t_min)
    x = mix.sample(16, seed=3, t=t).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, t).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), t), grad, rtol=1e-8, atol=1e-8)


def test_rotated_samples_have_the_full_covariance() -> None:
    mix = _rotated(dk.VPSchedule(), components=1)
    x = mix.sample(200_000, seed=0)
    cov = mix.rotation @ torch.diag(mix.variances[0]) @ mix.rotation.T
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.02, rtol=0.02)
    torch.testing.assert_close(mix.to_frame(x - mix.means[0]).std(0), mix.variances[0].sqrt(), atol=0, rtol=0.01)


def test_rotated_ode_reference_pushes_marginals_forward() -> None:
    """Exact p_T draws mapped by the reference ODE have the data's full covariance."""
    schedule = dk.VPSchedule()
    mix = _rotated(schedule, components=1)
    x0 = mix.ode_solution(mix.sample(4000, seed=5, t=1.0), 1.0, rtol=1e-8, atol=1e-8)
    cov = mix.rotation @ torch.diag(mix.variances[0]) @ mix.rotation.T
    torch.testing.assert_close(x0.mean(0), mix.means[0], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x0.T), cov, atol=0.05, rtol=0.06)


def test_oracle_rejects_non_orthogonal_rotation() -> None:
    with pytest.raises(ValueError, match="orthogonal"):
        GaussianMixture([[1.0, 2.0]], 1.0, dk.VPSchedule(), rotation=[[1.0, 0.5], [0.0, 1.0]])


def test_posterior_at_per_sample_noise_levels_matches_one_level_at_a_time() -> None:
    """The (B, K) @ (K, D) path (one noise level for the batch) and the per-sample path agree."""
    mix = _rotated(dk.VPSchedule())
    x = mix.sample(6, seed=7, t=0.5)
    alpha = torch.linspace(0.3, 0.9, 6, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    joint = mix.posterior(x, alpha, sigma)
    for i in range(6):
        one = mix.posterior(x[i : i + 1].expand(3, -1), alpha[i].expand(3), sigma[i].expand(3))
        for a, b in zip(joint, one):
            torch.testing.assert_close(a[i], b[0], rtol=1e-12, atol=1e-12)
