"""deepinv 0.5.0's DPS, DDRM, DiffPIR and PiGDM against diffusekit on the exact posterior oracle.

Same prior, measurements and exact posterior as benchmarks/inverse_problems.py (a 16-d mixture of 3
Gaussians; ``make_prior`` and ``problems`` are imported from it). deepinv expects images in [0, 1] and
a denoiser D(u + s n, s) = E[u | u + s n]: the data are mapped by u = A_MAP x + B_MAP (A_MAP = 1/8,
B_MAP = 1/2, so the prior's mass lies in [0, 1]) and deepinv's denoiser is the exact oracle
denoiser of the mapped prior (``OracleDenoiser``: E[x0 | x0 + (s / A_MAP) n] from
``GaussianMixture.posterior``, mapped back). Each operator A (M x 16) is given to deepinv as a
``DecomposablePhysics`` built from its full SVD, so that deepinv's A u = [A u; 0] and the
measurement y_u = [A_MAP y + B_MAP A 1; 0] is ours mapped (the noise std becomes A_MAP s; deepinv is
told 1e-3 for the noiseless problems, 0.008 in x units, since DiffPIR and PiGDM divide by it). Samples
are mapped back to x and scored by ``tasks.compare_to_posterior`` against 100,000 exact draws.

deepinv methods at 1,000 steps (NFE = counted denoiser calls): DPS (its DDPM solver on the VP SDE,
weight 1), DDRM (sigmas linspace(1, 0, 1000), eta 0.85), DiffPIR (1,000 iterations, L2 fidelity;
its sigma is the measurement noise std), PiGDM (``PosteriorDiffusion`` with ``PiGDMDataFidelity`` on the VP SDE and its DDPM solver).
diffusekit at 100 NFE on DDPM (uniform t): replacement, DDNM, DPS (zeta 1) and, with noise,
twisted SMC (one population of all samples). deepinv's package init imports torchvision, which is
not installed: a placeholder module satisfies the import inside this script only.

Run: ``python benchmarks/inverse_vs_deepinv.py`` (writes benchmarks/results/inverse_vs_deepinv.json/.md).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

import diffusekit as dk
from diffusekit.files import atomic_write_text
from diffusekit.oracle import GaussianMixture
from diffusekit.tasks import DDNM, DPS, Replacement, TwistedSMC, compare_to_posterior

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inverse_problems import SHAPE, make_prior, problems  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
A_MAP, B_MAP = 1 / 8, 1 / 2
NOISELESS = 1e-3  # the noise std deepinv is told for noiseless measurements (DiffPIR and PiGDM divide by it)
DIM = 16


class _AnyMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return cls


class _Anything(metaclass=_AnyMeta):
    """Whatever deepinv takes from torchvision at import time (never used by the samplers here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _TorchvisionPlaceholder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Satisfies ``import torchvision...`` with empty modules (deepinv's init imports it)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        def anything(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Anything

        module = types.ModuleType(spec.name)
        module.__getattr__ = anything  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # type: ignore[attr-defined]


def import_deepinv() -> Any:
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        sys.meta_path.insert(0, _TorchvisionPlaceholder())
    import deepinv

    return deepinv


def oracle_denoiser(dinv: Any, gm: GaussianMixture) -> Any:
    class OracleDenoiser(dinv.models.Denoiser):
        """deepinv's denoiser interface on the exact oracle of the mapped prior; counts its calls."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, u: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls += 1
            s = torch.as_tensor(sigma, dtype=torch.float64, device=u.device).reshape(-1)
            s = s.expand(u.shape[0]) if s.numel() == 1 else s
            x = (u.double() - B_MAP) / A_MAP
            x0 = gm.posterior(x.flatten(1), torch.ones_like(s), (s / A_MAP).clamp(min=1e-8), None)[0]
            return (A_MAP * x0 + B_MAP).to(u.dtype).reshape(u.shape)

    return OracleDenoiser()


def svd_physics(dinv: Any, a: torch.Tensor, noise: float) -> Any:
    """deepinv DecomposablePhysics with A_dinv u = [A u; 0] (images (B, 1, 4, 4))."""
    m = a.shape[0]
    u_m, s, vh = torch.linalg.svd(a, full_matrices=True)
    mask = torch.zeros(DIM, dtype=torch.float64)
    mask[:m] = s

    def V(z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return (z.flatten(1) @ vh.to(z.dtype)).reshape(z.shape)

    def V_adjoint(x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return (x.flatten(1) @ vh.T.to(x.dtype)).reshape(x.shape)

    def U(z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        f = z.flatten(1)
        return torch.cat([f[:, :m] @ u_m.T.to(z.dtype), f[:, m:]], 1).reshape(z.shape)

    def U_adjoint(y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        f = y.flatten(1)
        return torch.cat([f[:, :m] @ u_m.to(y.dtype), f[:, m:]], 1).reshape(y.shape)

    return dinv.physics.DecomposablePhysics(U=U, U_adjoint=U_adjoint, V=V, V_adjoint=V_adjoint,
                                            mask=mask.reshape(1, *SHAPE), noise_model=dinv.physics.GaussianNoise(sigma=noise))


def deepinv_methods(dinv: Any, den: Any, noise_u: float, steps: int) -> dict[str, Any]:
    """name -> run(y_u, physics, batch) returning samples in u-space (batch, 1, 4, 4)."""
    sampling = dinv.sampling
    f64 = torch.float64

    def dps(y: torch.Tensor, physics: Any, n: int) -> torch.Tensor:
        return sampling.DPS(den, num_steps=steps, dtype=f64)(y, physics, x_init=(n, *SHAPE), seed=3)

    def ddrm(y: torch.Tensor, physics: Any, n: int) -> torch.Tensor:
        return sampling.DDRM(den, sigmas=np.linspace(1, 0, steps))(y, physics, seed=3)

    def diffpir(y: torch.Tensor, physics: Any, n: int) -> torch.Tensor:
        torch.manual_seed(3)
        return sampling.DiffPIR(den, dinv.optim.data_fidelity.L2(), sigma=noise_u, max_iter=steps)(y, physics)

    def pigdm(y: torch.Tensor, physics: Any, n: int) -> torch.Tensor:
        solver = sampling.DDPMSolver(timesteps=torch.linspace(1, 0, steps, dtype=f64))
        post = sampling.PosteriorDiffusion(data_fidelity=sampling.PiGDMDataFidelity(denoiser=den), denoiser=den,
                                           sde=sampling.VariancePreservingDiffusion(dtype=f64), solver=solver, dtype=f64)
        return post(y, physics, x_init=(n, *SHAPE), seed=3)

    return {f"deepinv DPS ({steps} steps)": dps, f"deepinv DDRM ({steps} steps)": ddrm,
            f"deepinv DiffPIR ({steps} iterations)": diffpir, f"deepinv PiGDM ({steps} steps)": pigdm}


def diffusekit_methods(gm: GaussianMixture, op: Any, y: torch.Tensor, noise: float, steps: int) -> dict[str, tuple]:
    dps = DPS(gm, op, y, zeta=1.0)
    out = {f"diffusekit replacement (DDPM {steps})": (gm, [Replacement(op, y)]),
           f"diffusekit DDNM (DDPM {steps})": (gm, [DDNM(op, y)]),
           f"diffusekit DPS (DDPM {steps}, zeta 1)": (dps, [dps])}
    if noise > 0:
        out[f"diffusekit twisted SMC (DDPM {steps})"] = (gm, [TwistedSMC(op, y, noise)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--anchor-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    dinv = import_deepinv()
    print(f"deepinv {dinv.__version__} imported in {time.perf_counter() - start:.0f} s", flush=True)
    gm = make_prior()
    den = oracle_denoiser(dinv, gm)
    rows = []
    for pname, (op, noise) in problems().items():
        x_true = gm.sample(1, seed=11)
        y = op(x_true)[0]
        if noise > 0:
            y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
        a = op.matrix(SHAPE)
        post = gm.measurement_posterior(a, y.flatten(), noise)
        ref = post.sample(100_000, seed=1)
        exact = compare_to_posterior(post, post.sample(args.samples, seed=2), ref)
        rows.append({"problem": pname, "method": "exact posterior draws", "nfe": 0, "seconds": 0.0, **exact.as_dict()})
        y_u = torch.cat([A_MAP * y.flatten() + B_MAP * a.sum(1), torch.zeros(DIM - a.shape[0], dtype=torch.float64)])
        y_u = y_u.reshape(1, *SHAPE).expand(args.samples, *SHAPE).contiguous()
        physics = svd_physics(dinv, a, max(A_MAP * noise, NOISELESS))
        print(pname, flush=True)
        candidates: list[tuple[str, Any]] = []
        for mname, (dden, cons) in diffusekit_methods(gm, op, y, noise, args.steps).items():
            candidates.append((mname, lambda dden=dden, cons=cons: dk.sample(
                dden, dk.make_solver("ddpm"), steps=args.steps, grid="uniform_t", shape=SHAPE, batch=args.samples,
                constraints=cons, dtype=torch.float64, seed=3, progress=False)))
        for mname, run in deepinv_methods(dinv, den, max(A_MAP * noise, NOISELESS), args.anchor_steps).items():
            candidates.append((mname, lambda run=run: run(y_u, physics, args.samples)))
        for mname, run in candidates:
            den.calls = 0
            t0 = time.perf_counter()
            try:
                out = run()
            except Exception as e:  # an anchor that fails is a row of the table, not a crash
                rows.append({"problem": pname, "method": mname, "error": f"{type(e).__name__}: {e}"[:200]})
                print(f"  {mname:42s} FAILED {rows[-1]['error']}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            if mname.startswith("deepinv"):
                x, nfe = (out.double() - B_MAP) / A_MAP, den.calls
            else:
                x, nfe = out.x, out.nfe
            if not bool(torch.isfinite(x).all()):
                rows.append({"problem": pname, "method": mname, "nfe": nfe, "error": "non-finite samples"})
                print(f"  {mname:42s} non-finite samples", flush=True)
                continue
            r = compare_to_posterior(post, x, ref)
            rows.append({"problem": pname, "method": mname, "nfe": nfe, "seconds": round(seconds, 1), **r.as_dict()})
            print(f"  {mname:42s} nfe={nfe:5d} gap={r.log_density_gap:+.3f}±{r.log_density_se:.3f} "
                  f"modes={r.mode_weight_error:.3f} spread={r.spread:.3f} mean={r.mean_error:.3f} {seconds:.1f}s", flush=True)
    OUT.mkdir(exist_ok=True)
    atomic_write_text(OUT / "inverse_vs_deepinv.json", json.dumps({"samples": args.samples, "rows": rows}, indent=1))
    lines = ["| problem | method | NFE | log-density gap | mode-weight error | spread | mean error | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['method']} | {r.get('nfe', '—')} | failed: {r['error']} | | | | |")
        else:
            lines.append(f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['log_density_gap']:+.3f} ± "
                         f"{r['log_density_se']:.3f} | {r['mode_weight_error']:.3f} | {r['spread']:.3f} | "
                         f"{r['mean_error']:.3f} | {r['seconds']} |")
    atomic_write_text(OUT / "inverse_vs_deepinv.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
