"""Age fidelity of a synthetic cohort: do synthetic brains of a requested age look like real brains of that age?

Everything is computed per age bin and on tidy tables, with percentile-bootstrap confidence intervals (images are
resampled within each set independently, so the intervals reflect how many images each bin has):

* :func:`binned_differences`: per structure and bin, synthetic − real mean volume (mm³ and % of real);
* :func:`slope_ratios`: per structure, the ordinary least-squares age slope of synthetic over real (1 = the same
  ageing; 0.5 = half of it);
* :func:`truth_comparison`: on phantom cohorts, both sets against the known lifespan curves of the phantom model
  (:func:`phantom_truth_curves`), scaled to the real measurements so that only the shape of the curve is used;
* :func:`age_gap_by_bin`: predicted − requested age of a brain-age model trained on real data;
* :func:`binned_ratio`: per bin, the ratio of synthetic to real means of any per-image value (the texture noise of
  :func:`analysis.metrics.texture.median_residual_noise`);
* :func:`realism_by_bin`: per bin, the MMD of fixed image features (standardised on the real set);

The tables are put together, and checked against a generator's acceptance bars, by :mod:`analysis.fidelity_report`.

Example:
    >>> slope_ratios(real, synthetic, n_boot=500)[["structure", "slope_ratio", "ci_low", "ci_high"]]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.metrics.distances import mmd
from analysis.metrics.image import standardise_features
from flowlet.data.bins import edge_labels, label_ages
from flowlet.data.keys import AGE

__all__ = [
    "DEFAULT_STRUCTURES",
    "PHANTOM_STRUCTURES",
    "age_gap_by_bin",
    "binned_differences",
    "binned_ratio",
    "phantom_truth_curves",
    "realism_by_bin",
    "slope_ratios",
    "structure_table",
    "truth_comparison",
]

#: Structure name → (atlas region, tissue) in the volumetrics table (combined regions of configs/eval/default.yaml).
DEFAULT_STRUCTURES: dict[str, tuple[str, str]] = {
    "lateral_ventricles": ("lateral-ventricles", "csf"),
    "hippocampus": ("hippocampus", "gm"),
    "total_gm": ("whole-brain", "gm"),
    "total_wm": ("whole-brain", "wm"),
    "total_csf": ("whole-brain", "csf"),
}
#: Structure name → the phantom model's lifespan curve that drives it (flowlet.data.phantom.STRUCTURES).
PHANTOM_STRUCTURES: dict[str, str] = {
    "lateral_ventricles": "lateral_ventricles",
    "hippocampus": "hippocampus",
    "total_gm": "grey_matter",
    "total_wm": "white_matter",
}
VOLUME = "volume_mm3"
STRUCTURE = "structure"


# ------------------------------------------------------------------------------------------------ tables
def structure_table(
    volumes: pd.DataFrame, structures: Mapping[str, tuple[str, str]] = DEFAULT_STRUCTURES
) -> pd.DataFrame:
    """``image_id, age, structure, volume_mm3`` of the named (region, tissue) rows of a volumetrics table.

    Raises:
        ValueError: a structure's (region, tissue) is absent from ``volumes`` (the message lists what is there).
    """
    have = set(zip(volumes["region"], volumes["tissue"]))
    frames = []
    for name, (region, tissue) in structures.items():
        if (region, tissue) not in have:
            regions = sorted({r for r, _ in have})
            raise ValueError(
                f"structure '{name}' needs region '{region}' tissue '{tissue}' in the volumes table; "
                f"regions there: {regions[:12]}{' ...' if len(regions) > 12 else ''}"
            )
        part = volumes[(volumes["region"] == region) & (volumes["tissue"] == tissue)]
        frames.append(part[["image_id", AGE, VOLUME]].assign(**{STRUCTURE: name}))
    return pd.concat(frames, ignore_index=True)[["image_id", AGE, STRUCTURE, VOLUME]]


# -------------------------------------------------------------------------------------------- bootstrap
def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot,)`` means of resamples of ``values`` (NaN when empty)."""
    if values.size == 0:
        return np.full(n_boot, np.nan)
    return values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)


