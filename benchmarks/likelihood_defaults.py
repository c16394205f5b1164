"""The ODE likelihood at its DEFAULT settings, on the exact oracle, against k-diffusion's ``log_likelihood``.

Issue 13, point 5: three mixture families x two schedules, several hundred exact samples of
p_{t_min} per cell, reference = the exact log p_{t_min}(x). Per cell: per-sample |error| in
nats/dim (mean, 99th percentile, max), mean signed error, the fraction of samples within 3
reported standard errors, NFE (model forward passes per sample) and VJPs, and wall time against
k-diffusion's ``log_likelihood`` (dopri5 in sigma, 1 Rademacher probe, atol = rtol = 1e-4 --
what it is run with in practice) timed in the same process, interleaved (the order alternates
between repeats), medians of ``--repeats`` and the median of the per-repeat ratios.
Each method uses its own Gaussian prior at t_max (diffusekit: the schedule's; k-diffusion:
N(0, sigma_max^2)), so both errors include that (small) mismatch.

Families: iso (64-d, 8 isotropic components, std 0.3-0.7); aniso (64-d, 8 diagonal components,
means in [-1, 1], per-dimension stds log-uniform from the schedule's sigma_min / alpha up to
0.3); d32k3 (32-d, 3 isotropic components of std 0.05-0.2, weights 0.6 / 0.3 / 0.1).
Schedules: EDM (sigma in [0.002, 80]) and VP (beta 0.1-20, t in [1e-3, 1]); k-diffusion runs
on x / alpha with sigma / alpha, and log p(x) = log p(x / alpha) - D log alpha.

Run: ``python benchmarks/likelihood_defaults.py`` (writes benchmarks/results/likelihood_defaults.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import diffusekit as dk
from diffusekit.likelihood import ode_log_likelihood
from diffusekit.oracle import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from anchor_helpers import load_k_diffusion_sampling  # noqa: E402

SCHEDULES = {"edm": lambda: dk.EDMSchedule(), "vp": lambda: dk.VPSchedule()}


def sigma_hat_min(schedule: dk.NoiseSchedule) -> float:
    alpha, sigma = schedule.alpha_sigma(torch.tensor(schedule.t_min, dtype=torch.float64))
    return float(sigma / alpha)


def family(name: str, schedule: dk.NoiseSchedule) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    if name == "iso":
        means = torch.randn(8, 64, generator=g, dtype=torch.float64)
        return GaussianMixture(means, 0.3 + 0.4 * torch.rand(8, generator=g, dtype=torch.float64), schedule)
    if name == "aniso":
        means = 2 * torch.rand(8, 64, generator=g, dtype=torch.float64) - 1
        lo, hi = math.log(sigma_hat_min(schedule)), math.log(0.3)
        stds = torch.exp(lo + (hi - lo) * torch.rand(8, 64, generator=g, dtype=torch.float64))
        return GaussianMixture(means, stds, schedule)
    if name == "d32k3":
        means = torch.randn(3, 32, generator=g, dtype=torch.float64)
        stds = 0.05 + 0.15 * torch.rand(3, generator=g, dtype=torch.float64)
        return GaussianMixture(means, stds, schedule, weights=[0.6, 0.3, 0.1])
    raise ValueError(f"unknown family {name!r}; allowed: iso, aniso, d32k3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--families", default="iso,aniso,d32k3")
    ap.add_argument("--schedules", default="edm,vp")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "likelihood_defaults.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    kd = load_k_diffusion_sampling()
    rows = []
    print("errors in nats/dim; time = median of repeats, interleaved with k-diffusion in the same process; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"{'cell':<12} {'|err| mean':>10} {'p99':>7} {'max':>7} {'bias':>9} {'in 3SE':>7} {'NFE':>4} {'VJPs':>5} "
          f"{'nodes':>5} {'s':>6} {'kd s':>6} {'ratio':>5} {'kd |err| mean / p99':>20} {'kd NFE':>6}")
    for sname in args.schedules.split(","):
        for fname in args.families.split(","):
            schedule = SCHEDULES[sname]()
            mix = family(fname, schedule)
            d = mix.dim
            x = mix.sample(args.samples, seed=1, t=schedule.t_min)
            exact = mix.log_prob(x, t=schedule.t_min)
            alpha0, sigma0 = (float(v) for v in schedule.alpha_sigma(torch.tensor(schedule.t_min, dtype=torch.float64)))
            alpha1, sigma1 = (float(v) for v in schedule.alpha_sigma(torch.tensor(schedule.t_max, dtype=torch.float64)))
            wide = GaussianMixture(mix.means, mix.variances.sqrt(), dk.EDMSchedule(t_min=1e-7, t_max=1e7))

            def ours():
                return ode_log_likelihood(mix, x)

            def theirs():
                ll, info = kd.log_likelihood(lambda xx, s: wide(xx, s).x0, x / alpha0, sigma0 / alpha0, sigma1 / alpha1,
                                             atol=1e-4, rtol=1e-4)
                return ll.double() - d * math.log(alpha0), info["fevals"]

            ours_s, kd_s = [], []
            ours()  # warm-up (first torch.func call imports lazily)
            for rep in range(args.repeats):
                with torch.no_grad():
                    for which in ((0, 1) if rep % 2 == 0 else (1, 0)):  # alternate the order: load hits both alike
                        start = time.perf_counter()
                        if which == 0:
                            res = ours()
                            ours_s.append(time.perf_counter() - start)
                        else:
                            torch.manual_seed(0)
                            kd_lp, kd_nfe = theirs()
                            kd_s.append(time.perf_counter() - start)
            med_ours, med_kd = statistics.median(ours_s), statistics.median(kd_s)
            ratio = statistics.median(a / b for a, b in zip(ours_s, kd_s))
            err = (res.log_p - exact) / d
            kerr = (kd_lp - exact) / d
            row = {
                "schedule": sname, "family": fname, "dim": d, "samples": args.samples,
                "abs_err_mean": float(err.abs().mean()), "abs_err_p99": float(err.abs().quantile(0.99)),
                "abs_err_max": float(err.abs().max()), "mean_err": float(err.mean()),
                "within_3se": float(((res.log_p - exact).abs() <= 3 * res.std_error).double().mean()),
                "se_per_dim_mean": float(res.std_error.mean() / d), "nfe": res.nfe, "vjps": res.vjps, "nodes": res.nodes,
                "seconds": round(med_ours, 3), "kd_seconds": round(med_kd, 3), "time_ratio": round(ratio, 2),
                "seconds_all": [round(v, 3) for v in ours_s], "kd_seconds_all": [round(v, 3) for v in kd_s],
                "kd_abs_err_mean": float(kerr.abs().mean()), "kd_abs_err_p99": float(kerr.abs().quantile(0.99)),
                "kd_nfe": int(kd_nfe),
            }
            rows.append(row)
            print(f"{sname + '/' + fname:<12} {row['abs_err_mean']:>10.5f} {row['abs_err_p99']:>7.4f} {row['abs_err_max']:>7.4f} "
                  f"{row['mean_err']:>+9.1e} {row['within_3se']:>7.3f} {row['nfe']:>4} {row['vjps']:>5} {row['nodes']:>5} "
                  f"{med_ours:>6.2f} {med_kd:>6.2f} {row['time_ratio']:>5.2f} "
                  f"{row['kd_abs_err_mean']:>10.4f} / {row['kd_abs_err_p99']:.4f} {row['kd_nfe']:>6}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {"samples": args.samples, "repeats": args.repeats, "threads": 1, "loadavg_end": os.getloadavg(), "defaults": "ode_log_likelihood(denoiser, x)",
             "k_diffusion": "log_likelihood, dopri5, atol = rtol = 1e-4, 1 Rademacher probe"}
    out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
