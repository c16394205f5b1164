"""Likelihoods: the probability-flow ODE log-density (exact or Hutchinson divergence, adaptive
quadrature in log-SNR; a k-diffusion-style entry point),
dequantization of n-bit data to bits/dim, and the discrete (DDPM) and continuous (VDM)
variational bounds."""

from .dequantize import (
    DequantizedResult,
    bits_per_dim_from_log_p,
    dequantized_bits_per_dim,
    gaussian_dequantized_bits_per_dim,
    log_jacobian,
    scale_to_data,
    uniform_dequantize,
)
from .ode import LikelihoodResult, ode_log_likelihood
from .ve import ode_log_likelihood_ve
from .vlb import (
    VLBResult,
    continuous_vlb,
    discrete_vlb,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    prior_kl,
)

__all__ = [
    "DequantizedResult", "LikelihoodResult", "VLBResult", "bits_per_dim_from_log_p", "continuous_vlb",
    "dequantized_bits_per_dim", "discrete_vlb", "discretized_gaussian_log_likelihood", "gaussian_dequantized_bits_per_dim",
    "gaussian_kl", "log_jacobian", "ode_log_likelihood", "ode_log_likelihood_ve", "prior_kl", "scale_to_data", "uniform_dequantize",
]
