"""Distribution distances between real and synthetic data: per-region (age-matched) and in feature space.

* :func:`age_matched_distances`: for every region, Wasserstein-1 and Kolmogorov–Smirnov distances between real and
  synthetic volumes *within age bins* (so that a different age mix is not mistaken for a different anatomy),
  averaged over bins with weights proportional to the smaller of the two counts.
* :func:`mmd`: unbiased squared maximum mean discrepancy with a Gaussian kernel (median-heuristic bandwidth).
* :func:`frechet_distance`: Fréchet distance between Gaussians fitted to two feature matrices (the FID formula).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import linalg, stats

from analysis.metrics.trajectory import DEFAULT_KEYS, VOLUME, _require
from flowlet.data.keys import AGE

__all__ = ["age_matched_distances", "frechet_distance", "mmd"]

DEFAULT_AGE_BINS: tuple[float, ...] = (0, 20, 30, 40, 50, 60, 70, 80, 120)


def age_matched_distances(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    value: str = VOLUME,
    keys: Sequence[str] = DEFAULT_KEYS,
    age: str = AGE,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    min_per_bin: int = 2,
) -> pd.DataFrame:
    """Per-group distances between real and synthetic ``value`` distributions, matched on age bins.

    Matching: ages are cut into ``age_bins`` (left-closed); in each bin holding at least ``min_per_bin`` real
    and synthetic rows of the group, W1 and the KS statistic are computed; the bin results are averaged with
    weights ``min(n_real, n_synthetic)``. W1 is also reported relative to the real within-bin standard deviation
    (``wasserstein_sd``), which is comparable across regions of very different size.

    Args:
        real: tidy table (``keys``, ``value``, ``age``) of real subjects.
        synthetic: the same for synthetic images.
        value: compared column.
        keys: grouping columns (e.g. region, tissue).
        age: age column in years.
        age_bins: increasing bin edges in years.
        min_per_bin: smallest count per set for a bin to be used.

    Returns:
        One row per group: keys, ``wasserstein`` (units of ``value``), ``wasserstein_sd``, ``ks_statistic``,
        ``ks_pvalue`` (Fisher's combination over bins), ``n_bins``, ``n_real``, ``n_synthetic``.
    """
    _require(real, [value, age, *keys], "real")
    _require(synthetic, [value, age, *keys], "synthetic")
    edges = np.asarray(age_bins, dtype=np.float64)
    real = real.assign(_bin=pd.cut(real[age], edges, right=False, labels=False))
    synthetic = synthetic.assign(_bin=pd.cut(synthetic[age], edges, right=False, labels=False))
    syn_groups = dict(iter(synthetic.groupby(list(keys), sort=True)))
    rows = []
    for group, part_r in real.groupby(list(keys), sort=True):
        part_s = syn_groups.get(group)
        if part_s is None:
            continue
        group = group if isinstance(group, tuple) else (group,)
        rows.append({**dict(zip(keys, group)), **_binned(part_r, part_s, value, min_per_bin)})
    return pd.DataFrame(rows)


def _binned(real: pd.DataFrame, syn: pd.DataFrame, value: str, min_per_bin: int) -> dict[str, float]:
    w1, w1_sd, ks, pvals, weights = [], [], [], [], []
    for b, rb in real.groupby("_bin"):
        x = rb[value].to_numpy(np.float64)
        y = syn.loc[syn["_bin"] == b, value].to_numpy(np.float64)
        if x.size < min_per_bin or y.size < min_per_bin:
            continue
        d = stats.wasserstein_distance(x, y)
        sd = float(x.std(ddof=1)) if x.size > 1 else np.nan
        res = stats.ks_2samp(x, y, method="asymp")
        w1.append(d)
        w1_sd.append(d / sd if sd > 0 else np.nan)
        ks.append(float(res.statistic))
        pvals.append(float(res.pvalue))
        weights.append(min(x.size, y.size))
    if not weights:
        nan = np.nan
        return dict(
            wasserstein=nan,
            wasserstein_sd=nan,
            ks_statistic=nan,
            ks_pvalue=nan,
            n_bins=0,
            n_real=len(real),
            n_synthetic=len(syn),
        )
    w = np.asarray(weights, dtype=np.float64)
    pvalue = float(stats.combine_pvalues(np.clip(pvals, 1e-300, 1.0), method="fisher").pvalue)
    return dict(
        wasserstein=float(np.average(w1, weights=w)),
        wasserstein_sd=_nan_average(np.asarray(w1_sd), w),
        ks_statistic=float(np.average(ks, weights=w)),
        ks_pvalue=pvalue,
        n_bins=len(weights),
        n_real=len(real),
        n_synthetic=len(syn),
    )


def _nan_average(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else np.nan


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected a (N >= 2, F) feature matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: feature matrix contains NaN or Inf")
    return x


def mmd(x: np.ndarray, y: np.ndarray, *, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between two samples with a Gaussian kernel.

    ``k(a, b) = exp(-‖a − b‖² / (2 h²))``; ``h`` defaults to the median pairwise distance of the pooled sample.
    The unbiased estimator can be slightly negative when the two distributions are equal.

    Args:
        x: ``(N, F)`` features of one set.
        y: ``(M, F)`` features of the other set (same ``F``).
        bandwidth: kernel width ``h`` in feature units.

    Returns:
        MMD² (0 for identical distributions in expectation).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimension differs: x has {x.shape[1]}, y has {y.shape[1]}")
    pooled = np.vstack([x, y])
    sq = _sq_dists(pooled, pooled)
    if bandwidth is None:
        off = sq[np.triu_indices_from(sq, k=1)]
        bandwidth = float(np.sqrt(np.median(off))) if np.any(off > 0) else 1.0
    k = np.exp(-sq / (2.0 * bandwidth**2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``‖μx − μy‖² + tr(Σx + Σy − 2 (Σx Σy)^½)``, with sample covariances. Features should be standardised
    beforehand when they have very different scales (see :func:`analysis.metrics.image.standardise_features`).

    Args:
        x: ``(N, F)`` features of one set.
        y: ``(M, F)`` features of the other set.

    Returns:
        The distance (≥ 0; tiny negative round-off is clipped to 0).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimension differs: x has {x.shape[1]}, y has {y.shape[1]}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x = np.atleast_2d(np.cov(x, rowvar=False))
    cov_y = np.atleast_2d(np.cov(y, rowvar=False))
    # tr((Σx Σy)^½) = Σ sqrt(eig(Σx^½ Σy Σx^½)); the symmetric form stays stable for singular covariances.
    w, v = linalg.eigh(cov_x)
    root_x = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = linalg.eigvalsh(root_x @ cov_y @ root_x)
    trace_covmean = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    value = float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_covmean)
    return max(value, 0.0)
