"""Evaluate a trained run: sample quality against its real data, and its likelihood.

One function per metric family, each a thin layer over :mod:`diffusekit.metrics`
and :mod:`diffusekit.likelihood`:

- :func:`feature_metrics` -- ``fid`` (Heusel et al. 2017), ``kid`` (Binkowski et al.
  2018), ``pr`` (Kynkaanniemi et al. 2019) in Inception-v3 pool3 features for
  images (real statistics and features cached under the diffusekit cache folder);
  ``kid`` and ``pr`` use the raw coordinates for vector data. FID is refused on
  vectors: a Gaussian fit of raw low-dimensional data hides its modes.
- :func:`classifier_metrics` -- ``cfd`` (Frechet distance in the penultimate
  features of the library's digits / Fashion-MNIST classifier) and ``is`` (the
  Inception Score formula of Salimans et al. 2016 on that classifier's logits).
- :func:`sliced_wasserstein_metric` -- ``sw`` on flattened data (Rabin et al. 2011).
- :func:`nll_metric` -- ``nll``: the probability-flow ODE log-likelihood
  (Song et al. 2021, sec. 4.3 / app. D.2). Images on a lattice of L levels get
  uniform dequantization (Theis et al. 2016, sec. 3.1) over bins *centred on
  the lattice points* the data were scaled to, x_k = 2 k / (L - 1) - 1: bins of
  width 2 / (L - 1) on [-1 - 1/(L-1), 1 + 1/(L-1)], giving an upper bound on the
  discrete bits/dim. L = 17 for sklearn's digits (pixel values 0..16), 256 for
  8-bit images; other data report nats/dim of the continuous density.
- :func:`vlb_metric` -- ``vlb``: the DDPM bound (Ho et al. 2020, eq. 5) for a
  ``DiscreteSchedule``, VDM's continuous bound (Kingma et al. 2021, eq. 17)
  otherwise, with the discretized decoder on the same L-level lattice.

Both likelihoods are averaged over N real items; the standard error is that of
the mean over items (it contains data, dequantization and Hutchinson noise).

Under torchrun (a ``world`` of several processes) the samples are drawn in shards and
gathered (``pipeline.sample_denoiser``), the Inception features of samples and real items
are computed in shards and gathered (:func:`sharded_features`), so every figure equals the
single-process one; ``nll`` and ``vlb`` run on rank 0 alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import TOY_NAMES, load_dataset
from .data.images import lattice_levels
from .denoiser import Denoiser
from .likelihood import continuous_vlb, dequantized_bits_per_dim, discrete_vlb, ode_log_likelihood
from .likelihood.trajectory import trajectory_times
from .pipeline import LoadedRun, load_run, load_training_data, sample_denoiser
from .progress import progress_bar
from .run_variances import check_bound_setting, default_variance, run_trajectory, run_variance
from .schedules.discrete import DiscreteSchedule
from .train.distributed import World, gather_array, shard
from .utils import check_positive_int
from .variances import ReverseVariance, make_variance

#: Every metric name ``evaluate_run`` knows.
METRICS: tuple[str, ...] = ("fid", "kid", "pr", "cfd", "is", "sw", "nll", "vlb")
#: Datasets with a library classifier (``cfd``, ``is``): run data name -> classifier key.
CLASSIFIER_DATASETS = {"digits": "digits", "fashion": "fashion_mnist", "fashion-mnist": "fashion_mnist",
                       "fashion_mnist": "fashion_mnist"}
LN2 = math.log(2.0)
#: ``ode_log_likelihood`` settings of ``nll`` unless overridden: none, so ``diffusekit eval`` uses the API's
#: defaults (adaptive quadrature to ``tol`` nats/dim; benchmarks/RESULTS.md measures exactly these).
NLL_DEFAULTS: dict[str, Any] = {}


@dataclass(frozen=True)
class RealData:
    """The reference items of a run: ``x`` (N, ...) in [-1, 1], labels or None, and where they come from.

    ``levels`` is the number of quantization levels L when every value lies on the
    lattice 2 k / (L - 1) - 1, else None (continuous data). ``held_out`` says whether the
    items were unseen in training; ``dataset`` names the data, ``source`` says which part.
    """

    x: Tensor
    labels: Tensor | None
    dataset: str
    source: str
    held_out: bool
    levels: int | None

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4


@dataclass
class MetricResult:
    """One reported figure: ``value`` in ``unit``, its standard error (or spread) and details."""

    value: float
    unit: str = ""
    std_error: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def real_data(run: LoadedRun, n: int, seed: int = 0) -> RealData:
    """Up to ``n`` reference items for ``run``, a random subset (by ``seed``) of the best available set.

    Toys: fresh draws from the generator (a seed the run never trained on).
    Fashion-MNIST: the test split. Digits and other data: the training data
    itself (sklearn's digits have no held-out split in training).
    """
    check_positive_int("n", n)
    cfg = run.config
    name = cfg.data.name
    labels: Tensor | None
    if name in TOY_NAMES:
        x, labels = load_dataset(name, n=n, seed=cfg.seed + 1_000_003)
        return RealData(x, None, name, f"fresh draws (seed {cfg.seed + 1_000_003})", True, None)
    if name in ("fashion", "fashion-mnist", "fashion_mnist"):
        x, labels = load_dataset(name, split="test")
        source, held_out = "test split", True
    else:
        x, labels = load_training_data(cfg)
        source, held_out = "training data", False
    if tuple(x.shape[1:]) != run.info.data_shape:
        raise ValueError(f"reference data of shape {tuple(x.shape[1:])} do not match the run's {run.info.data_shape}")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    levels = lattice_levels(x[perm], (17, 256)) if x.ndim == 4 else None
    return RealData(x[perm], None if labels is None else labels[perm], name, source, held_out, levels)


def why_not_applicable(metric: str, data: RealData) -> str | None:
    """None when ``metric`` applies to ``data``, else the reason it does not."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    shape = tuple(data.x.shape[1:])
    if metric == "fid" and not data.is_image:
        return (f"fid needs images (it compares Inception-v3 features), but {data.dataset!r} items have shape "
                f"{shape}; a Gaussian fit of raw low-dimensional data hides its modes -- use sw, kid or pr")
    if metric in ("fid", "kid", "pr") and data.is_image and shape[0] not in (1, 3):
        return f"{metric} uses the Inception network, which needs 1 or 3 channels; the data have shape {shape}"
    if metric in ("cfd", "is"):
        key = CLASSIFIER_DATASETS.get(data.dataset)
        if key is None:
            return (f"{metric} needs a dataset classifier (trained for: digits, fashion); "
                    f"this run's data are {data.dataset!r}")
        expected = (1, 8, 8) if key == "digits" else (1, 28, 28)
        if shape != expected:
            return f"the {key} classifier takes images of shape {expected}; this run's data have shape {shape}"
    return None


def parse_metrics(spec: str | Sequence[str], data: RealData) -> list[str]:
    """Metric names from ``'fid,kid'`` (or a list), checked against :data:`METRICS` and against the data."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ValueError(f"no metrics given; allowed: {', '.join(METRICS)}")
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(METRICS)}")
    for m in names:
        reason = why_not_applicable(m, data)
        if reason is not None:
            raise ValueError(reason)
    return list(dict.fromkeys(names))


def default_metrics(data: RealData) -> list[str]:
    """The applicable metrics of the usual set: fid/cfd/is for images, sw for vectors, plus kid, pr, nll, vlb."""
    preferred = ("fid", "kid", "pr", "cfd", "is", "nll", "vlb") if data.is_image else ("sw", "kid", "pr", "nll", "vlb")
    return [m for m in preferred if why_not_applicable(m, data) is None]


# ------------------------------------------------------------------------------------------ sample quality
def sharded_features(extractor: Any, x: Tensor, world: World | None = None, *, batch_size: int = 64,
                     progress: bool = True) -> np.ndarray:
    """``extractor``'s features (N, F) of all rows of ``x``: each rank computes its :func:`shard`'s and the parts are
    gathered in row order, on every rank (one process: all of them)."""
    from .metrics import compute_features

    world = world or World()
    part = compute_features(extractor, x[shard(x.shape[0], world)], batch_size=batch_size,
                            progress=progress and world.is_main)
    return gather_array(part, world)


def _real_inception_features(data: RealData, progress: bool, cache_dir: str | Path | None,
                             world: World | None) -> np.ndarray:
    """Inception features of the reference items, cached under ``<cache>/features`` by a hash of their values."""
    from .metrics import InceptionFeatures, cached_features

    extractor = InceptionFeatures()
    digest = hashlib.sha1(data.x.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]
    key = f"{extractor.name}-{data.dataset}-n{data.x.shape[0]}-{digest}"
    return cached_features(key, lambda: sharded_features(extractor, data.x, world, batch_size=extractor.batch_size,
                                                         progress=progress), cache_dir)


def feature_metrics(
    samples: Tensor, data: RealData, metrics: Sequence[str], *, seed: int = 0, progress: bool = True,
    cache_dir: str | Path | None = None, world: World | None = None,
) -> dict[str, MetricResult]:
    """``fid``, ``kid``, ``pr`` of ``samples`` against ``data``: Inception features for images, raw coordinates else
    (features computed in shards across the ``world``'s processes)."""
    from .metrics import frechet_distance_from_features, kernel_inception_distance, precision_recall

    wanted = [m for m in metrics if m in ("fid", "kid", "pr")]
    if not wanted:
        return {}
    if data.is_image:
        from .metrics import InceptionFeatures

        real = _real_inception_features(data, progress, cache_dir, world)
        extractor = InceptionFeatures()
        fake = sharded_features(extractor, samples, world, batch_size=extractor.batch_size, progress=progress)
        space = "inception"
    else:
        real, fake = data.x.flatten(1).double().numpy(), samples.flatten(1).double().numpy()
        space = "raw coordinates"
    info = {"features": space, "n_samples": int(fake.shape[0]), "n_real": int(real.shape[0])}
    out: dict[str, MetricResult] = {}
    if "fid" in wanted:
        out["fid"] = MetricResult(frechet_distance_from_features(fake, real), details=info)
    if "kid" in wanted:
        kid = kernel_inception_distance(fake, real, num_subsets=100, subset_size=1000, seed=seed)
        whole = min(fake.shape[0], real.shape[0]) <= 1000  # every subset is the whole set: no spread to report
        out["kid"] = MetricResult(kid.mean, std_error=None if whole else kid.std,
                                  details={**info, "std_is": "spread over 100 subsets of 1000"})
    if "pr" in wanted:
        k = min(3, fake.shape[0] - 1, real.shape[0] - 1)
        pr = precision_recall(real, fake, k=k)
        out["precision"] = MetricResult(pr.precision, details={**info, "k": k})
        out["recall"] = MetricResult(pr.recall, details={**info, "k": k})
    return out


def classifier_metrics(samples: Tensor, data: RealData, metrics: Sequence[str], *, progress: bool = True,
                       cache_dir: str | Path | None = None) -> dict[str, MetricResult]:
    """``cfd`` and ``is`` of ``samples`` with the library's classifier for ``data.dataset``."""
    from .metrics import classifier_features, inception_score
    from .metrics.classifier import classifier_frechet_distance

    wanted = [m for m in metrics if m in ("cfd", "is")]
    if not wanted:
        return {}
    key = CLASSIFIER_DATASETS[data.dataset]
    out: dict[str, MetricResult] = {}
    info = {"classifier": key, "n_samples": int(samples.shape[0])}
    if "cfd" in wanted:
        value = classifier_frechet_distance(samples, key, real=data.x, cache_dir=cache_dir)
        out["cfd"] = MetricResult(value, details={**info, "n_real": int(data.x.shape[0])})
    if "is" in wanted:
        clf = classifier_features(key, cache_dir, progress=progress)
        with torch.no_grad():
            logits = clf.logits(samples.float())
        splits = min(10, samples.shape[0])
        score = inception_score(logits, splits=splits)
        out["is"] = MetricResult(score.mean, std_error=score.std,
                                 details={**info, "splits": splits, "std_is": "spread over splits"})
    return out


def sliced_wasserstein_metric(samples: Tensor, data: RealData, *, seed: int = 0) -> dict[str, MetricResult]:
    """``sw``: sliced 2-Wasserstein distance between flattened samples and reference items."""
    from .metrics import sliced_wasserstein

    value = sliced_wasserstein(samples.flatten(1), data.x.flatten(1), num_projections=256, seed=seed)
    return {"sw": MetricResult(value, details={"projections": 256, "n_samples": int(samples.shape[0]),
                                               "n_real": int(data.x.shape[0])})}


# ------------------------------------------------------------------------------------------ likelihood
def _lattice_range(levels: int) -> tuple[float, float, float]:
    """(n_bits, low, high) of L bins of width 2 / (L - 1) centred on 2 k / (L - 1) - 1."""
    half = 1.0 / (levels - 1)
    return math.log2(levels), -1.0 - half, 1.0 + half


def _mean_and_se(values: Tensor) -> tuple[float, float]:
    v = values.double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan
    return float(v.mean()), se


def _batches(n: int, batch: int, desc: str, progress: bool) -> list[tuple[int, slice]]:
    starts = list(range(0, n, batch))
    return list(enumerate(progress_bar([slice(s, min(s + batch, n)) for s in starts], desc=desc, unit="batch",
                                       enabled=progress, leave=False)))


def nll_metric(
    denoiser: Denoiser,
    data: RealData,
    *,
    cond: Tensor | None = None,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
    **ode_options: Any,
) -> dict[str, MetricResult]:
    """``nll``: mean ODE bits/dim (lattice data, uniform dequantization) or nats/dim (continuous data).

    ``ode_options`` go to :func:`diffusekit.likelihood.ode_log_likelihood` (``method``, ``rtol``,
    ``probes``, ``t_eps``, ...) on top of :data:`NLL_DEFAULTS`. Batches of ``batch`` items use probe/dequantization seeds
    ``seed + j``, so every item has its own draws.
    """
    check_positive_int("batch", batch)
    ode_options = {**NLL_DEFAULTS, **ode_options}
    x = data.x
    d = x[0].numel()
    per_item, results = [], []
    for j, sl in _batches(x.shape[0], batch, "nll", progress):
        c = None if cond is None else cond[sl]

        def log_prob(xx: Tensor, c: Tensor | None = c, j: int = j) -> Tensor:
            res = ode_log_likelihood(denoiser, xx.to(x.dtype), cond=c, seed=seed + j, **ode_options)
            results.append(res)
            return res.log_p

        if data.levels is not None:
            n_bits, low, high = _lattice_range(data.levels)
            k = ((x[sl].double() + 1.0) * (data.levels - 1) / 2.0).round()
            per_item.append(dequantized_bits_per_dim(log_prob, k, n_bits=n_bits, low=low, high=high, seed=seed + j,
                                                     dtype=x.dtype).bits_per_dim)
        else:
            per_item.append(-log_prob(x[sl]) / d)
    values = torch.cat(per_item)
    mean, se = _mean_and_se(values)
    hse = torch.cat([r.std_error for r in results])
    details = {
        "n": int(values.numel()), "data": f"{data.dataset} {data.source}", "held_out": data.held_out,
        "t_eps": results[0].t_eps, "nfe_per_batch": [r.nfe for r in results], "vjps_per_batch": [r.vjps for r in results],
        "mean_hutchinson_se_per_item": float(hse.mean()) if bool(hse.isfinite().all()) else None,
        **{k: v for k, v in ode_options.items() if isinstance(v, (int, float, str))},
    }
    if data.levels is not None:
        details["dequantization"] = f"uniform, {data.levels} bins centred on the data lattice"
        return {"nll": MetricResult(mean, "bits/dim", se, details)}
    return {"nll": MetricResult(mean, "nats/dim", se, details)}


def vlb_metric(
    denoiser: Denoiser,
    data: RealData,
    *,
    cond: Tensor | None = None,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
    nodes: int = 64,
    variance: str | ReverseVariance | None = None,
    times: Tensor | None = None,
) -> dict[str, MetricResult]:
    """``vlb``: mean discrete (DDPM) or continuous (VDM) bound in bits/dim (lattice data) or nats/dim.

    On a ``DiscreteSchedule`` it is the bound of the ancestral sampler with the reverse ``variance``
    (default 'small') on the increasing ``times`` of a K-step sub-trajectory (default: every step).
    """
    check_positive_int("batch", batch)
    x = data.x
    d = x[0].numel()
    discrete = isinstance(denoiser.schedule, DiscreteSchedule)
    if not discrete and (variance is not None or times is not None):
        raise ValueError("a reverse variance or trajectory of the bound needs a discrete (DDPM) schedule; this "
                         f"run's is {type(denoiser.schedule).__name__}")
    rule = make_variance(variance or "small")
    if data.levels is not None:
        lattice: dict[str, Any] = {"decoder": "discretized", "n_bits": math.log2(data.levels)}
    elif discrete:  # continuous data: the width of q(x_1 | x0) in x0, or the rule's own decoder variance (learned:
        # interpolated from 'clipped', as in training)
        own = hasattr(rule, "decoder_var")
        lattice = {"decoder": "gaussian", "decoder_variance": "clipped" if own else "likelihood"}
    else:
        lattice = {}
    per_item, calls = [], 0
    for j, sl in _batches(x.shape[0], batch, "vlb", progress):
        c = None if cond is None else cond[sl]
        if discrete:
            res = discrete_vlb(denoiser, x[sl], cond=c, seed=seed + j, variance=rule, times=times, **lattice)
        else:
            res = continuous_vlb(denoiser, x[sl], cond=c, seed=seed + j, nodes=nodes, **lattice)
        per_item.append(res.total / d)
        calls += res.nfe
    nats = torch.cat(per_item)
    values = nats / LN2 if data.levels is not None else nats
    mean, se = _mean_and_se(values)
    details = {"n": int(values.numel()), "data": f"{data.dataset} {data.source}", "held_out": data.held_out,
               "bound": "discrete (Ho et al. 2020 eq. 5)" if discrete else f"continuous (VDM eq. 17, {nodes} nodes)",
               "batched_model_calls": calls}
    if data.levels is not None:
        details["decoder"] = f"discretized Gaussian on {data.levels} levels"
        return {"vlb": MetricResult(mean, "bits/dim", se, details)}
    return {"vlb": MetricResult(mean, "nats/dim", se, details)}


def run_vlb_metric(
    run: LoadedRun,
    run_dir: str | Path,
    data: RealData,
    *,
    variance: str | None = None,
    trajectory: str | None = None,
    k: int | None = None,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, MetricResult]:
    """``vlb`` of a run folder, for ``eval --metrics vlb`` and ``eval --vlb`` alike: the bound of its DDPM sampler
    with the reverse ``variance`` by name (default :func:`run_variances.default_variance`: the run's learned
    variance if it has a variance head, else 'small') on a K-step ``trajectory`` (even, quadratic, dp; K = ``k``,
    default the run's sampling steps); without ``variance``, ``trajectory`` and ``k``, on every training step
    (and VDM's continuous bound on a continuous schedule)."""
    cond = data.labels if run.config.data.labels else None
    asked = variance is not None or trajectory is not None or k is not None
    if not isinstance(run.denoiser.schedule, DiscreteSchedule) and not asked:
        return vlb_metric(run.denoiser, data, cond=cond, batch=batch, seed=seed, progress=progress)
    name = variance or default_variance(run)
    rule = run_variance(run, run_dir, name)
    idx = None
    if trajectory is not None or k is not None:
        idx = run_trajectory(run, run_dir, trajectory or "even", k or run.config.sampling.nfe)
    times = None if idx is None else trajectory_times(run.denoiser.schedule, idx)
    out = vlb_metric(run.denoiser, data, cond=cond, batch=batch, seed=seed, progress=progress, variance=rule,
                     times=times)
    steps = run.denoiser.schedule.num_steps if idx is None else int(idx.numel())
    out["vlb"].details.update(variance=name, trajectory="every step" if idx is None else trajectory or "even",
                              K=steps, **({} if idx is None else {"steps": idx.tolist()}))
    return out


def vlb_command(run_dir: str, variance: str | None, trajectory: str | None, k: int | None, n: int, seed: int,
                batch: int, out: str | None, progress: bool = True) -> str:
    """The body of `diffusekit eval RUN --vlb`: :func:`run_vlb_metric` alone (``k`` without ``trajectory``: the even
    K-step trajectory) written as JSON (default RUN_DIR/vlb.json); returns a line."""
    from .files import atomic_write_text

    path = Path(out or Path(run_dir) / "vlb.json")
    if path.suffix.lower() != ".json" or path.is_dir():
        raise ValueError(f"--out {path}: allowed a file name ending in .json")
    check_bound_setting(variance, trajectory)
    run = load_run(run_dir)
    data = real_data(run, n, seed)
    m = run_vlb_metric(run, run_dir, data, variance=variance, trajectory=trajectory or ("even" if k else None), k=k,
                       batch=batch, seed=seed, progress=progress)["vlb"]
    dt = m.details
    result = {"variance": dt.get("variance"), "trajectory": dt.get("trajectory"), "K": dt.get("K"), "eta": 1.0,
              "n": dt["n"], "bound": m.value, "std_error": None if not math.isfinite(m.std_error) else m.std_error,
              "unit": m.unit, "data": dt["data"], **({"steps": dt["steps"]} if "steps" in dt else {})}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    se = f" +- {result['std_error']:.4f}" if result["std_error"] is not None else ""
    setting = (f"{result['variance']} variance, {result['trajectory']} trajectory, K = {result['K']}"
               if result["variance"] else dt["bound"])
    return f"bound {m.value:.4f}{se} {m.unit} ({setting}, {dt['n']} items of {dt['data']}) -> {path}"


# ------------------------------------------------------------------------------------------ the whole run
def evaluate_run(
    run_dir: str | Path,
    metrics: str | Sequence[str] | None = None,
    *,
    n: int = 500,
    solver: str | None = None,
    nfe: int | None = None,
    seed: int = 0,
    batch: int = 64,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    nll_options: dict[str, Any] | None = None,
    world: World | None = None,
    variance: str | None = None,
    trajectory: str | None = None,
) -> dict[str, Any]:
    """Sample ``n`` items from the run in ``run_dir`` and compute ``metrics`` against its real data.

    ``metrics`` is a comma list or sequence of :data:`METRICS` (default: :func:`default_metrics`);
    ``solver`` / ``nfe`` default to the run's sampling config. Sample-quality metrics are
    skipped from sampling when only ``nll`` / ``vlb`` are asked. ``vlb`` is the bound of the DDPM sampler with
    ``variance`` on the ``nfe``-step ``trajectory`` when given (:func:`run_vlb_metric`). Returns a JSON-ready
    dict (complete on rank 0 of a ``world`` of several processes; the other ranks skip ``nll`` and ``vlb``).
    """
    check_positive_int("n", n)
    world = world or World()
    run = load_run(run_dir)
    data = real_data(run, n, seed)
    names = default_metrics(data) if metrics is None else parse_metrics(metrics, data)
    if (variance is not None or trajectory is not None) and "vlb" not in names:
        raise ValueError("--variance and --trajectory choose the sampler of the bound; allowed: with vlb among the "
                         f"metrics (asked: {', '.join(names)})")
    check_bound_setting(variance, trajectory)
    grid = run.config.sampling.grid if solver is None else None  # a run's own grid goes with its own solver
    solver = solver or run.config.sampling.solver
    nfe = nfe or run.config.sampling.nfe
    num_classes = run.info.num_classes if run.config.data.labels else None
    result: dict[str, Any] = {
        "run": str(run_dir), "checkpoint_step": run.meta.get("step"), "metrics_requested": names,
        "data": {"dataset": data.dataset, "source": data.source, "held_out": data.held_out, "n": int(data.x.shape[0]),
                 "shape": list(run.info.data_shape), "levels": data.levels},
        "metrics": {},
    }
    out: dict[str, MetricResult] = {}
    if any(m in names for m in ("fid", "kid", "pr", "cfd", "is", "sw")):
        start = time.perf_counter()
        cond = torch.arange(n) % num_classes if num_classes else None
        sol = sample_denoiser(run.denoiser.to(world.device), run.info, solver, nfe, n, seed=seed, grid=grid,
                              cond=cond, progress=progress, world=world)
        run.denoiser.cpu()  # the likelihoods run on rank 0's CPU, with the data
        samples = sol.x.detach().float().cpu()
        samples = samples.clamp(-1, 1) if data.is_image else samples
        result["sampling"] = {"solver": solver, "nfe": sol.nfe, "n": n, "seed": seed,
                              "seconds": round(time.perf_counter() - start, 2)}
        out.update(feature_metrics(samples, data, names, seed=seed, progress=progress, cache_dir=cache_dir,
                                   world=world))
        out.update(classifier_metrics(samples, data, names, progress=progress, cache_dir=cache_dir))
        if "sw" in names:
            out.update(sliced_wasserstein_metric(samples, data, seed=seed))
    real_cond = data.labels if num_classes else None
    if not world.is_main:
        names = [m for m in names if m not in ("nll", "vlb")]
    if "nll" in names:
        start = time.perf_counter()
        out.update(nll_metric(run.denoiser, data, cond=real_cond, batch=batch, seed=seed, progress=progress,
                              **(nll_options or {})))
        out["nll"].details["seconds"] = round(time.perf_counter() - start, 2)
    if "vlb" in names:
        start = time.perf_counter()
        out.update(run_vlb_metric(run, run_dir, data, variance=variance, trajectory=trajectory,
                                  k=nfe if trajectory is not None else None, batch=batch, seed=seed, progress=progress))
        out["vlb"].details["seconds"] = round(time.perf_counter() - start, 2)
    result["metrics"] = {k: asdict(v) for k, v in out.items()}
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate_run``'s metrics: name, value, +-, unit, note."""
    rows = [("metric", "value", "+-", "unit", "note")]
    for name, m in result["metrics"].items():
        se = m["std_error"]
        note = m["details"].get("features") or m["details"].get("data") or m["details"].get("classifier") or ""
        rows.append((name, f"{m['value']:.5g}", "" if se is None or not math.isfinite(se) else f"{se:.2g}",
                     m["unit"], str(note)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = [
    "CLASSIFIER_DATASETS", "METRICS", "MetricResult", "NLL_DEFAULTS", "RealData", "classifier_metrics", "default_metrics",
    "evaluate_run", "feature_metrics", "format_table", "nll_metric", "parse_metrics", "real_data", "sharded_features",
    "run_vlb_metric", "sliced_wasserstein_metric", "vlb_command", "vlb_metric", "why_not_applicable",
]