def _boot_slopes(age: np.ndarray, value: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot,)`` least-squares slopes of image resamples (NaN where a resample has no age spread)."""
    if age.size < 3:
        return np.full(n_boot, np.nan)
    idx = rng.integers(0, age.size, (n_boot, age.size))
    return _slopes(age[idx], value[idx])


def _slopes(age: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Least-squares slopes along the last axis."""
    a = age - age.mean(axis=-1, keepdims=True)
    v = value - value.mean(axis=-1, keepdims=True)
    sxx = (a * a).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sxx > 0, (a * v).sum(axis=-1) / sxx, np.nan)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------- volumes
def binned_differences(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    edges: Sequence[float],
    *,
    value: str = VOLUME,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per structure and age bin: synthetic − real mean of ``value``, in units and in % of the real mean.

    Args:
        real, synthetic: tables from :func:`structure_table` (``age``, ``structure``, ``value``); the synthetic
            ``age`` is the requested age.
        edges: age bin edges in years.
        value: the column compared.
        n_boot: bootstrap resamples.
        confidence: level of the percentile intervals.
        seed: bootstrap seed.

    Returns:
        One row per structure × bin: ``structure``, ``bin``, ``n_real``, ``n_synthetic``, ``mean_real``,
        ``mean_synthetic``, ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``diff_pct``, ``diff_pct_ci_low``,
        ``diff_pct_ci_high`` (NaN where a bin has no image of one set).
    """
    rng = np.random.default_rng(seed)
    real, synthetic = _binned(real, edges), _binned(synthetic, edges)
    rows = []
    for name in sorted(set(real[STRUCTURE]) & set(synthetic[STRUCTURE])):
        for label in edge_labels(edges):
            r = _values(real, name, label, value)
            s = _values(synthetic, name, label, value)
            boot_r, boot_s = _boot_means(r, n_boot, rng), _boot_means(s, n_boot, rng)
            mean_r = float(r.mean()) if r.size else np.nan
            mean_s = float(s.mean()) if s.size else np.nan
            with np.errstate(divide="ignore", invalid="ignore"):
                pct = 100.0 * (boot_s - boot_r) / boot_r
                diff_pct = 100.0 * (mean_s - mean_r) / mean_r
            rows.append(
                {
                    STRUCTURE: name,
                    "bin": label,
                    "n_real": int(r.size),
                    "n_synthetic": int(s.size),
                    "mean_real": mean_r,
                    "mean_synthetic": mean_s,
                    "diff": mean_s - mean_r,
                    **_named_interval("diff", boot_s - boot_r, confidence),
                    "diff_pct": diff_pct,
                    **_named_interval("diff_pct", pct, confidence),
                }
            )
    return pd.DataFrame(rows)


def _binned(table: pd.DataFrame, edges: Sequence[float]) -> pd.DataFrame:
    return table.assign(bin=label_ages(table[AGE].to_numpy(), edges))


def _values(table: pd.DataFrame, name: str, label: str, value: str) -> np.ndarray:
    part = table[(table[STRUCTURE] == name) & (table["bin"] == label)]
    return part[value].to_numpy(dtype=np.float64)


def _named_interval(prefix: str, draws: np.ndarray, confidence: float) -> dict[str, float]:
    low, high = _interval(draws, confidence)
    return {f"{prefix}_ci_low": low, f"{prefix}_ci_high": high}


def slope_ratios(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    value: str = VOLUME,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per structure: age slope of ``value`` in synthetic over real images, with a bootstrap interval.

    Returns:
        One row per structure: ``slope_real``, ``slope_synthetic`` (units per year), ``slope_ratio``, ``ci_low``,
        ``ci_high``, ``n_real``, ``n_synthetic``, ``age_min``, ``age_max`` (range of the synthetic ages).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name in sorted(set(real[STRUCTURE]) & set(synthetic[STRUCTURE])):
        r = real[real[STRUCTURE] == name]
        s = synthetic[synthetic[STRUCTURE] == name]
        ar, vr = r[AGE].to_numpy(np.float64), r[value].to_numpy(np.float64)
        a_s, vs = s[AGE].to_numpy(np.float64), s[value].to_numpy(np.float64)
        slope_r, slope_s = float(_slopes(ar, vr)), float(_slopes(a_s, vs))
        with np.errstate(divide="ignore", invalid="ignore"):
            draws = _boot_slopes(a_s, vs, n_boot, rng) / _boot_slopes(ar, vr, n_boot, rng)
            ratio = slope_s / slope_r
        low, high = _interval(draws, confidence)
        rows.append(
            {
                STRUCTURE: name,
                "slope_real": slope_r,
                "slope_synthetic": slope_s,
                "slope_ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "n_real": int(ar.size),
                "n_synthetic": int(a_s.size),
                "age_min": float(a_s.min()) if a_s.size else np.nan,
                "age_max": float(a_s.max()) if a_s.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- truth
def phantom_truth_curves(config=None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Expected volume (relative to the reference age) of each phantom-driven structure, as a function of age.

    ``V(age) / V(ref) = exp(gain · ∫ log(1 + rate/100))``, the lifespan curve of the phantom model with its
    realisation gain (``configs/phantom/ageing.yaml``); keys are the names of :data:`PHANTOM_STRUCTURES`.

    Args:
        config: a :class:`flowlet.data.phantom.PhantomConfig` (default: the packaged one).
    """
    from flowlet.data.phantom import PhantomConfig

    config = config or PhantomConfig.from_yaml()

    def curve(structure: str) -> Callable[[np.ndarray], np.ndarray]:
        lifespan, gain = config.curves[structure], config.realisation_gain[structure]

        def relative_volume(age: np.ndarray) -> np.ndarray:
            ages = np.atleast_1d(np.asarray(age, dtype=np.float64))
            logs = [lifespan.log_volume(float(a), config.reference_age) for a in ages]
            return np.exp(gain * np.asarray(logs))

        return relative_volume

    return {name: curve(source) for name, source in PHANTOM_STRUCTURES.items()}


def truth_comparison(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    curves: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    *,
    value: str = VOLUME,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Both sets against known lifespan curves (phantoms): slope of the measurements over the curve's slope.

    The curve gives relative volumes; its scale in the measured units is fitted on the real images (least squares
    through the origin), so a real set measured without bias has a ratio near 1 and the synthetic ratio says how
    much of the true ageing the generator reproduces.

    Returns:
        One row per structure with a curve and set (``real``/``synthetic``): ``slope_measured``, ``slope_truth``
        (of the scaled curve at the same ages), ``slope_ratio`` with ``ci_low``/``ci_high``, and ``scale``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name in sorted(set(curves) & set(real[STRUCTURE]) & set(synthetic[STRUCTURE])):
        r = real[real[STRUCTURE] == name]
        curve_r = curves[name](r[AGE].to_numpy(np.float64))
        vr = r[value].to_numpy(np.float64)
        scale = float((vr * curve_r).sum() / (curve_r * curve_r).sum())
        for label, part in (("real", r), ("synthetic", synthetic[synthetic[STRUCTURE] == name])):
            ages, values = part[AGE].to_numpy(np.float64), part[value].to_numpy(np.float64)
            expected = scale * curves[name](ages)
            measured, truth = float(_slopes(ages, values)), float(_slopes(ages, expected))
            idx = rng.integers(0, ages.size, (n_boot, ages.size))
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = _slopes(ages[idx], values[idx]) / _slopes(ages[idx], expected[idx])
            low, high = _interval(draws, confidence)
            rows.append(
                {
                    STRUCTURE: name,
                    "set": label,
                    "slope_measured": measured,
                    "slope_truth": truth,
                    "slope_ratio": measured / truth if truth else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "scale": scale,
                    "n": int(ages.size),
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ per-image values
def age_gap_by_bin(
    predictions: pd.DataFrame,
    edges: Sequence[float],
    *,
    predicted: str = "pred",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per bin: mean predicted − requested age (``predicted`` − ``age``), with a bootstrap interval, and the MAE.

    Returns:
        ``bin``, ``n``, ``mean_gap``, ``ci_low``, ``ci_high``, ``mae`` (one row per bin, empty bins kept as NaN).
    """
    rng = np.random.default_rng(seed)
    frame = _binned(predictions, edges)
    gap = frame[predicted].to_numpy(np.float64) - frame[AGE].to_numpy(np.float64)
    rows = []
    for label in edge_labels(edges):
        g = gap[(frame["bin"] == label).to_numpy()]
        low, high = _interval(_boot_means(g, n_boot, rng), confidence)
        rows.append(
            {
                "bin": label,
                "n": int(g.size),
                "mean_gap": float(g.mean()) if g.size else np.nan,
                "ci_low": low,
                "ci_high": high,
                "mae": float(np.abs(g).mean()) if g.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def binned_ratio(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    edges: Sequence[float],
    *,
    value: str,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per bin and overall (``bin = "all"``): synthetic mean of ``value`` ÷ real mean, with a bootstrap interval.

    Args:
        real, synthetic: one row per image with ``age`` and ``value``.

    Returns:
        ``bin``, ``n_real``, ``n_synthetic``, ``mean_real``, ``mean_synthetic``, ``ratio``, ``ci_low``, ``ci_high``.
    """
    rng = np.random.default_rng(seed)
    real, synthetic = _binned(real, edges), _binned(synthetic, edges)
    rows = []
    for label in [*edge_labels(edges), "all"]:
        r = real[value] if label == "all" else real.loc[real["bin"] == label, value]
        s = synthetic[value] if label == "all" else synthetic.loc[synthetic["bin"] == label, value]
        r, s = r.to_numpy(np.float64), s.to_numpy(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            draws = _boot_means(s, n_boot, rng) / _boot_means(r, n_boot, rng)
            ratio = s.mean() / r.mean() if r.size and s.size else np.nan
        low, high = _interval(draws, confidence)
        rows.append(
            {
                "bin": label,
                "n_real": int(r.size),
                "n_synthetic": int(s.size),
                "mean_real": float(r.mean()) if r.size else np.nan,
                "mean_synthetic": float(s.mean()) if s.size else np.nan,
                "ratio": float(ratio),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def realism_by_bin(
    features_real: np.ndarray,
    ages_real: np.ndarray,
    features_synthetic: np.ndarray,
    ages_synthetic: np.ndarray,
    edges: Sequence[float],
) -> pd.DataFrame:
    """Per bin and overall: MMD of fixed image features (standardised on all real images) of the two sets.

    Returns:
        ``bin``, ``n_real``, ``n_synthetic``, ``mmd`` (NaN where a set has fewer than 2 images in the bin).
    """
    r, s = standardise_features(np.asarray(features_real), np.asarray(features_synthetic))
    bins_r = label_ages(ages_real, edges)
    bins_s = label_ages(ages_synthetic, edges)
    rows = []
    for label in [*edge_labels(edges), "all"]:
        kr = np.ones(len(r), bool) if label == "all" else bins_r == label
        ks = np.ones(len(s), bool) if label == "all" else bins_s == label
        value = mmd(r[kr], s[ks]) if kr.sum() >= 2 and ks.sum() >= 2 else np.nan
        rows.append(
            {"bin": label, "n_real": int(kr.sum()), "n_synthetic": int(ks.sum()), "mmd": float(value)}
        )
    return pd.DataFrame(rows)
