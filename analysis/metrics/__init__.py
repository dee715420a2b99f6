"""Pure metric functions on arrays and tidy DataFrames (no file I/O, no logging side effects).

Submodules: :mod:`.trajectory` (age slopes), :mod:`.distances` (W1/KS, MMD, Fréchet), :mod:`.roi` (the paper's
region metrics, corrected), :mod:`.image` (MS-SSIM, fixed features), :mod:`.privacy` (memorisation audit).
"""

from analysis.metrics.distances import age_matched_distances, frechet_distance, mmd
from analysis.metrics.image import (
    FEATURE_NAMES,
    handcrafted_features,
    ms_ssim,
    ms_ssim_diversity,
    percentile_to_unit,
    standardise_features,
)
from analysis.metrics.privacy import PrivacyAudit, memorisation_audit, nearest_neighbours
from analysis.metrics.roi import dice, histogram_kl, match_by_age, roi_pair_metrics, summarise_roi
from analysis.metrics.trajectory import age_slopes, linear_fit, trajectory_fidelity

__all__ = [
    "FEATURE_NAMES",
    "PrivacyAudit",
    "age_matched_distances",
    "age_slopes",
    "dice",
    "frechet_distance",
    "handcrafted_features",
    "histogram_kl",
    "linear_fit",
    "match_by_age",
    "memorisation_audit",
    "mmd",
    "ms_ssim",
    "ms_ssim_diversity",
    "nearest_neighbours",
    "percentile_to_unit",
    "roi_pair_metrics",
    "standardise_features",
    "summarise_roi",
    "trajectory_fidelity",
]
