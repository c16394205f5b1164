"""PF-ODE log-likelihood on the exact oracle: diffusekit vs k-diffusion's ``log_likelihood``.

Setting: a 64-d, 8-component Gaussian mixture on the EDM schedule (sigma in
[0.002, 80]), 256 exact samples of p_{sigma_min}; the reference is the exact
log p_{sigma_min}(x). Every method uses its own Gaussian prior at sigma_max, so
the errors include the (small) prior mismatch. Reported per configuration:
per-sample |error| (mean, RMS, max) and the mean (signed) error in nats/dim,
the mean reported standard error, NFE and wall time (best of ``--repeats``).

k-diffusion (Crowson) integrates x / alpha in sigma with dopri5 and one
Rademacher probe fixed along the path. Its package __init__ imports modules we
do not need (scikit-image, torchvision), so only ``k_diffusion.sampling`` is
loaded, with a stand-in torchvision module during that import.

The settings here are the explicit alternatives (augmented ODE, fixed Gauss-Legendre rules); the
defaults are measured by ``benchmarks/likelihood_defaults.py``.

Run: ``python benchmarks/likelihood_vs_anchors.py`` (writes benchmarks/results/likelihood.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.likelihood import ode_log_likelihood
from diffusekit.oracle import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from anchor_helpers import load_k_diffusion_sampling  # noqa: E402


def make_problem(dim: int, components: int, n: int, seed: int) -> tuple[GaussianMixture, GaussianMixture, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = 0.3 + 0.4 * torch.rand(components, generator=g, dtype=torch.float64)
    schedule = dk.EDMSchedule()  # sigma in [0.002, 80]
    oracle = GaussianMixture(means, stds, schedule)
    # the same oracle on a wider sigma range: dopri5's first-step probe may look past sigma_max
    wide = GaussianMixture(means, stds, dk.EDMSchedule(t_min=1e-6, t_max=1e6))
    x = oracle.sample(n, seed=seed + 1, t=schedule.t_min)
    return oracle, wide, x, oracle.log_prob(x, t=schedule.t_min)


def timed(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def row(name: str, log_p: torch.Tensor, exact: torch.Tensor, dim: int, nfe: int, seconds: float, se: torch.Tensor | None) -> dict:
    err = (log_p.double() - exact) / dim
    finite_se = se is not None and bool(torch.isfinite(se).all()) and bool((se > 0).any())
    return {
        "method": name,
        "nfe": int(nfe),
        "seconds": round(seconds, 3),
        "per_sample_abs_err_mean": float(err.abs().mean()),
        "per_sample_abs_err_rms": float(err.pow(2).mean().sqrt()),
        "per_sample_abs_err_max": float(err.abs().max()),
        "mean_err": float(err.mean()),
        "reported_se_per_dim": float(se.mean() / dim) if finite_se else None,
        "within_3se": float(((log_p - exact).abs() <= 3 * se).double().mean()) if finite_se else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-exact-joint", action="store_true", help="skip the slow exact-trace augmented ODE rows")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "likelihood.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    oracle, wide, x, exact = make_problem(args.dim, args.components, args.samples, args.seed)
    s_min, s_max = oracle.schedule.t_min, oracle.schedule.t_max
    rows: list[dict] = []

    def report(r: dict) -> None:
        rows.append(r)
        se = "-" if r["reported_se_per_dim"] is None else f"{r['reported_se_per_dim']:.4f}"
        print(
            f"{r['method']:<58} {r['nfe']:>4} {r['seconds']:>7.2f} {r['per_sample_abs_err_mean']:>8.4f} "
            f"{r['per_sample_abs_err_rms']:>8.4f} {r['per_sample_abs_err_max']:>7.4f} {r['mean_err']:>+9.1e} {se:>7}",
            flush=True,
        )

    print(f"{args.dim}-d, {args.components}-component mixture, {args.samples} exact samples of p_sigma_min; errors in nats/dim")
    print(f"{'method':<58} {'NFE':>4} {'time s':>7} {'|err|':>8} {'rms':>8} {'max':>7} {'mean err':>9} {'se':>7}")

    kd = load_k_diffusion_sampling()
    if kd is not None:
        def denoised(xx: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return wide(xx, sigma).x0

        for tol in (1e-4, 1e-5):
            torch.manual_seed(args.seed)
            (ll, info), sec = timed(lambda: kd.log_likelihood(denoised, x, s_min, s_max, atol=tol, rtol=tol), args.repeats)
            report(row(f"k-diffusion log_likelihood tol={tol:g}", ll, exact, args.dim, info["fevals"], sec, None))

    configs: list[tuple[str, dict, int]] = []
    for tol in (1e-4, 1e-5):
        t = {"rtol": tol, "atol": tol}
        configs += [
            (f"augmented, sigma/alpha var, 1 probe, tol={tol:g}", dict(t, quadrature=None, variable="edm", divergence="hutchinson", probes=1), args.repeats),
            (f"augmented, angle, 1 probe, tol={tol:g}", dict(t, quadrature=None, divergence="hutchinson", probes=1), args.repeats),
            (f"augmented, lambda, 1 probe, tol={tol:g}", dict(t, quadrature=None, variable="lambda", divergence="hutchinson", probes=1), args.repeats),
            (f"augmented, angle, 8 probes, tol={tol:g}", dict(t, quadrature=None, divergence="hutchinson", probes=8), args.repeats),
            (f"GL16 quadrature, exact trace, tol={tol:g}", dict(t, quadrature=16, divergence="exact"), 1),
            (f"GL16 quadrature, 8 probes/node uniform, tol={tol:g}", dict(t, quadrature=16, divergence="hutchinson", probes=8, allocation="uniform"), args.repeats),
            (f"GL16 quadrature, 8 probes/node Neyman, tol={tol:g}", dict(t, quadrature=16, divergence="hutchinson", probes=8), args.repeats),
            (f"GL24 quadrature, 8 probes/node Neyman, tol={tol:g}", dict(t, quadrature=24, divergence="hutchinson", probes=8), args.repeats),
            (f"GL16 quadrature, 8 probes/node Neyman, bosh3, tol={tol:g}", dict(t, quadrature=16, divergence="hutchinson", probes=8, method="bosh3"), args.repeats),
        ]
        if not args.skip_exact_joint:
            configs.append((f"augmented, angle, exact trace, tol={tol:g}", dict(t, quadrature=None, divergence="exact"), 1))
    for name, kwargs, repeats in configs:
        res, sec = timed(lambda: ode_log_likelihood(oracle, x, seed=args.seed, **kwargs), repeats)
        report(row(name, res.log_p, exact, args.dim, res.nfe, sec, res.std_error if kwargs.get("divergence") == "hutchinson" else None))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {k: getattr(args, k) for k in ("dim", "components", "samples", "repeats", "seed")}
    setup.update(schedule="edm sigma in [0.002, 80]", reference="exact log p_sigma_min(x)", threads=1)
    out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
