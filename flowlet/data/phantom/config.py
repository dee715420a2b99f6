"""Frozen configuration of the ageing phantom and its lifespan curves (read from ``configs/phantom/ageing.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flowlet.data.config import to_plain

__all__ = ["STRUCTURES", "LifespanCurve", "PhantomConfig", "SiteContrast"]

#: Structures whose volume follows a lifespan curve; each drives one deformation source.
STRUCTURES: tuple[str, ...] = ("lateral_ventricles", "grey_matter", "white_matter", "hippocampus")


@dataclass(frozen=True)
class LifespanCurve:
    """Percent volume change per year as a piecewise-linear function of age (constant outside the knots).

    Attributes:
        ages: knot ages in years, increasing.
        rates: percent per year at each knot.
        sources: literature the knots encode.
    """

    ages: tuple[float, ...]
    rates: tuple[float, ...]
    sources: str = ""

    def rate(self, age: float | np.ndarray) -> np.ndarray:
        """Percent volume change per year at ``age``."""
        return np.interp(age, self.ages, self.rates)

    def log_volume(self, age: float, reference_age: float) -> float:
        """``log(V(age) / V(reference_age))``, integrating ``log(1 + rate/100)`` over years."""
        lo, hi = sorted((float(reference_age), float(age)))
        if hi - lo < 1e-9:
            return 0.0
        years = np.linspace(lo, hi, max(2, int(np.ceil((hi - lo) * 4)) + 1))
        per_year = np.log1p(self.rate(years) / 100.0)
        integral = float(np.sum((per_year[1:] + per_year[:-1]) * np.diff(years)) / 2)
        return integral if age >= reference_age else -integral


@dataclass(frozen=True)
class SiteContrast:
    """Tissue means and global gain of one acquisition site."""

    name: str
    csf: float
    gm: float
    wm: float
    gain: float = 1.0


def _default_yaml() -> Path:
    from configs import config_path

    return config_path("phantom", "ageing")


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that shapes a phantom subject except age, sex, site and seed.

    Build it with :meth:`from_yaml` (the packaged ``configs/phantom/ageing.yaml`` by default);
    ``dataclasses.replace`` changes single fields.

    Attributes:
        voxel_size: 2 (official 91×109×91 grid) or 4 mm (fast demos).
        reference_age: age of the template anatomy.
        curves: lifespan curve per structure in :data:`STRUCTURES`.
        realisation_gain: multiplier on each commanded log-volume change (calibrated, see the YAML).
        rate_sd: SD of the per-subject factor on each curve.
        baseline_sd: age-independent log-volume SD per structure.
        head_size_sd: SD of the log intracranial-volume factor.
        sex_volume_offset: log ICV difference male − female.
        warp_mm, warp_smoothness_mm: RMS and Gaussian width of the random smooth displacement.
        contrast_sd: per-subject jitter of tissue means.
        noise_kind, noise_sd: ``"rician"`` or ``"gaussian"`` noise, SD relative to WM intensity.
        bias_amplitude, bias_smoothness_mm: SD and width of the log bias field.
        sites: contrast per site.
    """

    voxel_size: float = 2.0
    reference_age: float = 25.0
    curves: dict[str, LifespanCurve] = field(default_factory=dict)
    realisation_gain: dict[str, float] = field(default_factory=dict)
    rate_sd: float = 0.25
    baseline_sd: dict[str, float] = field(default_factory=dict)
    head_size_sd: float = 0.08
    sex_volume_offset: float = 0.04
    warp_mm: float = 2.0
    warp_smoothness_mm: float = 16.0
    contrast_sd: float = 0.03
    noise_kind: str = "rician"
    noise_sd: float = 0.03
    bias_amplitude: float = 0.1
    bias_smoothness_mm: float = 40.0
    sites: tuple[SiteContrast, ...] = ()

    def __post_init__(self) -> None:
        if self.voxel_size not in (2, 4):
            raise ValueError(f"voxel_size must be 2 or 4 mm, got {self.voxel_size!r}")
        if self.noise_kind not in ("rician", "gaussian"):
            raise ValueError(f"noise kind must be 'rician' or 'gaussian', got {self.noise_kind!r}")
        for name, table in (
            ("curves", self.curves),
            ("realisation_gain", self.realisation_gain),
            ("baseline_sd", self.baseline_sd),
        ):
            missing = [s for s in STRUCTURES if s not in table]
            if missing:
                raise ValueError(f"phantom config '{name}' lacks structures {missing}")
        if not self.sites:
            raise ValueError("phantom config needs at least one site")

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> PhantomConfig:
        """Read a phantom YAML (default: the packaged ``configs/phantom/ageing.yaml``); ``overrides`` replace fields.

        Raises:
            ValueError: naming the file and the missing or malformed field.
        """
        path = Path(path) if path is not None else _default_yaml()
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
        try:
            config = cls(**{**_fields_from_yaml(raw), **overrides})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid phantom config ({type(exc).__name__}: {exc})") from exc
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable), written next to every generated cohort."""
        return to_plain(self)


def _fields_from_yaml(raw: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("top level must be a mapping")
    curves = {}
    for name, spec in raw["rates"].items():
        knots = np.asarray(spec["knots"], dtype=float)
        if knots.ndim != 2 or knots.shape[1] != 2 or np.any(np.diff(knots[:, 0]) <= 0):
            raise ValueError(f"rates.{name}.knots must be [[age, %/year], ...] with increasing ages")
        curves[name] = LifespanCurve(tuple(knots[:, 0]), tuple(knots[:, 1]), str(spec.get("sources", "")))
    var = raw["variability"]
    return {
        "reference_age": float(raw["reference_age"]),
        "curves": curves,
        "realisation_gain": {k: float(v) for k, v in raw["realisation_gain"].items()},
        "rate_sd": float(var["rate_sd"]),
        "baseline_sd": {k: float(v) for k, v in var["baseline_sd"].items()},
        "head_size_sd": float(var["head_size_sd"]),
        "sex_volume_offset": float(var["sex_volume_offset"]),
        "warp_mm": float(var["warp_mm"]),
        "warp_smoothness_mm": float(var["warp_smoothness_mm"]),
        "contrast_sd": float(var["contrast_sd"]),
        "noise_kind": str(raw["noise"]["kind"]),
        "noise_sd": float(raw["noise"]["sd"]),
        "bias_amplitude": float(raw["bias"]["amplitude"]),
        "bias_smoothness_mm": float(raw["bias"]["smoothness_mm"]),
        "sites": tuple(SiteContrast(**site) for site in raw["sites"]),
    }
