"""Memorisation audit: is a synthetic image closer to a training image than real subjects ever are?

For every synthetic image the nearest real *training* image is found by normalised (Pearson) correlation of
voxel intensities. The reference is the real-to-real baseline: for each *held-out* real subject (never seen in
training), its nearest training image. A genuine new subject is as far from the training set as a held-out real
subject; a memorised copy is much closer. A synthetic image is flagged as a likely copy when its nearest-neighbour
correlation exceeds the ``quantile`` of the baseline, and flag rates are reported per age bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.metrics.distances import DEFAULT_AGE_BINS
from flowlet.data.bins import label_ages

__all__ = ["PrivacyAudit", "memorisation_audit", "nearest_neighbours"]


def _standardise_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected an (N >= 1, P) matrix of flattened images, got shape {x.shape}")
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"{name}: row(s) {np.flatnonzero(norm[:, 0] == 0).tolist()} are constant images")
    return x / norm


def nearest_neighbours(
    query: np.ndarray, reference: np.ndarray, *, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference row of every query row by normalised correlation.

    Args:
        query: ``(N, P)`` flattened images (same voxels, e.g. inside a brain mask).
        reference: ``(M, P)`` flattened images.
        chunk: query rows per matrix product (bounds memory).

    Returns:
        ``(index, correlation)``: ``(N,)`` int index into ``reference`` and ``(N,)`` Pearson correlation.
    """
    q, r = _standardise_rows(query, "query"), _standardise_rows(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} voxels per image, reference {r.shape[1]}")
    index = np.empty(q.shape[0], dtype=np.int64)
    corr = np.empty(q.shape[0], dtype=np.float64)
    for start in range(0, q.shape[0], chunk):
        c = q[start : start + chunk] @ r.T
        index[start : start + chunk] = c.argmax(1)
        corr[start : start + chunk] = c.max(1)
    return index, np.clip(corr, -1.0, 1.0)


@dataclass(frozen=True)
class PrivacyAudit:
    """Result of :func:`memorisation_audit`.

    Attributes:
        per_image: one row per synthetic image: ``synthetic_id``, ``age``, ``nearest_train_id``,
            ``nn_correlation``, ``baseline_pvalue`` (share of baseline correlations ≥ this one) and ``flagged``.
        by_age_bin: ``age_bin``, ``n``, ``n_flagged``, ``flag_rate``, ``nn_correlation_mean``.
        baseline: one row per held-out real image: ``holdout_id``, ``nearest_train_id``, ``nn_correlation``.
        threshold: correlation above which an image is flagged.
    """

    per_image: pd.DataFrame
    by_age_bin: pd.DataFrame
    baseline: pd.DataFrame
    threshold: float

    @property
    def flag_rate(self) -> float:
        return float(self.per_image["flagged"].mean()) if len(self.per_image) else np.nan


def memorisation_audit(
    synthetic: np.ndarray,
    train: np.ndarray,
    holdout: np.ndarray,
    *,
    synthetic_ids: Sequence[str],
    synthetic_ages: Sequence[float],
    train_ids: Sequence[str],
    holdout_ids: Sequence[str],
    quantile: float = 0.99,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
) -> PrivacyAudit:
    """Flag synthetic images that are closer to a training image than held-out real subjects are.

    Args:
        synthetic: ``(N, P)`` flattened synthetic images (same voxel set and grid as the real ones).
        train: ``(M, P)`` flattened real training images.
        holdout: ``(K, P)`` flattened real images of subjects not used in training.
        synthetic_ids: ``N`` identifiers; synthetic_ages: ``N`` generation ages (years).
        train_ids: ``M`` identifiers; holdout_ids: ``K`` identifiers.
        quantile: baseline quantile used as the flag threshold.
        age_bins: bin edges (years) of the per-bin flag rates (:func:`flowlet.data.bins.label_ages`; an age outside
            them is counted in the bin ``"outside"``).

    Returns:
        :class:`PrivacyAudit`.
    """
    for name, arr, ids in (
        ("synthetic", synthetic, synthetic_ids),
        ("train", train, train_ids),
        ("holdout", holdout, holdout_ids),
    ):
        if len(ids) != np.shape(arr)[0]:
            raise ValueError(f"{name}: {np.shape(arr)[0]} images but {len(ids)} identifiers")
    if len(synthetic_ages) != len(synthetic_ids):
        raise ValueError(f"synthetic_ages has {len(synthetic_ages)} values for {len(synthetic_ids)} images")
    train_ids = np.asarray(train_ids, dtype=object)
    b_idx, b_corr = nearest_neighbours(holdout, train)
    baseline = pd.DataFrame(
        {"holdout_id": list(holdout_ids), "nearest_train_id": train_ids[b_idx], "nn_correlation": b_corr}
    )
    threshold = float(np.quantile(b_corr, quantile))
    s_idx, s_corr = nearest_neighbours(synthetic, train)
    per_image = pd.DataFrame(
        {
            "synthetic_id": list(synthetic_ids),
            "age": np.asarray(synthetic_ages, np.float64),
            "nearest_train_id": train_ids[s_idx],
            "nn_correlation": s_corr,
            "baseline_pvalue": [(np.sum(b_corr >= c) + 1) / (b_corr.size + 1) for c in s_corr],
        }
    )
    per_image["flagged"] = per_image["nn_correlation"] > threshold
    labels = label_ages(per_image["age"].to_numpy(), age_bins)
    per_image["age_bin"] = np.where(pd.isna(labels), "outside", labels)
    by_bin = (
        per_image.groupby("age_bin", sort=False)
        .agg(
            n=("flagged", "size"),
            n_flagged=("flagged", "sum"),
            nn_correlation_mean=("nn_correlation", "mean"),
        )
        .reset_index()
    )
    by_bin["flag_rate"] = by_bin["n_flagged"] / by_bin["n"]
    by_bin = by_bin[["age_bin", "n", "n_flagged", "flag_rate", "nn_correlation_mean"]]
    return PrivacyAudit(per_image=per_image, by_age_bin=by_bin, baseline=baseline, threshold=threshold)
