"""Subject-level, age- (and site-) stratified splits of a cohort table.

The official code splits per scan (spec §11.13), so longitudinal sessions of one person leak between train and
validation. Here every subject lands in exactly one split, and the subjects of each age bin (and site) are shared
among the splits in the requested proportions. Rounding errors are carried from one stratum to the next, so the
overall counts stay within one subject of the target per split. Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from flowlet.data import keys

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FRACTIONS", "split_subjects", "train_val_split"]

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def _check_fractions(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    names = [str(n) for n in fractions]
    values = np.array([float(fractions[n]) for n in fractions], dtype=np.float64)
    if not names or np.any(~np.isfinite(values)) or np.any(values < 0) or abs(values.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")
    return names, values


def _subject_frame(table: pd.DataFrame, stratify_site: bool) -> pd.DataFrame:
    """One row per subject: mean age over sessions and the subject's most frequent site (sorted on ties)."""
    missing = [c for c in (keys.SUBJECT_ID, keys.AGE) if c not in table.columns]
    if missing:
        raise ValueError(f"cohort table lacks columns {missing}; found {list(table.columns)}")
    ages = pd.to_numeric(table[keys.AGE], errors="coerce")
    if ages.isna().any():
        rows = table.index[ages.isna()].tolist()[:5]
        raise ValueError(f"column '{keys.AGE}' has missing or non-numeric ages in rows {rows}")
    subjects = table[keys.SUBJECT_ID].astype(str)
    frame = pd.DataFrame({"age": ages.groupby(subjects, sort=True).mean()})
    if stratify_site and keys.SITE in table.columns:
        pairs = pd.DataFrame(
            {"subject": subjects.to_numpy(), "site": table[keys.SITE].astype(str).to_numpy()}
        )
        counts = pairs.value_counts().rename("n").reset_index()
        counts = counts.sort_values(["subject", "n", "site"], ascending=[True, False, True], kind="stable")
        frame["site"] = counts.drop_duplicates("subject").set_index("subject")["site"]
    else:
        frame["site"] = ""
    return frame


def _merge_bins(bins: pd.Series, min_size: int) -> pd.Series:
    """Fold age bins with fewer than ``min_size`` subjects into their upper neighbour (the last into its lower)."""
    bins = bins.copy()
    while True:
        counts = bins.value_counts().sort_index()
        small = counts[counts < min_size]
        if small.empty or len(counts) == 1:
            return bins
        label = small.index[0]
        position = counts.index.get_loc(label)
        target = counts.index[position + 1] if position + 1 < len(counts) else counts.index[position - 1]
        bins[bins == label] = target


def _strata(subjects: pd.DataFrame, age_bin_width: float, min_size: int) -> pd.Series:
    """Stratum label per subject: site and age bin, with too-small sites pooled and too-small bins merged."""
    if age_bin_width <= 0:
        raise ValueError(f"age_bin_width must be positive, got {age_bin_width}")
    site = subjects["site"].copy()
    site_counts = site.value_counts()
    small_sites = site_counts.index[site_counts < min_size]
    site[site.isin(small_sites)] = "<pooled>"  # deterministic: pooling does not depend on order
    if (site == "<pooled>").sum() < min_size and site.nunique() > 1:
        largest = site_counts.drop(small_sites, errors="ignore").sort_index().idxmax()
        site[site == "<pooled>"] = largest
    bins = np.floor(subjects["age"] / age_bin_width).astype(int)
    labels = pd.Series("", index=subjects.index, dtype=object)
    for name in sorted(site.unique()):
        inside = site == name
        merged = _merge_bins(bins[inside], min_size)
        labels[inside] = [f"{name}|{b}" for b in merged]
    return labels


