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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.data.bins import age_bin_labels, label_start

__all__ = [
    "BiasCorrection",
    "BiasDecision",
    "BootstrapCI",
    "PairedTest",
    "age_bin_labels",
    "bootstrap_ci",
    "decide_bias_correction",
    "fit_bias_correction",
    "mae",
    "paired_error_test",
    "paired_mae_test",
    "pearson_r",
    "per_bin_table",
    "r2",
    "regression_summary",
    "rmse",
]


def _pair(
    age: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    age = np.asarray(age, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if age.shape != pred.shape:
        raise ValueError(f"age and pred must have the same length, got {age.size} and {pred.size}")
    if age.size == 0:
        raise ValueError("age and pred are empty")
    return age, pred


def mae(age: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error in years."""
    age, pred = _pair(age, pred)
    return float(np.mean(np.abs(pred - age)))


def rmse(age: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error in years."""
    age, pred = _pair(age, pred)
    return float(np.sqrt(np.mean((pred - age) ** 2)))


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than 2 values."""
    x, y = _pair(x, y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def r2(age: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of ``pred`` as a predictor of ``age``."""
    age, pred = _pair(age, pred)
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
    age, pred = _pair(age, pred)
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
    age, pred = _pair(age, pred)
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
    age, pred = _pair(age, pred)
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


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n_boot: int


def _group_indices(groups: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def _resample(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    draw = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[i] for i in draw])


def bootstrap_ci(
    age: np.ndarray,
    pred: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    statistic: Callable[[np.ndarray, np.ndarray], float] = mae,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``statistic(age, pred)``, resampling whole subjects.

    Args:
        age, pred: ``(N,)`` arrays.
        groups: ``(N,)`` subject ids; rows of one subject are drawn together. ``None`` = each row its own subject.
        statistic: function of ``(age, pred)``; defaults to :func:`mae`.
        n_boot: number of bootstrap replicates.
        level: confidence level.
        seed: seed of the resampling generator.
    """
    age, pred = _pair(age, pred)
    groups = np.arange(age.size) if groups is None else np.asarray(groups)
    members = _group_indices(groups)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = _resample(members, rng)
        values[b] = statistic(age[idx], pred[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(values, [alpha, 1.0 - alpha])
    return BootstrapCI(float(statistic(age, pred)), float(low), float(high), n_boot)


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


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of two models on the same test scans (``b`` minus ``a``)."""

    mae_a: float
    mae_b: float
    diff: BootstrapCI
    p_bootstrap: float
    wilcoxon_stat: float
    p_wilcoxon: float
    n: int


def paired_error_test(
    err_a: np.ndarray,
    err_b: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of ``mean(err_b) - mean(err_a)`` (subjects resampled jointly) and a Wilcoxon test.

    Args:
        err_a, err_b: ``(N,)`` absolute errors of two models on the same scans, in the same order.
        groups: ``(N,)`` subject ids.

    The bootstrap p value is two-sided: twice the smaller tail mass of the replicate differences around 0.
    The Wilcoxon signed-rank test compares ``err_b`` and ``err_a`` scan by scan.
    """
    err_a, err_b = _pair(err_a, err_b)
    groups = np.arange(err_a.size) if groups is None else np.asarray(groups)
    members = _group_indices(groups)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        idx = _resample(members, rng)
        diffs[b] = err_b[idx].mean() - err_a[idx].mean()
    low, high = np.quantile(diffs, [0.025, 0.975])
    p_boot = float(min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    if np.allclose(err_a, err_b):
        w_stat, p_w = float("nan"), 1.0
    else:
        res = stats.wilcoxon(err_b, err_a)
        w_stat, p_w = float(res.statistic), float(res.pvalue)
    diff = BootstrapCI(float(err_b.mean() - err_a.mean()), float(low), float(high), n_boot)
    return PairedTest(float(err_a.mean()), float(err_b.mean()), diff, p_boot, w_stat, p_w, int(err_a.size))


def paired_mae_test(
    age: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """:func:`paired_error_test` on ``|pred_a - age|`` and ``|pred_b - age|``."""
    age, pred_a = _pair(age, pred_a)
    _, pred_b = _pair(age, pred_b)
    return paired_error_test(
        np.abs(pred_a - age), np.abs(pred_b - age), groups=groups, n_boot=n_boot, seed=seed
    )
