"""The fitted step grids ``tuned_lambda`` / ``tuned_warp`` and the solvers' default grids on sharp mixtures."""

from __future__ import annotations

import math

import pytest
import torch

import diffusekit as dk
from diffusekit.tuned import TUNED_TABLE, TUNED_WARP
from diffusekit.oracle import GaussianMixture


def sharp(dim: int = 64, seed: int = 5) -> GaussianMixture:
    """The benchmark's family (8 modes, std 0.02-0.1, DDPM linear) with another seed."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.rand(8, dim, generator=g, dtype=torch.float64) - 1
    stds = 0.02 + 0.08 * torch.rand(8, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, dk.DiscreteSchedule("linear", 1000))


def test_identity_warp_is_uniform_lambda(schedule: dk.NoiseSchedule) -> None:
    for n in (1, 2, 7):
        a = dk.make_grid("tuned_lambda", schedule, n, warp=[0.0, 0.5, 1.0])
        b = dk.make_grid("uniform_lambda", schedule, n)
        torch.testing.assert_close(a.t, b.t, rtol=1e-9, atol=1e-12)


def test_fractions_place_points_in_log_snr() -> None:
    s = dk.VPSchedule()
    f = [0.0, 0.2, 0.5, 0.6, 0.9]
    g = dk.make_grid("tuned_lambda", s, 5, fractions=f)
    lam = s.log_snr(torch.tensor([s.t_max, s.t_min], dtype=torch.float64))
    torch.testing.assert_close(g.lam[:-1], lam[0] + torch.tensor(f, dtype=torch.float64) * (lam[1] - lam[0]))
    assert g.t[-2] > s.t_min and g.ends_at_zero  # a last fraction < 1 stops above t_min
    # the default: the fitted table row for the count, else the fitted warp
    for n in (3, 25):
        expect = dk.make_grid("tuned_lambda", s, n, **({"fractions": TUNED_TABLE[n]} if n in TUNED_TABLE else {"warp": TUNED_WARP}))
        torch.testing.assert_close(dk.make_grid("tuned_lambda", s, n).t, expect.t)
    # tuned_warp: the warp at every count, also where the table has a row
    torch.testing.assert_close(dk.make_grid("tuned_warp", s, 5).t, dk.make_grid("tuned_lambda", s, 5, warp=TUNED_WARP).t)
    assert not torch.equal(dk.make_grid("tuned_warp", s, 5).t, dk.make_grid("tuned_lambda", s, 5).t)


def test_bad_warps_and_fractions_are_refused() -> None:
    s = dk.VPSchedule()
    with pytest.raises(ValueError, match="warp must increase strictly from 0 to 1"):
        dk.make_grid("tuned_lambda", s, 5, warp=[0.0, 0.7, 0.6, 1.0])
    with pytest.raises(ValueError, match="fractions must be 5 increasing values"):
        dk.make_grid("tuned_lambda", s, 5, fractions=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="give warp or fractions, not both"):
        dk.make_grid("tuned_lambda", s, 2, warp=[0.0, 1.0], fractions=[0.0, 1.0])
    with pytest.raises(ValueError, match="fractions must be 3 increasing values"):
        dk.make_grid("tuned_lambda", s, 3, fractions=[0.0, 0.5, 1.2])


def spread(mix: GaussianMixture, x: torch.Tensor) -> float:
    """Within-component std of samples / the true std (1 = exact), components by likelihood."""
    x = x.double()
    d = x[:, None, :] - mix.means
    comp = (mix.log_weights - 0.5 * (d**2 / mix.variances + mix.variances.log()).sum(-1)).argmax(1)
    return float(((x - mix.means[comp]).pow(2).mean(1) / mix.variances[comp].mean(1)).mean().sqrt())


@pytest.mark.parametrize(
    ("name", "nfes"),
    [("dpm_solver", (10, 20)), ("dpmpp_2m", (10, 20)), ("unipc", (10, 20)), ("deis", (20,)), ("ipndm", (20,)), ("lms", (20,))],
)
def test_default_grids_keep_the_spread(name: str, nfes: tuple[int, ...]) -> None:
    """Issue 4: no collapse onto the modes and no overshoot (spread 0.95-1.05, log-likelihood
    of exact samples within Monte-Carlo error) with each solver's defaults; the
    exponential integrators from NFE 10, the others (spread 0.8-1.15 at 10) from NFE 20."""
    mix = sharp()
    n = 600
    exact = mix.sample(n, seed=2)
    ll_exact = mix.log_prob(exact)
    assert 0.97 < spread(mix, exact) < 1.03
    x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(3))
    for steps in nfes:
        x = dk.sample(mix, dk.make_solver(name), x_T, steps=steps, progress=False).x
        ll = mix.log_prob(x)
        tol = 4 * math.sqrt((ll.var() + ll_exact.var()) / n)
        assert 0.95 < spread(mix, x) < 1.05, (name, steps, spread(mix, x))
        assert abs(float(ll.mean() - ll_exact.mean())) < tol, (name, steps, float(ll.mean()), float(ll_exact.mean()))


def test_make_grid_shares_built_grids() -> None:
    schedule = dk.DiscreteSchedule("linear")
    a = dk.make_grid("tuned_lambda", schedule, 10)
    assert dk.make_grid("tuned_lambda", schedule, 10) is a
    assert dk.make_grid("tuned_lambda", schedule, 11) is not a
    assert dk.make_grid("karras", schedule, 10, rho=7.0) is not dk.make_grid("karras", schedule, 10, rho=5.0)
    warped = dk.make_grid("tuned_lambda", schedule, 10, warp=[0.0, 0.5, 1.0])  # unhashable option: built, not shared
    torch.testing.assert_close(warped.t, dk.make_grid("uniform_lambda", schedule, 10).t)
