"""K-step sub-trajectories 1 = tau_1 < ... < tau_K = N of the N training steps: even, quadratic, and
the one that minimises the bound (Bao et al. 2022a, sec. 4, "optimal trajectory" by dynamic programming).

With Analytic-DPM's variance the expected KL of a step tau_{k-1} = s < t = tau_k depends on (s, t)
only, through the estimated E||eps - eps_hat(x_t)||^2 / d = m_t (``NoiseMoments``): with
lambda^2 = eta^2 beta tilde_{t|s}, gain = ``eps_gain`` and sigma^2 the clamped optimal variance,

    cost(s, t) = d/2 [log(sigma^2 / lambda^2) + (lambda^2 + gain^2 m_t) / sigma^2 - 1]

(= d/2 log(1 + gain^2 m_t / lambda^2) without the clamp). The prior term (at N) and the decoder
(at 1) are the same for every trajectory, so the bound's best K-step trajectory is the shortest
K-node path from 1 to N in the (N, N) cost matrix: O(K N^2) by dynamic programming, each of the K
rounds one vectorised (N, N) min. Every m_t is a positive mean of squares (never a 1 - Gamma_t
that Monte-Carlo noise can push to or below 0), so no step is ever priced at a spurious zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules.base import NoiseSchedule
from ..schedules.grids import Grid
from ..stepping import Step
from ..utils import check_positive_int
from ..variances import check_eta, clamp_eps_var, eps_gain, eta_var
from .analytic import NoiseMoments, schedule_times

TRAJECTORIES = ("even", "quadratic", "dp")

_DP_CACHE: dict[tuple, Tensor] = {}


def _check_k(k: int, n: int) -> None:
    check_positive_int("K", k)
    if k > n:
        raise ValueError(f"K = {k} steps exceed the {n} candidate times")


def even_trajectory(n: int, k: int) -> Tensor:
    """Indices 1..N (long, increasing) evenly spaced, tau_1 = 1 and tau_K = N (K = 1: N alone)."""
    _check_k(k, n)
    if k == 1:
        return torch.tensor([n])
    return torch.linspace(1, n, k, dtype=torch.float64).round().long()


def quadratic_trajectory(n: int, k: int) -> Tensor:
    """Indices 1 + (N - 1) (i / (K - 1))^2, dense near the data (Song et al. 2021, DDIM, sec. D.2),
    pushed apart where rounding would repeat one."""
    _check_k(k, n)
    if k == 1:
        return torch.tensor([n])
    i = torch.arange(k)
    idx = (1 + (n - 1) * (i / (k - 1)) ** 2).round().long()
    return torch.cummax(idx - i, 0).values + i  # strictly increasing, still ending at N (idx - i <= N - K)


def step_costs(moments: NoiseMoments, schedule: NoiseSchedule, eta: float = 1.0) -> Tensor:
    """The (N, N) expected KL per dimension of the step s -> t (row s, column t; +inf unless s < t) over
    the moments' times, with Analytic-DPM's clamped optimal variance for ``eta`` (> 0)."""
    eta = check_eta(eta)
    if eta == 0:
        raise ValueError("a deterministic step (eta = 0) has no finite bound; allowed: eta > 0")
    t = torch.tensor(moments.times, dtype=torch.float64)
    a, s = schedule.alpha_sigma(t)
    m = torch.tensor(moments.residual, dtype=torch.float64)
    n = t.numel()
    lo = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)  # s < t
    si, ti = lo.nonzero(as_tuple=True)
    step = Step(0, t[ti], t[si], a[ti], s[ti], a[si], s[si], None)
    lam2 = eta_var(step, eta)
    gain2 = eps_gain(step, eta) ** 2
    var = lam2 + gain2 * clamp_eps_var(m[ti], a[ti], s[ti], moments.data_var)  # variances.eps_cov_var, lam2 and gain2 reused
    cost = torch.full((n, n), torch.inf, dtype=torch.float64)
    cost[si, ti] = 0.5 * (torch.log(var / lam2) + (lam2 + gain2 * m[ti]) / var - 1.0)
    return cost


def trajectory_cost(costs: Tensor, idx: Tensor) -> float:
    """The summed step cost of a trajectory of 1-based indices."""
    i = idx.long() - 1
    return float(costs[i[:-1], i[1:]].sum())


def dp_trajectory(moments: NoiseMoments, schedule: NoiseSchedule, k: int, eta: float = 1.0) -> Tensor:
    """The K-node trajectory 1 = tau_1 < ... < tau_K = N of least bound (Bao et al. 2022a, sec. 4),
    by dynamic programming on ``step_costs``; cached per (moments, schedule, eta, K)."""
    n = len(moments.times)
    _check_k(k, n)
    a = schedule.alpha_sigma(torch.tensor(moments.times, dtype=torch.float64))[0]
    key = (moments.key, eta, k, tuple(a.tolist()))
    if key in _DP_CACHE:
        return _DP_CACHE[key].clone()
    if k == 1:
        return torch.tensor([n])
    costs = step_costs(moments, schedule, eta)
    best = torch.full((n,), torch.inf, dtype=torch.float64)
    best[0] = 0.0  # one node: index 1
    back = torch.zeros(k, n, dtype=torch.long)
    for j in range(1, k):  # best[t] = min_s best_prev[s] + cost[s, t] with j + 1 nodes
        total = best[:, None] + costs
        best, back[j] = total.min(0)
    idx = [n - 1]
    for j in range(k - 1, 0, -1):
        idx.append(int(back[j, idx[-1]]))
    out = torch.tensor(idx[::-1]) + 1
    if len(_DP_CACHE) >= 256:
        _DP_CACHE.clear()
    _DP_CACHE[key] = out
    return out.clone()


def make_trajectory(name: str, schedule: NoiseSchedule, k: int, *, moments: NoiseMoments | None = None,
                    eta: float = 1.0) -> Tensor:
    """1-based indices into the candidate times by rule name: 'even', 'quadratic' or 'dp' (needs ``moments``).

    A deterministic sampler (eta = 0) has no finite bound; its 'dp' trajectory is the DDPM one (eta = 1).
    """
    if name not in TRAJECTORIES:
        raise ValueError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {name!r}")
    n = len(moments.times) if moments is not None else schedule_times(schedule).numel()
    if name == "even":
        return even_trajectory(n, k)
    if name == "quadratic":
        return quadratic_trajectory(n, k)
    if moments is None:
        raise ValueError("the 'dp' trajectory needs the noise moments (Analytic-DPM's estimate) of the model")
    return dp_trajectory(moments, schedule, k, 1.0 if eta == 0 else eta)


def trajectory_times(schedule: NoiseSchedule, idx: Tensor, moments: NoiseMoments | None = None) -> Tensor:
    """The increasing times t_{tau_1} < ... < t_{tau_K} of a trajectory (for ``discrete_vlb(times=...)``)."""
    t = torch.tensor(moments.times, dtype=torch.float64) if moments is not None else schedule_times(schedule)
    return t[idx.long() - 1]


def trajectory_grid(schedule: NoiseSchedule, idx: Tensor, moments: NoiseMoments | None = None) -> Grid:
    """The sampling grid of a trajectory: its times from t_{tau_K} down to t_{tau_1}, then clean data."""
    return Grid.from_times(schedule, trajectory_times(schedule, idx, moments).flip(0), to_zero=True)
