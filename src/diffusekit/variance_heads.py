"""SN-DPM and NPR-DPM (Bao et al. 2022b, ICML, "Estimating the optimal covariance with imperfect mean"):
a small head on a frozen eps model gives the optimal diagonal covariance of every reverse step.

With the eta-family mean (``variances``), the optimal diagonal covariance of p(x_s | x_t) is
lambda^2 + gain^2 diag Cov[eps | x_t] for the exact model (eq. 9), and
lambda^2 + gain^2 E[(eps - eps_hat)^2 | x_t] for the model's own, imperfect mean (eq. 12):

- SN-DPM learns h(x_t) = E[eps^2 | x_t] (the noise's second moment, per element) and uses
  Cov[eps | x_t] ~ h - eps_hat^2 (Bao et al. 2022b, eq. 10-11); here h = eps_hat^2 + softplus(net),
  so h >= eps_hat^2 as E[eps^2 | x_t] >= E[eps | x_t]^2, and the net learns the small difference
  rather than the O(1) second moment (which made h - eps_hat^2 noisy at high noise);
- NPR-DPM learns g(x_t) = E[(eps - eps_hat(x_t))^2 | x_t] (the squared noise-prediction
  residual, eq. 12-13), which also absorbs the eps model's error.

Each is trained by regression (``MomentLoss``: mean squared error to eps^2 or (eps - eps_hat)^2,
the conditional mean being the minimiser) with the eps model frozen; for a class-conditional model,
eps_hat is the prediction for each training item's own label (as Analytic-DPM's moments are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .denoiser import Cond, DenoiserLike
from .models.embeddings import SinusoidalEmbedding
from .parameterization import Prediction
from .progress import progress_bar
from .stepping import Number, Step
from .utils import append_dims, check_positive_int
from .variances import VARIANCE_BUILDERS, check_clip, check_eta, clip_first_step, eps_cov_var

HEAD_KINDS = ("sn", "npr")


def check_kind(kind: str) -> str:
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    return kind


class MomentHead(nn.Module):
    """An MLP from (x_t, eps_hat(x_t), log-SNR) to a per-element moment: softplus(net) for NPR,
    eps_hat^2 + softplus(net) for SN.

    ``kind`` 'sn' (E[eps^2 | x_t]) or 'npr' (E[(eps - eps_hat)^2 | x_t]); ``data_shape`` one item's shape.
    """

    def __init__(self, data_shape: Sequence[int], kind: str, width: int = 256, depth: int = 2, emb_dim: int = 32) -> None:
        super().__init__()
        self.kind = check_kind(kind)
        self.data_shape = tuple(int(v) for v in data_shape)
        self.config = {"kind": kind, "width": width, "depth": depth, "emb_dim": emb_dim, "data_shape": list(self.data_shape)}
        check_positive_int("width", width)
        check_positive_int("depth", depth)
        d = int(torch.tensor(self.data_shape).prod())
        self.embed = SinusoidalEmbedding(emb_dim, max_period=100.0)
        layers: list[nn.Module] = [nn.Linear(2 * d + emb_dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, d))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: Tensor, eps_hat: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The moment per element of x_t (any leading dimensions before the data shape); alpha, sigma
        broadcast against x_t."""
        d = self.net[-1].out_features
        dtype = self.net[0].weight.dtype
        lam = (torch.as_tensor(alpha).log() - torch.as_tensor(sigma).log()).to(x_t).expand(x_t.shape).reshape(-1, d)[:, 0]
        feats = torch.cat([x_t.reshape(-1, d).to(dtype), eps_hat.reshape(-1, d).to(dtype), self.embed(lam.to(dtype))], 1)
        out = nn.functional.softplus(self.net(feats)).reshape(x_t.shape).to(x_t.dtype)
        return out if self.kind == "npr" else eps_hat**2 + out

    def eps_cov(self, pred: Prediction) -> Tensor:
        """diag Cov[eps | x_t] (SN: h - eps_hat^2) or E[(eps - eps_hat)^2 | x_t] (NPR)."""
        with torch.no_grad():
            out = self(pred.x_t, pred.eps, pred.alpha, pred.sigma)
        return out if self.kind == "npr" else out - pred.eps**2


