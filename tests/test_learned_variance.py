"""Improved-DDPM learned variance (Nichol & Dhariwal 2021): the head, the rule, the bound, the losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import diffusekit as dk
from diffusekit.denoiser import Denoiser, DenoiserWrapper
from diffusekit.learned_variance import LearnedVariance, interpolated_variance
from diffusekit.likelihood import discrete_vlb
from diffusekit.models import MLP, UNet
from diffusekit.oracle import GaussianMixture
from diffusekit.parameterization import Prediction
from diffusekit.variances import make_variance

from .conftest import smooth_mixture


class ConstantInterp(DenoiserWrapper):
    """The exact oracle with a given variance interpolation v (a number or a function of t)."""

    def __init__(self, inner: GaussianMixture, v: float) -> None:
        super().__init__(inner)
        self.v = v

    def forward(self, x: Tensor, t, cond=None) -> Prediction:
        pred = self.inner(x, t, cond)
        pred.var_interp = torch.full_like(x, self.v)
        return pred


# ---- the head ---------------------------------------------------------------------------------------


def test_variance_head_doubles_the_outputs_and_the_denoiser_splits_them() -> None:
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    mlp = MLP(3, width=16, depth=1, learn_variance=True, zero_init=False)
    unet = UNet(1, base_channels=16, channel_mult=(1,), num_res_blocks=1, learn_variance=True)
    for net, x in ((mlp, torch.randn(4, 3)), (unet, torch.randn(2, 1, 4, 4))):
        assert net(x, torch.zeros(x.shape[0])).shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        den = Denoiser(net, sch, "eps")
        assert den.learns_variance
        pred = den(x, 0.5)
        raw = net(x, den.precondition(x, 0.5)[1])
        torch.testing.assert_close(pred.eps, raw[:, : x.shape[1]])
        torch.testing.assert_close(pred.var_interp, (raw[:, x.shape[1]:] + 1) / 2)
        assert pred.with_x0(pred.x0).var_interp is pred.var_interp  # constraints keep it
    plain = Denoiser(MLP(3, width=16, depth=1), sch, "eps")
    assert not plain.learns_variance and plain(torch.randn(4, 3), 0.5).var_interp is None


# ---- the rule ---------------------------------------------------------------------------------------


def test_learned_variance_interpolates_in_the_log_domain() -> None:
    """Nichol & Dhariwal eq. 15: v = 0 gives beta tilde, v = 1 beta, v = 1/2 their geometric mean."""
    v = torch.tensor([0.0, 1.0, 0.5, 2.0])
    out = interpolated_variance(v, 0.01, 0.04)
    torch.testing.assert_close(out, torch.tensor([0.01, 0.04, 0.02, 0.16]))
    assert isinstance(make_variance("learned"), LearnedVariance)


def test_learned_variance_refuses_a_model_without_a_head() -> None:
    sch = dk.DiscreteSchedule("linear", num_steps=50)
    mix = smooth_mixture(sch, dim=2)
    with pytest.raises(ValueError, match="variance 'learned' needs a model with a variance head"):
        dk.sample(mix, dk.make_solver("ddpm", variance="learned"), steps=10, shape=(2,), batch=4, progress=False)
    with pytest.raises(ValueError, match="variance must be one of"):
        make_variance("analytik")


def test_ddpm_with_learned_variance_at_the_ends_is_small_or_large() -> None:
    """The ancestral sampler reads the rule: v = 0 draws exactly as 'small', v = 1 as 'large'."""
    sch = dk.DiscreteSchedule("linear", num_steps=100)
    mix = smooth_mixture(sch, dim=3)
    for v, fixed in ((0.0, "small"), (1.0, "large")):
        runs = [dk.sample(den, dk.make_solver("ddpm", variance=var), steps=20, shape=(3,), batch=64, seed=3,
                          progress=False).x
                for den, var in ((ConstantInterp(mix, v), "learned"), (mix, fixed))]
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)
    mid = dk.sample(ConstantInterp(mix, 0.5), dk.make_solver("ddpm", variance="learned"), steps=20, shape=(3,),
                    batch=64, seed=3, progress=False).x
    assert not torch.allclose(mid, runs[1])


def test_bound_with_learned_variance_at_the_ends_is_the_fixed_bound() -> None:
    """vlb.py's bound on a respaced trajectory: the learned rule at v = 0 / 1 gives the small / large
    KL terms, and its decoder interpolates between the clipped variance and beta_1."""
    sch = dk.DiscreteSchedule("linear", num_steps=200)
    mix = smooth_mixture(sch, dim=3)
    x0 = mix.sample(32, seed=2)
    kw = dict(steps=20, decoder="gaussian", seed=5)
    for v, fixed in ((0.0, "small"), (1.0, "large")):
        learned = discrete_vlb(ConstantInterp(mix, v), x0, variance="learned", **kw)
        ref = discrete_vlb(mix, x0, variance=fixed, **kw)
        torch.testing.assert_close(learned.terms[:, 1:], ref.terms[:, 1:])
    torch.testing.assert_close(discrete_vlb(ConstantInterp(mix, 0.0), x0, variance="learned", **kw).terms[:, 0],
                               discrete_vlb(mix, x0, variance="small", **kw).terms[:, 0])
    beta1 = float(1 - sch.alphas_cumprod[9])  # sigma^2 at the first knot of the 20-step trajectory
    torch.testing.assert_close(discrete_vlb(ConstantInterp(mix, 1.0), x0, variance="learned", **kw).terms[:, 0],
                               discrete_vlb(mix, x0, variance="small", decoder_variance=beta1, **kw).terms[:, 0])
