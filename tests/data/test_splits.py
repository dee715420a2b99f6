"""Subject-level stratified splits: no leakage, proportions, strata balance, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowlet.data import keys
from flowlet.data.splits import _subject_frame, split_subjects, train_val_split


def _cohort(n_subjects: int = 400, seed: int = 0, sessions: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ages = rng.uniform(5, 95, n_subjects)
    sites = rng.choice(["A", "B", "C"], n_subjects)
    rows = [
        {
            keys.SUBJECT_ID: f"s{i:04d}",
            keys.SESSION_ID: str(k),
            keys.AGE: ages[i] + 2 * k,
            keys.SITE: sites[i],
        }
        for i in range(n_subjects)
        for k in range(sessions)
    ]
    return pd.DataFrame(rows, index=pd.RangeIndex(100, 100 + len(rows)))


def _subject_splits(table: pd.DataFrame, split: pd.Series) -> pd.Series:
    per_subject = split.groupby(table[keys.SUBJECT_ID]).agg(set)
    assert per_subject.map(len).max() == 1, "a subject appears in two splits"
    return per_subject.map(lambda s: next(iter(s)))


def test_fractions_and_index() -> None:
    table = _cohort()
    split = split_subjects(table, seed=3)
    assert split.name == keys.SPLIT
    assert split.index.equals(table.index)
    counts = split.value_counts()
    assert counts["train"] == pytest.approx(280, abs=1)
    assert counts["val"] == pytest.approx(60, abs=1)
    assert counts["test"] == pytest.approx(60, abs=1)


def test_per_age_bin_proportions() -> None:
    table = _cohort(900, seed=1)
    split = split_subjects(table, seed=0, age_bin_width=10.0, stratify_site=False)
    bins = np.floor(table[keys.AGE] / 10.0)
    for _, group in split.groupby(bins):
        share = group.value_counts(normalize=True)
        assert share["train"] == pytest.approx(0.7, abs=0.03)
        assert share["test"] == pytest.approx(0.15, abs=0.03)


def test_per_site_proportions() -> None:
    table = _cohort(600, seed=2)
    split = split_subjects(table, seed=0)
    for _, group in split.groupby(table[keys.SITE]):
        assert group.value_counts(normalize=True)["val"] == pytest.approx(0.15, abs=0.03)


def test_deterministic_and_seed_dependent() -> None:
    table = _cohort(200)
    first = split_subjects(table, seed=7)
    pd.testing.assert_series_equal(first, split_subjects(table, seed=7))
    assert (first != split_subjects(table, seed=8)).sum() > 20


def test_longitudinal_subject_kept_together() -> None:
    table = _cohort(150, sessions=3)
    split = split_subjects(table, seed=0)
    per_subject = _subject_splits(table, split)
    assert per_subject.value_counts()["train"] == pytest.approx(105, abs=1)


def test_small_strata_are_merged() -> None:
    # one subject per 5-year bin and a one-subject site: every stratum is too small on its own
    table = pd.DataFrame(
        {
            keys.SUBJECT_ID: [f"x{i}" for i in range(12)],
            keys.AGE: np.arange(12) * 7.0 + 3,
            keys.SITE: ["A"] * 11 + ["Z"],
        }
    )
    split = split_subjects(table, seed=0)
    assert sorted(split.value_counts().to_dict().items()) == [("test", 2), ("train", 8), ("val", 2)]


def test_existing_split_column_is_honoured() -> None:
    table = _cohort(100, sessions=2)
    table[keys.SPLIT] = ""
    fixed = table[keys.SUBJECT_ID].isin(["s0000", "s0001"])
    table.loc[fixed, keys.SPLIT] = "test"
    split = split_subjects(table, seed=0, use_column=True)
    assert (split[fixed] == "test").all()
    _subject_splits(table, split)
    table.loc[table.index[0], keys.SPLIT] = "train"
    with pytest.raises(ValueError, match=r"subjects \['s0000'\] have rows in several splits"):
        split_subjects(table, use_column=True)
    with pytest.raises(ValueError, match="no 'split' column"):
        split_subjects(table.drop(columns=keys.SPLIT), use_column=True)


def test_train_val_split() -> None:
    table = _cohort(100)
    split = train_val_split(table, 0.2, seed=1)
    assert split.value_counts().to_dict() == {"train": 80, "val": 20}
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(table, 1.0)


def test_bad_input() -> None:
    table = _cohort(10)
    with pytest.raises(ValueError, match="sum to 1"):
        split_subjects(table, {"train": 0.5, "val": 0.2})
    table.loc[table.index[2], keys.AGE] = np.nan
    with pytest.raises(ValueError, match=r"missing or non-numeric ages in rows \[102\]"):
        split_subjects(table)
    with pytest.raises(ValueError, match="lacks columns"):
        split_subjects(table.drop(columns=keys.AGE))


def test_zero_fraction_split_stays_empty() -> None:
    table = _cohort(97, seed=4)
    split = split_subjects(table, {"train": 0.8, "val": 0.2, "test": 0.0}, seed=2)
    assert "test" not in set(split)
    assert split.value_counts()["val"] == pytest.approx(19.4, abs=1)


def test_subject_site_is_its_most_frequent_site() -> None:
    # s1 has two scans at B and one at A: stratified with B (a one-site cohort except for that vote)
    table = pd.DataFrame(
        {
            keys.SUBJECT_ID: ["s1", "s1", "s1", "s2"],
            keys.AGE: [30.0, 31.0, 32.0, 30.0],
            keys.SITE: ["B", "A", "B", "B"],
        }
    )
    assert _subject_frame(table, stratify_site=True)["site"].to_dict() == {"s1": "B", "s2": "B"}
    assert _subject_frame(table, stratify_site=True)["age"].to_dict() == {"s1": 31.0, "s2": 30.0}