def _allocate(target: np.ndarray, n: int, rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``target`` (largest remainder, random tie order).

    Splits with ``allowed`` false (fraction 0) never receive a subject.
    """
    counts = np.where(allowed, np.floor(np.clip(target, 0, None)), 0).astype(int)
    remainder = target - counts
    order = [int(i) for i in np.lexsort((rng.random(len(target)), -remainder)) if allowed[i]]
    while counts.sum() < n:
        for i in order:
            if counts.sum() < n:
                counts[i] += 1
    while counts.sum() > n:
        i = max((j for j in order[::-1] if counts[j] > 0), key=lambda j: counts[j] - target[j])
        counts[i] -= 1
    return counts


def split_subjects(
    table: pd.DataFrame,
    fractions: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    age_bin_width: float = 5.0,
    stratify_site: bool = True,
    use_column: bool = False,
) -> pd.Series:
    """Assign every row to a split so that all sessions of a subject share one split.

    Args:
        table: cohort table with ``subject_id`` and ``age`` (and ``site``); a :class:`flowlet.data.cohort.Cohort`
            also works.
        fractions: ``{split name: fraction}`` summing to 1 (default 70/15/15 train/val/test).
        seed: seed of :func:`numpy.random.default_rng`; the same seed gives the same split.
        age_bin_width: width in years of the age strata (subjects are binned by their mean age).
        stratify_site: also stratify by ``site`` when the column exists.
        use_column: keep the split of subjects that already have one in a ``split`` column; the remaining
            subjects are split as usual.

    Returns:
        A string Series named ``split`` with the table's index.

    Raises:
        ValueError: bad fractions, missing columns or ages, or a subject whose rows carry different splits.

    Example:
        >>> table["split"] = split_subjects(table, seed=1)  # doctest: +SKIP
    """
    table = getattr(table, "table", table)
    names, values = _check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
    subjects = _subject_frame(table, stratify_site)
    assigned = pd.Series(pd.NA, index=subjects.index, dtype=object)
    if use_column:
        assigned = _existing_splits(table, subjects.index)
    todo = subjects.loc[assigned.isna()]
    if len(todo):
        rng = np.random.default_rng(seed)
        strata = _strata(todo, age_bin_width, min_size=int(np.count_nonzero(values)))
        carry = np.zeros(len(values))
        for label in sorted(strata.unique()):
            members = strata.index[strata == label].to_numpy()
            target = values * len(members) + carry
            counts = _allocate(target, len(members), rng, values > 0)
            carry = target - counts
            shuffled = members[rng.permutation(len(members))]
            assigned[shuffled] = np.repeat(names, counts)
    result = table[keys.SUBJECT_ID].astype(str).map(assigned)
    logger.info("split %d subjects: %s", len(subjects), assigned.value_counts().to_dict())
    return result.rename(keys.SPLIT).astype(str)


def _existing_splits(table: pd.DataFrame, subjects: pd.Index) -> pd.Series:
    if keys.SPLIT not in table.columns:
        raise ValueError(
            f"use_column=True but the table has no '{keys.SPLIT}' column; found {list(table.columns)}"
        )
    text = table[keys.SPLIT].astype("string").str.strip()
    text = text.mask(text.isin(["", keys.UNKNOWN, "nan", "<NA>"]))
    per_subject = text.groupby(table[keys.SUBJECT_ID].astype(str)).agg(lambda s: sorted(set(s.dropna())))
    mixed = [s for s, v in per_subject.items() if len(v) > 1]
    if mixed:
        raise ValueError(
            f"column '{keys.SPLIT}': subjects {mixed[:5]} have rows in several splits; expected one"
        )
    return per_subject.map(lambda v: v[0] if v else pd.NA).reindex(subjects).astype(object)


def train_val_split(table: pd.DataFrame, val_fraction: float = 0.15, *, seed: int = 0, **kwargs) -> pd.Series:
    """Two-way subject-level split into ``"train"`` and ``"val"``; ``kwargs`` go to :func:`split_subjects`."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return split_subjects(table, {"train": 1.0 - val_fraction, "val": val_fraction}, seed=seed, **kwargs)
