"""Brain-age metrics: pure functions on arrays and DataFrames, no I/O and no global state.

Conventions: ``age`` is the chronological age and ``pred`` the predicted age, both in years, one value per scan.
Bootstrap resampling is done by subject (all sessions of a drawn subject enter together) so that longitudinal
scans do not narrow the confidence intervals. The brain-age gap is ``pred - age``.

Bias correction (the regression-to-the-mean effect of brain-age models) follows the common linear form: fit
``pred = slope * age + intercept`` on the validation set, then ``pred_corrected = (pred - intercept) / slope``.
:func:`decide_bias_correction` refuses a fit that would do harm: too few subjects, a slope near 0 (dividing by it
blows predictions up), too narrow an age range, or a correction that raises the validation MAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.data.bins import age_bin_labels, label_start

__all__ = [
    "BiasCorrection",
    "BiasDecision",
    "check_pair",
    "decide_bias_correction",
    "fit_bias_correction",
    "mae",
    "pearson_r",
    "per_bin_table",
    "r2",
    "regression_summary",
    "rmse",
]


def check_pair(
    age: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``age`` and ``pred`` as flat float64 arrays of one non-zero length (a ``ValueError`` otherwise)."""
    age = np.asarray(age, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if age.shape != pred.shape:
        raise ValueError(f"age and pred must have the same length, got {age.size} and {pred.size}")
    if age.size == 0:
        raise ValueError("age and pred are empty")
    return age, pred


def mae(age: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error in years."""
    age, pred = check_pair(age, pred)
    return float(np.mean(np.abs(pred - age)))


def rmse(age: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error in years."""
    age, pred = check_pair(age, pred)
    return float(np.sqrt(np.mean((pred - age) ** 2)))


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than 2 values."""
    x, y = check_pair(x, y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def r2(age: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of ``pred`` as a predictor of ``age``."""
    age, pred = check_pair(age, pred)
    ss_tot = float(np.sum((age - age.mean()) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((age - pred) ** 2)) / ss_tot


@dataclass(frozen=True)
class BiasCorrection:
    """Linear age-bias model ``pred = slope * age + intercept``, fitted on validation predictions."""

    slope: float
    intercept: float

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Return bias-corrected predictions ``(pred - intercept) / slope``."""
        return (np.asarray(pred, dtype=np.float64) - self.intercept) / self.slope

    def to_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}


def fit_bias_correction(age: np.ndarray, pred: np.ndarray, *, min_slope: float = 1e-3) -> BiasCorrection:
    """Least-squares fit of ``pred`` on ``age``.

    Args:
        age: ``(N,)`` chronological ages (validation set).
        pred: ``(N,)`` predictions for the same scans.
        min_slope: a slope below this (a model that ignores age) would blow up the correction, so it is refused.

    Raises:
        ValueError: fewer than 2 distinct ages, or a slope below ``min_slope``.
    """
    age, pred = check_pair(age, pred)
    if np.unique(age).size < 2:
        raise ValueError("bias correction needs at least 2 distinct ages in the validation set")
    slope, intercept = np.polyfit(age, pred, deg=1)
    if slope < min_slope:
        raise ValueError(f"bias-correction slope {slope:.3g} < {min_slope}: predictions do not follow age")
    return BiasCorrection(slope=float(slope), intercept=float(intercept))


@dataclass(frozen=True)
class BiasDecision:
    """Whether a bias correction is used, and why.

    Attributes:
        correction: the correction to apply, or ``None`` when it is refused.
        fitted: the least-squares fit, when one could be made (also when refused, for the record).
        reason: ``"used"`` or why it was refused.
        n: subjects the fit saw; age_range: their age range (years).
        mae: MAE of the fitting predictions without / with the fitted correction (NaN when not fitted).
    """

    correction: BiasCorrection | None
    fitted: BiasCorrection | None
    reason: str
    n: int
    age_range: float
    mae: float
    mae_corrected: float

    def to_dict(self) -> dict[str, object]:
        return {
            "used": self.correction is not None,
            "reason": self.reason,
            "n": self.n,
            "age_range_years": self.age_range,
            "fitted": self.fitted.to_dict() if self.fitted else None,
            "mae": self.mae,
            "mae_corrected": self.mae_corrected,
        }


def decide_bias_correction(
    age: np.ndarray,
    pred: np.ndarray,
    *,
    min_n: int = 20,
    min_slope: float = 0.3,
    min_age_range: float = 20.0,
) -> BiasDecision:
    """Fit a bias correction and keep it only when the fit can be trusted.

    Refused (``correction is None``, with the reason) when: fewer than ``min_n`` subjects; an age range under
    ``min_age_range`` years; a fitted slope under ``min_slope`` (a model that barely follows age: dividing by a
    small slope multiplies its noise, e.g. a slope of 0.014 turned a 15-year MAE into 54); or when the correction
    raises the MAE on the very data it was fitted on.

    Args:
        age, pred: ``(N,)`` ages and predictions of the fitting set (validation subjects).
        min_n, min_slope, min_age_range: the refusal thresholds.
    """
    age, pred = check_pair(age, pred)
    age_range = float(np.ptp(age))
    nan = float("nan")

    def refuse(reason: str, fitted: BiasCorrection | None = None, corrected: float = nan) -> BiasDecision:
        return BiasDecision(None, fitted, reason, int(age.size), age_range, mae(age, pred), corrected)

    if age.size < min_n:
        return refuse(f"{age.size} subjects < {min_n}")
    if age_range < min_age_range:
        return refuse(f"age range {age_range:.1f} y < {min_age_range:g} y")
    fitted = fit_bias_correction(age, pred, min_slope=-np.inf)
    if fitted.slope < min_slope:
        return refuse(f"slope {fitted.slope:.3g} < {min_slope:g}", fitted)
    corrected = mae(age, fitted.apply(pred))
    if corrected > mae(age, pred):
        return refuse(
            f"raises the MAE of its own fit ({mae(age, pred):.2f} -> {corrected:.2f})", fitted, corrected
        )
    return BiasDecision(fitted, fitted, "used", int(age.size), age_range, mae(age, pred), corrected)


def regression_summary(age: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Pearson r, R², mean gap and Spearman ρ(gap, age) as a flat dict."""
    age, pred = check_pair(age, pred)
    gap = pred - age
    rho = stats.spearmanr(gap, age).statistic if age.size > 2 and np.ptp(age) > 0 else float("nan")
    return {
        "n": float(age.size),
        "mae": mae(age, pred),
        "rmse": rmse(age, pred),
        "pearson_r": pearson_r(age, pred),
        "r2": r2(age, pred),
        "mean_gap": float(gap.mean()),
        "spearman_gap_age": float(rho),
    }


def _mean(values: np.ndarray, _unused: np.ndarray) -> float:
    return float(np.mean(values))


def per_bin_table(
    age: np.ndarray,
    abs_error: np.ndarray,
    *,
    gap: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    bin_width: float = 10.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """MAE with a subject-bootstrap 95 % CI, overall and per age bin.

    Args:
        age: ``(N,)`` chronological ages (define the bins).
        abs_error: ``(N,)`` absolute errors (e.g. ``|pred - age|``, or its mean over seeds).
        gap: ``(N,)`` signed errors ``pred - age`` for the mean-gap column; omitted -> NaN.
        groups: ``(N,)`` subject ids for the bootstrap.
        bin_width: age-bin width in years.
        n_boot: bootstrap replicates; seed: their seed.

    Returns:
        One row per bin (``"all"`` first, then by age) with columns ``age_bin, n, mae_years, mae_low_years,
        mae_high_years, mean_gap_years``.
    """
    from bap.resampling import bootstrap_ci

    age = np.asarray(age, dtype=np.float64)
    abs_error = np.asarray(abs_error, dtype=np.float64)
    gap = np.full_like(age, np.nan) if gap is None else np.asarray(gap, dtype=np.float64)
    groups = np.arange(age.size) if groups is None else np.asarray(groups)
    bins = age_bin_labels(age, bin_width)
    labels = sorted(set(bins), key=label_start)
    parts = [("all", np.ones(age.size, dtype=bool))] + [(label, bins == label) for label in labels]
    rows = []
    for label, mask in parts:
        ci = bootstrap_ci(
            abs_error[mask], abs_error[mask], groups=groups[mask], statistic=_mean, n_boot=n_boot, seed=seed
        )
        rows.append(
            {
                "age_bin": label,
                "n": int(mask.sum()),
                "mae_years": ci.estimate,
                "mae_low_years": ci.low,
                "mae_high_years": ci.high,
                "mean_gap_years": float(np.mean(gap[mask])),
            }
        )
    return pd.DataFrame(rows)