@dataclass(frozen=True)
class MomentLoss:
    """Bao et al. 2022b's regression loss: E || head(x_t) - target ||^2 / d with the eps model frozen;
    target eps^2 (SN) or (eps - eps_hat(x_t))^2 (NPR)."""

    kind: str

    def __post_init__(self) -> None:
        check_kind(self.kind)

    def __call__(self, head: MomentHead, denoiser: DenoiserLike, x0: Tensor, t: Tensor, eps: Tensor,
                 cond: Cond = None) -> Tensor:
        alpha, sigma = denoiser.schedule.alpha_sigma(t.double().cpu())
        a, s = (append_dims(v.to(x0), x0.ndim) for v in (alpha, sigma))
        x_t = a * x0 + s * eps
        with torch.no_grad():
            eps_hat = denoiser(x_t, t.to(x0.device), cond).eps
        target = eps**2 if self.kind == "sn" else (eps - eps_hat) ** 2
        return (head(x_t, eps_hat, a, s) - target).pow(2).mean()


def train_head(
    denoiser: DenoiserLike,
    data: Tensor,
    kind: str,
    *,
    steps: int = 2000,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    times: Tensor | None = None,
    head: MomentHead | None = None,
    cond: Tensor | None = None,
    progress: bool = False,
) -> MomentHead:
    """Train an SN or NPR head on a frozen eps model (Adam, cosine-decayed ``lr``), t uniform over
    ``times`` (default: the schedule's knots, ``likelihood.analytic.schedule_times``); ``cond`` one
    label per data item for a class-conditional model (each item predicted with its own label)."""
    from .likelihood.analytic import schedule_times

    check_positive_int("steps", steps)
    check_positive_int("batch", batch)
    if cond is not None and len(cond) != data.shape[0]:
        raise ValueError(f"cond must hold one label per data item ({data.shape[0]}), got {len(cond)}")
    head = MomentHead(data.shape[1:], kind) if head is None else head
    head = head.to(data.device)
    loss_fn = MomentLoss(kind)
    t_all = schedule_times(denoiser.schedule) if times is None else torch.as_tensor(times, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    head.train()
    for _ in progress_bar(range(steps), desc=f"{kind} head", enabled=progress):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        x0 = data[idx]
        t = t_all[torch.randint(0, t_all.numel(), (batch,), generator=gen)]
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0)
        loss = loss_fn(head, denoiser, x0, t, eps, None if cond is None else cond[idx].to(data.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    return head


class HeadVariance:
    """The diagonal optimal covariance lambda^2 + gain^2 Cov[eps | x_t] from an SN or NPR head
    (Bao et al. 2022b, eq. 9-13) for the ancestral sampler (eta = 1) or DDIM with ``eta``.

    ``first_step_clip`` as in ``OptimalVariance``. The decoder p(x0 | x_1) has the diagonal
    variance (sigma_1 / alpha_1)^2 Cov[eps | x_1], Cov floored at ``floor`` so a head's output
    near zero cannot make it singular.
    """

    def __init__(self, head: MomentHead, eta: float = 1.0, first_step_clip: float | None = None,
                 kind: str | None = None, floor: float = 1e-4) -> None:
        if not isinstance(head, MomentHead):
            raise TypeError(f"head must be a MomentHead, got {type(head).__name__}")
        if kind is not None and head.kind != kind:
            raise ValueError(f"variance {kind!r} needs a {kind} head, got a {head.kind} head")
        self.head = head
        self.name = head.kind
        self.eta = check_eta(eta)
        self.first_step_clip = check_clip(first_step_clip)
        self.floor = floor

    def __call__(self, pred: Prediction, step: Step) -> Number:
        return clip_first_step(eps_cov_var(step, self.eta, self.head.eps_cov(pred)), step, self.first_step_clip)

    def decoder_var(self, pred: Prediction, step: Step, clipped: Number | None = None) -> Number:
        """(sigma_1 / alpha_1)^2 Cov[eps | x_1] per element; ``clipped`` (the fixed rules' decoder variance) is not used."""
        return eps_cov_var(step, 0.0, self.head.eps_cov(pred).clamp(min=self.floor))


def _head_variance(kind: str) -> Callable[..., HeadVariance]:
    def build(head: MomentHead, eta: float = 1.0, first_step_clip: float | None = None) -> HeadVariance:
        return HeadVariance(head, eta=eta, first_step_clip=first_step_clip, kind=kind)

    return build


VARIANCE_BUILDERS.update(sn=_head_variance("sn"), npr=_head_variance("npr"))
