"""Pseudoinverse-guided diffusion (PiGDM, Song, Vahdat, Mardani & Kautz 2023, ICLR), with any solver.

PiGDM takes p(x0 | x_t) ~ N(x0_hat, r_t^2 I), so that p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + s^2 I)
for y = A x0 + N(0, s^2 I), and adds the gradient of its log to the score (eq. 7-8):

    g = (d x0_hat / d x_t)^T A^T (r_t^2 A A^T + s^2 I)^-1 (y - A x0_hat),

with r_t^2 = v sigma^2 / (v alpha^2 + sigma^2), the posterior variance of x0 for data of variance v
(sec. 3.2, there for v = 1). By Tweedie's formula the guided score shifts the data prediction by
(sigma^2 / alpha) g, which is what the wrapper returns, so every solver sees the guided denoiser.
The vector-Jacobian product runs through the denoiser (one backward pass per model call).

For a Gaussian prior of variance v the approximation is exact (x0_hat is linear in x_t, so
p(y | x_t) is exactly that Gaussian), and PiGDM samples the exact posterior: the test oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Cond, DenoiserLike, DenoiserWrapper
from ..parameterization import Prediction
from ..utils import check_positive_float
from .operators import LinearOperator


def x0_variance(alpha: Tensor, sigma: Tensor, data_var: float) -> Tensor:
    """PiGDM's r_t^2 = v sigma^2 / (v alpha^2 + sigma^2): the variance of x0 given x_t for data of
    variance v (Song et al. 2023, sec. 3.2, there for v = 1)."""
    return data_var * sigma**2 / (data_var * alpha**2 + sigma**2)


class PiGDM(DenoiserWrapper):
    """The PiGDM-guided denoiser: ``sample(PiGDM(denoiser, A, y, noise_std=s), solver, ...)``.

    ``noise_std`` = 0 is the noiseless form (A^+ in place of the regularised inverse).
    ``data_var``: the data's variance v in r_t^2 (1 for data scaled to unit variance).
    """

    def __init__(self, inner: DenoiserLike, operator: LinearOperator, y: Tensor, noise_std: float = 0.0,
                 data_var: float = 1.0) -> None:
        super().__init__(inner)
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0 (the measurement noise's standard deviation), got {noise_std!r}")
        self.operator, self.y, self.noise_var = operator, y, float(noise_std) ** 2
        self.data_var = check_positive_float("data_var", data_var)

    def forward(self, x: Tensor, t: float | Tensor, cond: Cond = None) -> Prediction:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = self.inner(xg, t, cond)
            alpha, sigma = (torch.as_tensor(v, dtype=x.dtype, device=x.device).detach() for v in (pred.alpha, pred.sigma))
            r2 = x0_variance(alpha, sigma, self.data_var)
            resid = self.y.to(device=x.device, dtype=x.dtype) - self.operator(pred.x0.detach())
            v = self.operator.gram_pinv(resid, r2.flatten() if r2.ndim else r2, self.noise_var)
            (g,) = torch.autograd.grad(pred.x0, xg, grad_outputs=v)
        return Prediction(x, alpha, sigma, pred.x0.detach() + sigma**2 / alpha * g)  # alpha, sigma broadcast over x
