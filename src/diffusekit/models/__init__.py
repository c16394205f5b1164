"""Denoising networks: ``net(x, c_noise, cond=None) -> Tensor`` of x's shape."""

from diffusekit.models.embeddings import (
    ClassEmbedding,
    GaussianFourierEmbedding,
    NoiseEmbedding,
    SinusoidalEmbedding,
    VectorEmbedding,
)
from diffusekit.models.mlp import MLP
from diffusekit.models.presets import (
    PRESET_NAMES,
    count_parameters,
    levels_for_image_size,
    levels_for_resolutions,
    mlp_preset,
    unet_preset,
)
from diffusekit.models.unet import UNet

__all__ = [
    "MLP",
    "UNet",
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "NoiseEmbedding",
    "ClassEmbedding",
    "VectorEmbedding",
    "PRESET_NAMES",
    "unet_preset",
    "mlp_preset",
    "count_parameters",
    "levels_for_image_size",
    "levels_for_resolutions",
]
