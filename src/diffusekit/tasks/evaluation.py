"""How close samples are to the exact posterior of the oracle (``MixturePosterior``).

The numbers of the inverse-problem table (benchmarks/RESULTS.md, "Inverse problems"):

- log-density gap: mean log p(x | y) of the samples minus that of exact posterior draws
  (0 in expectation for exact samples; negative when samples leave the posterior's mass,
  positive when they collapse onto its modes);
- mode-weight error: total variation between the mean responsibilities p(k | x, y) of the
  samples and the posterior mode weights (mean responsibilities of exact draws equal the
  weights in expectation);
- spread: sqrt(trace Cov[x]) of the samples over that of the posterior (1 is right);
- mean error: |mean(x) - E[x0 | y]| / sqrt(trace Cov[x0 | y]).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..oracle import MixturePosterior


class PosteriorReport(NamedTuple):
    log_density_gap: float
    log_density_se: float  # its Monte-Carlo standard error (samples and reference)
    mode_weight_error: float
    spread: float
    mean_error: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return self._asdict()


def compare_to_posterior(posterior: MixturePosterior, x: Tensor, reference: Tensor | None = None, seed: int = 0) -> PosteriorReport:
    """Compare samples ``x`` (n, ...) with ``posterior``; ``reference``: exact draws (default 100,000)."""
    x = x.double().flatten(1).to(posterior.means.device)
    ref = posterior.sample(100_000, seed=seed + 1) if reference is None else reference.double().flatten(1)
    lp, lp_ref = posterior.log_prob(x), posterior.log_prob(ref)
    se = (lp.var() / lp.numel() + lp_ref.var() / lp_ref.numel()).sqrt()
    weights = posterior.responsibilities(x).mean(0)
    total = posterior.covariance().trace().sqrt()
    spread = x.var(0).sum().sqrt() / total
    mean_err = (x.mean(0) - posterior.mean()).norm() / total
    return PosteriorReport(
        float(lp.mean() - lp_ref.mean()),
        float(se),
        float(0.5 * (weights - posterior.weights).abs().sum()),
        float(spread),
        float(mean_err),
        x.shape[0],
    )
