"""Age-trajectory fidelity: does synthetic data age like real data, region by region?

For every region (and tissue) the volume is regressed on age by ordinary least squares, in real and in synthetic
data separately. The slopes, their t-based confidence intervals and the difference (with a Welch-type standard
error) form the trajectory-fidelity table. A synthetic set whose age labels do not drive the anatomy (for example
labels shuffled after generation) has slopes near zero where the real data age, and is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.data.keys import AGE

__all__ = ["age_slopes", "linear_fit", "trajectory_fidelity"]

VOLUME = "volume_mm3"
DEFAULT_KEYS: tuple[str, ...] = ("region", "tissue")


def linear_fit(age: np.ndarray, value: np.ndarray, *, confidence: float = 0.95) -> dict[str, float]:
    """Ordinary least-squares line ``value = intercept + slope * age`` with a t-based CI of the slope.

    Args:
        age: ``(N,)`` ages in years.
        value: ``(N,)`` values (e.g. volumes in mm³).
        confidence: two-sided confidence level of the slope interval.

    Returns:
        ``slope``, ``intercept``, ``slope_se``, ``ci_low``, ``ci_high``, ``mean`` (of ``value``) and ``n``.
        With fewer than 3 points or no spread in age, everything but ``n`` and ``mean`` is NaN.
    """
    age = np.asarray(age, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    keep = np.isfinite(age) & np.isfinite(value)
    age, value = age[keep], value[keep]
    n = int(age.size)
    out = dict.fromkeys(("slope", "intercept", "slope_se", "ci_low", "ci_high"), np.nan)
    out.update(mean=float(value.mean()) if n else np.nan, n=n)
    sxx = float(((age - age.mean()) ** 2).sum()) if n else 0.0
    if n < 3 or sxx <= 0:
        return out
    slope = float(((age - age.mean()) * (value - value.mean())).sum() / sxx)
    intercept = float(value.mean() - slope * age.mean())
    residual = value - intercept - slope * age
    se = float(np.sqrt((residual**2).sum() / (n - 2) / sxx))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
    out.update(slope=slope, intercept=intercept, slope_se=se, ci_low=slope - half, ci_high=slope + half)
    return out


def age_slopes(
    table: pd.DataFrame,
    *,
    value: str = VOLUME,
    keys: Sequence[str] = DEFAULT_KEYS,
    age: str = AGE,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Slope of ``value`` versus age for every group of ``keys``.

    Args:
        table: tidy table with one row per subject × key (e.g. the volumetrics table), with an age column.
        value: column regressed on age.
        keys: grouping columns (e.g. ``("region", "tissue")``).
        age: age column (years).
        confidence: confidence level of the slope interval.

    Returns:
        One row per group: the keys, ``n``, ``slope_<unit>_per_year``-style columns named ``slope``,
        ``slope_se``, ``ci_low``, ``ci_high``, ``intercept``, ``mean`` and ``slope_pct_per_year``
        (slope relative to the group mean, in % per year).
    """
    _require(table, [value, age, *keys], "table")
    rows = []
    for group, part in table.groupby(list(keys), sort=True, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        fit = linear_fit(part[age].to_numpy(), part[value].to_numpy(), confidence=confidence)
        rows.append({**dict(zip(keys, group)), **fit})
    out = pd.DataFrame(
        rows, columns=[*keys, "slope", "intercept", "slope_se", "ci_low", "ci_high", "mean", "n"]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out["slope_pct_per_year"] = 100.0 * out["slope"] / out["mean"]
    return out


def trajectory_fidelity(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    value: str = VOLUME,
    keys: Sequence[str] = DEFAULT_KEYS,
    age: str = AGE,
    confidence: float = 0.95,
    alpha: float = 0.05,
    min_abs_pct: float = 0.0,
) -> pd.DataFrame:
    """Compare age slopes of real and synthetic data, per group of ``keys``.

    Groups are joined on the key columns (inner join); groups present in one set only are dropped.

    Args:
        real: tidy table of real subjects (``keys``, ``value``, ``age``).
        synthetic: the same for synthetic images (``age`` = the age each image was generated for).
        value: column regressed on age.
        keys: grouping columns.
        age: age column.
        confidence: level of the per-set slope intervals.
        alpha: two-sided level of the difference test used for ``flagged``.
        min_abs_pct: a group is flagged only if, in addition, the slopes differ by at least this much in % of
            the real mean per year (guards against flagging negligible differences on huge cohorts).

    Returns:
        One row per group: keys, ``slope_real``, ``ci_low_real``, ``ci_high_real``, ``slope_synthetic``,
        ``ci_low_synthetic``, ``ci_high_synthetic``, ``slope_diff`` (synthetic − real), ``slope_diff_se``,
        ``slope_diff_ci_low``/``_high``, ``slope_diff_pct_per_year`` (relative to the real mean), ``z``,
        ``p_value`` and ``flagged``.
    """
    cols = ["slope", "slope_se", "ci_low", "ci_high", "mean", "n"]
    fit_real = age_slopes(real, value=value, keys=keys, age=age, confidence=confidence)[[*keys, *cols]]
    fit_syn = age_slopes(synthetic, value=value, keys=keys, age=age, confidence=confidence)[[*keys, *cols]]
    both = fit_real.merge(
        fit_syn, on=list(keys), suffixes=("_real", "_synthetic"), how="inner", validate="1:1"
    )
    both["slope_diff"] = both["slope_synthetic"] - both["slope_real"]
    both["slope_diff_se"] = np.hypot(both["slope_se_real"], both["slope_se_synthetic"])
    z_crit = float(stats.norm.ppf(0.5 + confidence / 2))
    both["slope_diff_ci_low"] = both["slope_diff"] - z_crit * both["slope_diff_se"]
    both["slope_diff_ci_high"] = both["slope_diff"] + z_crit * both["slope_diff_se"]
    with np.errstate(divide="ignore", invalid="ignore"):
        both["slope_diff_pct_per_year"] = 100.0 * both["slope_diff"] / both["mean_real"]
        both["z"] = both["slope_diff"] / both["slope_diff_se"]
    both["p_value"] = 2.0 * stats.norm.sf(np.abs(both["z"].to_numpy(dtype=np.float64)))
    both["flagged"] = (both["p_value"] < alpha) & (both["slope_diff_pct_per_year"].abs() >= min_abs_pct)
    return both.reset_index(drop=True)


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; has {list(table.columns)}")
