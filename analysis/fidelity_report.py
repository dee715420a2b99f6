"""The age-fidelity report: every table of :mod:`analysis.fidelity`, the acceptance bars and a Markdown summary.

Example:
    >>> report = evaluate_fidelity(real, synthetic, edges=[10, 20, 30], n_boot=500)  # doctest: +SKIP
    >>> report.bars  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.fidelity import (
    STRUCTURE,
    age_gap_by_bin,
    binned_differences,
    binned_ratio,
    realism_by_bin,
    slope_ratios,
    truth_comparison,
)
from flowlet.data.keys import AGE

__all__ = ["Bars", "FidelityReport", "check_bars", "evaluate_fidelity", "summary_markdown"]


@dataclass(frozen=True)
class Bars:
    """Acceptance bars of an age-faithful generator (issue: the demo checkpoint's targets).

    Attributes:
        structure: the structure whose slope ratio and per-bin volume difference are checked.
        slope_ratio: accepted interval of the synthetic/real slope ratio.
        max_abs_gap_years: largest accepted |mean predicted − requested age| in any bin.
        max_abs_volume_pct: largest accepted |synthetic − real| mean volume of ``structure`` (% of real) in any bin.
        max_noise_ratio: largest accepted synthetic/real texture-noise ratio (all images).
    """

    structure: str = "lateral_ventricles"
    slope_ratio: tuple[float, float] = (0.9, 1.1)
    max_abs_gap_years: float = 3.0
    max_abs_volume_pct: float = 10.0
    max_noise_ratio: float = 1.5


@dataclass
class FidelityReport:
    """Every table of one age-fidelity evaluation (None where the input was not given)."""

    volumes_by_bin: pd.DataFrame
    slopes: pd.DataFrame
    truth: pd.DataFrame | None = None
    age_gap: pd.DataFrame | None = None
    noise: pd.DataFrame | None = None
    realism: pd.DataFrame | None = None
    bars: pd.DataFrame = field(default_factory=pd.DataFrame)


def evaluate_fidelity(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    edges: Sequence[float],
    images_real: pd.DataFrame | None = None,
    images_synthetic: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    truth_curves: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    bars: Bars = Bars(),
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> FidelityReport:
    """All fidelity tables of a synthetic set against a real one.

    Args:
        real, synthetic: structure tables (:func:`structure_table`).
        edges: age bin edges (years).
        images_real, images_synthetic: one row per image with ``age`` and ``noise`` (texture noise).
        predictions: synthetic images with ``age`` (requested) and ``pred`` (a real-trained brain-age model).
        features: ``(real, synthetic)`` fixed image features in the row order of ``images_real`` and
            ``images_synthetic``.
        truth_curves: known relative-volume curves per structure (:func:`phantom_truth_curves`).
        bars: the acceptance bars checked in ``bars``.
        n_boot, confidence, seed: bootstrap settings.
    """
    boot = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    report = FidelityReport(
        volumes_by_bin=binned_differences(real, synthetic, edges, **boot),
        slopes=slope_ratios(real, synthetic, **boot),
    )
    if truth_curves:
        report.truth = truth_comparison(real, synthetic, truth_curves, **boot)
    if predictions is not None:
        report.age_gap = age_gap_by_bin(predictions, edges, **boot)
    if images_real is not None and images_synthetic is not None:
        report.noise = binned_ratio(images_real, images_synthetic, edges, value="noise", **boot)
        if features is not None:
            report.realism = realism_by_bin(
                features[0], images_real[AGE].to_numpy(), features[1], images_synthetic[AGE].to_numpy(), edges
            )
    report.bars = check_bars(report, bars)
    return report


def check_bars(report: FidelityReport, bars: Bars = Bars()) -> pd.DataFrame:
    """One row per bar: ``bar``, ``target``, ``value`` (the worst case), ``worst_bin``, ``met`` (None: not measured)."""
    rows = []
    slope = report.slopes[report.slopes[STRUCTURE] == bars.structure]
    low, high = bars.slope_ratio
    ratio = float(slope["slope_ratio"].iloc[0]) if len(slope) else np.nan
    rows.append(
        _bar(f"{bars.structure} slope ratio", f"{low:g}-{high:g}", ratio, "all", low <= ratio <= high)
    )
    vol = report.volumes_by_bin
    vol = vol[(vol[STRUCTURE] == bars.structure) & vol["diff_pct"].notna()]
    rows.append(
        _worst(f"{bars.structure} volume % difference per bin", vol, "diff_pct", bars.max_abs_volume_pct)
    )
    if report.age_gap is not None:
        gap = report.age_gap[report.age_gap["mean_gap"].notna()]
        rows.append(_worst("brain-age gap per bin (years)", gap, "mean_gap", bars.max_abs_gap_years))
    else:
        rows.append(_bar("brain-age gap per bin (years)", f"±{bars.max_abs_gap_years:g}", np.nan, "", None))
    if report.noise is not None:
        noise = float(report.noise.loc[report.noise["bin"] == "all", "ratio"].iloc[0])
        rows.append(
            _bar(
                "texture noise ratio",
                f"<= {bars.max_noise_ratio:g}",
                noise,
                "all",
                noise <= bars.max_noise_ratio,
            )
        )
    return pd.DataFrame(rows)


def _bar(name: str, target: str, value: float, where: str, met: bool | None) -> dict:
    met = None if met is None or not np.isfinite(value) else bool(met)
    return {"bar": name, "target": target, "value": float(value), "worst_bin": where, "met": met}


def _worst(name: str, frame: pd.DataFrame, column: str, limit: float) -> dict:
    if frame.empty:
        return _bar(name, f"±{limit:g}", np.nan, "", None)
    row = frame.loc[frame[column].abs().idxmax()]
    return _bar(name, f"±{limit:g}", float(row[column]), str(row["bin"]), abs(row[column]) <= limit)


def summary_markdown(report: FidelityReport, *, title: str = "Age fidelity") -> str:
    """A short Markdown summary: the bars, the slope ratios and the per-bin tables."""
    from analysis.tables import to_markdown

    parts = [
        f"# {title}",
        "",
        "## Bars",
        "",
        to_markdown(report.bars),
        "",
        "## Age slopes (synthetic / real)",
        "",
    ]
    parts += [to_markdown(report.slopes.round(4)), ""]
    vol = report.volumes_by_bin
    pivot = vol.pivot(index="bin", columns=STRUCTURE, values="diff_pct").reindex(vol["bin"].unique())
    parts += ["## Volume difference per bin (% of real)", "", to_markdown(pivot.round(1).reset_index()), ""]
    for heading, table in (
        ("Phantom ground truth (slope of measurements / slope of the lifespan curve)", report.truth),
        ("Brain-age gap of synthetic images (predicted − requested, years)", report.age_gap),
        ("Texture noise (synthetic / real)", report.noise),
        ("Feature MMD per bin", report.realism),
    ):
        if table is not None:
            parts += [f"## {heading}", "", to_markdown(table.round(3)), ""]
    return "\n".join(parts)
