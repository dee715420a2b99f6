"""Frozen configuration of the evaluation (``configs/eval/default.yaml``); reading files is the pipeline's job."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from typing import Any

from flowlet.data.config import convert_value

__all__ = ["AtlasConfig", "EvalConfig", "PrivacyConfig", "QualityConfig", "SegmentationConfig"]


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
        """Build from a nested mapping; unknown keys raise ``ValueError`` naming ``source`` and the key."""
        sections = {
            "atlas": AtlasConfig,
            "segmentation": SegmentationConfig,
            "quality": QualityConfig,
            "privacy": PrivacyConfig,
        }
        kwargs = _known(cls, raw, source)
        for name, sub in sections.items():
            if name in kwargs:
                if not isinstance(kwargs[name], dict):
                    raise ValueError(
                        f"{source}: '{name}' must be a mapping, got {type(kwargs[name]).__name__}"
                    )
                kwargs[name] = sub(**_known(sub, kwargs[name], f"{source}:{name}"))
        if "combined_regions" in kwargs:
            kwargs["combined_regions"] = {
                str(k): tuple(map(str, v)) for k, v in kwargs["combined_regions"].items()
            }
        if "key_regions" in kwargs:
            pairs = [tuple(map(str, p)) for p in kwargs["key_regions"]]
            bad = [p for p in pairs if len(p) != 2]
            if bad:
                raise ValueError(f"{source}: key_regions entries must be [region, tissue] pairs; got {bad}")
            kwargs["key_regions"] = tuple(pairs)
        if "age_bins" in kwargs:
            bins = tuple(float(b) for b in kwargs["age_bins"])
            if any(b >= c for b, c in itertools.pairwise(bins)):
                raise ValueError(f"{source}: age_bins must increase strictly; got {list(bins)}")
            kwargs["age_bins"] = bins
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples), ready for ``yaml.safe_dump``."""

        def plain(value: Any) -> Any:
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            return value

        return plain(self)


def _known(cls: type, raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Check keys and simple types (numbers, strings, booleans) of one section; nested ones are checked by the caller."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    simple = {k: v for k, v in raw.items() if hints[k] in (int, float, bool, str)}
    for key, value in simple.items():
        convert_value(value, hints[key], f"{source}: {key}")
    return dict(raw)
