"""Frozen configuration of the evaluation (``configs/eval/default.yaml``); reading files is the pipeline's job."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from flowlet.data.config import build_section, to_plain

__all__ = [
    "VOLUME_MODES",
    "AtlasConfig",
    "EvalConfig",
    "PrivacyConfig",
    "QualityConfig",
    "SegmentationConfig",
]

#: How a voxel's tissue adds to a volume (``segmentation.volumes``, ``RegionVolumetrics(volumes=...)``).
VOLUME_MODES: tuple[str, ...] = ("fractions", "labels", "pve")


@dataclass(frozen=True)
class AtlasConfig:
    name: str = "harvard-oxford"
    image: str | None = None
    table: str | None = None
    threshold: float = 25.0


@dataclass(frozen=True)
class SegmentationConfig:
    method: str = "gmm"
    prior_weight: float = 1.0
    n_iter: int = 8
    prior_floor: float = 0.05
    margin_mm: float = 8.0
    #: ``fractions`` (partial-volume sums), ``labels`` (voxel counts of the most likely tissue) or ``pve``
    #: (linear partial-volume fractions of mixed voxels, an experiment), see
    #: :class:`analysis.volumetrics.RegionVolumetrics`.
    volumes: str = "fractions"


@dataclass(frozen=True)
class QualityConfig:
    alpha: float = 0.05
    max_age_gap: float | None = None
    histogram_bins: int = 256
    diversity_pairs: int = 100


@dataclass(frozen=True)
class PrivacyConfig:
    quantile: float = 0.99


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``flowlet-eval`` needs; nested sections mirror the YAML file."""

    atlas: AtlasConfig = field(default_factory=AtlasConfig)
    voxel_size: float = 2.0
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    combined_regions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    key_regions: tuple[tuple[str, str], ...] = ()
    age_bins: tuple[float, ...] = (0, 20, 30, 40, 50, 60, 70, 80, 120)
    quality: QualityConfig = field(default_factory=QualityConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> EvalConfig:
        """Build from a nested mapping; unknown keys and wrong types raise ``ValueError`` naming ``source`` and the
        dotted key (:func:`flowlet.data.config.build_section`)."""
        config = build_section(cls, raw, source)
        regions = {str(k): tuple(map(str, v)) for k, v in config.combined_regions.items()}
        config = dataclasses.replace(config, combined_regions=regions)
        if any(b >= c for b, c in itertools.pairwise(config.age_bins)):
            raise ValueError(f"{source}: age_bins must increase strictly; got {list(config.age_bins)}")
        _check_ranges(config, source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples), ready for ``yaml.safe_dump``."""
        return to_plain(self)


#: Accepted range of each numeric setting: (low, high, low excluded).
_RANGES: dict[str, tuple[float, float, bool]] = {
    "voxel_size": (0.5, 8, False),
    "atlas.threshold": (0, 100, False),
    "segmentation.prior_weight": (0, 100, False),
    "segmentation.n_iter": (1, 1000, False),
    "segmentation.prior_floor": (0, 1, False),
    "segmentation.margin_mm": (0, 100, False),
    "quality.alpha": (0, 1, True),
    "quality.histogram_bins": (2, 100_000, False),
    "quality.diversity_pairs": (1, 1_000_000, False),
    "privacy.quantile": (0, 1, True),
    "seed": (0, 2**32 - 1, False),
}


def _check_ranges(config: EvalConfig, source: str) -> None:
    """Refuse a number outside its range (and non-finite ages or age gaps), naming the key and the limits."""
    for key, (low, high, low_open) in _RANGES.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not (low < value if low_open else low <= value) or not value <= high:
            raise ValueError(
                f"{source}: {key} = {value!r}; expected a number in {'(' if low_open else '['}{low:g}, {high:g}]"
            )
    from analysis.segmentation import WITHDRAWN_METHODS
    from flowlet.data.templates import list_atlases

    if config.atlas.image is None and config.atlas.name not in list_atlases():
        raise ValueError(
            f"{source}: atlas.name = {config.atlas.name!r}; expected one of {list_atlases()} (or atlas.image and "
            "atlas.table for a custom atlas)"
        )
    method = config.segmentation.method
    if method in WITHDRAWN_METHODS:
        raise ValueError(
            f"{source}: segmentation.method = {method!r} was withdrawn: {WITHDRAWN_METHODS[method]}"
        )
    if method != "gmm":
        raise ValueError(f"{source}: segmentation.method = {method!r}; expected 'gmm'")
    if config.segmentation.volumes not in VOLUME_MODES:
        *first, last = map(repr, VOLUME_MODES)
        raise ValueError(
            f"{source}: segmentation.volumes = {config.segmentation.volumes!r}; expected {', '.join(first)} or {last}"
        )
    if not all(0 <= b <= 120 for b in config.age_bins):
        raise ValueError(f"{source}: age_bins = {list(config.age_bins)}; expected ages in [0, 120] years")
    gap = config.quality.max_age_gap
    if gap is not None and not (isinstance(gap, int | float) and 0 <= gap <= 120):
        raise ValueError(f"{source}: quality.max_age_gap = {gap!r}; expected null or a number in [0, 120]")
