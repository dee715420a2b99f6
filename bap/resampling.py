"""Uncertainty of brain-age results: percentile bootstrap CIs over subjects, paired tests of two models on the same
scans, and the crossed bootstrap over training seeds and test subjects that the study's arm comparison uses.

Resampling is done by subject (all sessions of a drawn subject enter together) so that longitudinal scans do not
narrow the intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bap.metrics import check_pair, mae

__all__ = [
    "BootstrapCI",
    "CrossedBootstrap",
    "PairedTest",
    "bootstrap_ci",
    "crossed_bootstrap",
    "paired_error_test",
    "paired_mae_test",
]


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


def _subject_replicates(
    n: int, groups: np.ndarray | None, n_boot: int, seed: int, statistic: Callable[[np.ndarray], float]
) -> np.ndarray:
    """``statistic(idx)`` for ``n_boot`` row-index draws that resample whole subjects (``None`` = row = subject)."""
    members = _group_indices(np.arange(n) if groups is None else np.asarray(groups))
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        draw = rng.integers(0, len(members), size=len(members))
        values[b] = statistic(np.concatenate([members[i] for i in draw]))
    return values


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
    age, pred = check_pair(age, pred)
    values = _subject_replicates(age.size, groups, n_boot, seed, lambda idx: statistic(age[idx], pred[idx]))
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(values, [alpha, 1.0 - alpha])
    return BootstrapCI(float(statistic(age, pred)), float(low), float(high), n_boot)


@dataclass(frozen=True)
class CrossedBootstrap:
    """Mean of a (seeds × scans) matrix with a CI from resampling seeds and subjects, and a two-sided p for 0."""

    estimate: float
    low: float
    high: float
    p_value: float
    n_boot: int


def crossed_bootstrap(
    values: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> CrossedBootstrap:
    """Percentile CI of the mean of ``values`` when both its training seeds and its test subjects are random.

    Each replicate draws the rows (training seeds) and, independently, the subjects (all scans of a drawn subject
    together) with replacement, and takes the weighted mean of the matrix. The interval therefore holds the
    seed-to-seed spread of the trained networks as well as the sampling of test subjects, which a bootstrap over
    subjects of seed-averaged errors leaves out. For a paired comparison pass the per-seed, per-scan difference of
    two arms whose seed ``k`` shares its split and initialisation; the same seed rows are drawn for both.

    Args:
        values: ``(S, N)`` one row per training seed, one column per scan (e.g. absolute errors or differences).
        groups: ``(N,)`` subject ids of the columns; ``None`` = every scan its own subject.
        n_boot: number of replicates; level: confidence level; seed: seed of the resampling generator.

    Returns:
        The mean, the CI and the two-sided bootstrap p value of "mean = 0" (twice the smaller tail mass of the
        replicates around 0, at least ``1 / n_boot``). With one seed row it is a subject bootstrap.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"values must be a non-empty (seeds, scans) matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values holds NaN or infinite entries (a scan missing for one seed?)")
    n_seeds, n_scans = values.shape
    groups = np.arange(n_scans) if groups is None else np.asarray(groups)
    if groups.shape != (n_scans,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n_scans},)")
    _, subject_of_scan = np.unique(groups, return_inverse=True)
    n_subjects = int(subject_of_scan.max()) + 1
    rng = np.random.default_rng(seed)
    # Multiplicity of every seed row and every subject in each replicate; a scan weighs as much as its subject.
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    subject_counts = rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_boot)
    scan_weights = subject_counts[:, subject_of_scan].astype(np.float64)
    totals = (seed_counts @ values * scan_weights).sum(axis=1)
    replicates = totals / (seed_counts.sum(axis=1) * scan_weights.sum(axis=1))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    tail = min(np.mean(replicates <= 0), np.mean(replicates >= 0))
    p_value = float(min(1.0, max(2.0 * tail, 1.0 / n_boot)))
    return CrossedBootstrap(float(values.mean()), float(low), float(high), p_value, n_boot)


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
    err_a, err_b = check_pair(err_a, err_b)
    diffs = _subject_replicates(
        err_a.size, groups, n_boot, seed, lambda idx: err_b[idx].mean() - err_a[idx].mean()
    )
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
    age, pred_a = check_pair(age, pred_a)
    _, pred_b = check_pair(age, pred_b)
    return paired_error_test(
        np.abs(pred_a - age), np.abs(pred_b - age), groups=groups, n_boot=n_boot, seed=seed
    )
