"""No leakage: subject-level splits, synthetic data in training only, normalisation fitted on training only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bap.config import DataConfig, config_from_dict
from bap.data import (
    AgeDataset,
    apply_normalisation,
    check_no_leakage,
    fit_normalisation,
    prepare_data,
    select_synthetic,
)
from flowlet.data.cohort import load_cohort


def test_no_leakage_between_splits_and_sources(tiny_real, tiny_synthetic):
    real = load_cohort(tiny_real).table
    syn = load_cohort(tiny_synthetic).table
    data = prepare_data(real, DataConfig(synthetic_ratio=1.0, split_seed=3), synthetic=syn)
    t = data.table
    subjects = {
        s: set(t.loc[(t.split == s) & (t.source == "real"), "subject_id"]) for s in ("train", "val", "test")
    }
    assert not subjects["test"] & (subjects["train"] | subjects["val"])
    assert not subjects["val"] & subjects["train"]
    assert set(t.loc[t.source == "synthetic", "split"]) == {"train"}
    assert set(t.loc[t.split != "train", "source"]) == {"real"}
    # Every two-session subject has both sessions, in one split.
    two = (
        t[t.source == "real"].groupby("subject_id").agg(n=("session_id", "size"), splits=("split", "nunique"))
    )
    assert (two.loc[two.n == 2, "splits"] == 1).all() and (two.n == 2).sum() == 6
    n_real_train = int(((t.split == "train") & (t.source == "real")).sum())
    assert int((t.source == "synthetic").sum()) == n_real_train
    assert len(subjects["test"]) >= 4 and len(subjects["val"]) >= 4


def test_normalisation_ignores_val_and_test_images(tiny_real):
    real = load_cohort(tiny_real).table
    cfg = DataConfig(split_seed=1, normalisation="minmax")  # the one kind fitted across scans
    base = prepare_data(real, cfg)
    # Make every held-out scan 100x brighter: the fitted statistics must not move.
    held_out = set(base.table.loc[base.table.split != "train", "subject_id"])
    memo = {}
    data_raw = prepare_data(real, DataConfig(normalisation="none", split_seed=1), memo=memo)
    for path, sid in zip(data_raw.table.path, data_raw.table.subject_id):
        if sid in held_out:
            memo[path] = memo[path] * 100.0
    bright = prepare_data(real, cfg, memo=memo)
    assert bright.norm == base.norm
    train_rows = base.indices("train")
    np.testing.assert_array_equal(bright.images[train_rows], base.images[train_rows])
    assert np.all(bright.images[base.indices("test")] <= 1.0)


def test_minmax_uses_percentiles_of_per_volume_extremes():
    images = np.stack([np.full((2, 2, 2), v, np.float32) for v in range(11)])
    images[:, 0, 0, 0] = np.arange(11) - 10.0  # minima -10..0
    images[:, 1, 1, 1] = np.arange(11) + 100.0  # maxima 100..110
    stats = fit_normalisation(
        images, DataConfig(normalisation="minmax", low_percentile=10, high_percentile=90)
    )
    assert stats["low"] == pytest.approx(-9.0) and stats["high"] == pytest.approx(109.0)
    out = apply_normalisation(images, stats)
    assert out.min() == 0.0 and out.max() == 1.0
    z = apply_normalisation(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2), {"kind": "zscore"})
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-6) and float(z.std()) == pytest.approx(1.0, abs=1e-5)


def test_zscore_normalisation_is_the_shared_per_scan_zscore():
    """``normalisation: zscore`` z-scores each scan on its own with :func:`flowlet.data.preprocessing.zscore`: one
    rule for a constant scan (centred, not divided by ~0) and float64 statistics."""
    from flowlet.data.preprocessing import zscore

    rng = np.random.default_rng(0)
    images = np.stack(
        [rng.normal(300, 40, (3, 4, 5)), np.full((3, 4, 5), 7.0), rng.normal(2, 0.1, (3, 4, 5))]
    )
    out = apply_normalisation(images.astype(np.float32), {"kind": "zscore"})
    for scan, normalised in zip(images.astype(np.float32), out):
        np.testing.assert_array_equal(normalised, zscore(scan))
    assert np.all(out[1] == 0.0)
    np.testing.assert_array_equal(
        apply_normalisation(images[0].astype(np.float32), {"kind": "zscore"}), out[0]
    )


def test_leakage_check_catches_violations():
    table = pd.DataFrame(
        {"subject_id": ["a", "a", "b"], "split": ["train", "test", "val"], "source": ["real", "real", "real"]}
    )
    with pytest.raises(ValueError, match="more than one split"):
        check_no_leakage(table)
    table = pd.DataFrame(
        {"subject_id": ["a", "g"], "split": ["train", "val"], "source": ["real", "synthetic"]}
    )
    with pytest.raises(ValueError, match="outside the training split"):
        check_no_leakage(table)


def test_synthetic_selection_is_nested_and_balanced():
    pool = pd.DataFrame(
        {"subject_id": [f"g{i}" for i in range(60)], "age": np.repeat([25.0, 45.0, 65.0], 20)}
    )
    small = select_synthetic(pool, 10, seed=4)
    large = select_synthetic(pool, 30, seed=4)
    assert set(small.subject_id) <= set(large.subject_id)
    real_ages = np.array([21.0] * 4 + [41.0] * 2)  # bin 60-70 has no real scans, 40-50 has 2, 20-30 has 4
    chosen = select_synthetic(pool, 12, strategy="balanced", real_train_ages=real_ages, seed=0)
    counts = chosen.age.value_counts().to_dict()
    assert counts == {65.0: 6, 45.0: 4, 25.0: 2}  # every bin ends with 6 scans in total
    with pytest.raises(ValueError, match="has 60"):
        select_synthetic(pool, 61)


def test_split_column_and_external_test(tiny_real, tiny_synthetic):
    real = load_cohort(tiny_real).table
    real["fold"] = np.where(real.index < 10, "test", np.where(real.index < 16, "val", "train"))
    real.loc[real.subject_id == "s000", "fold"] = "test"
    data = prepare_data(real, DataConfig(split_column="fold", normalisation="none"))
    assert (data.table.split == data.table.fold).all()
    bad = real.copy()
    bad.loc[bad.index[0], "fold"] = "val"  # s000 session 1 in val, session 2 in test
    with pytest.raises(ValueError, match="more than one split"):
        prepare_data(bad, DataConfig(split_column="fold"))
    external = load_cohort(tiny_synthetic).table
    data = prepare_data(real, DataConfig(), test=external)
    assert set(data.table.loc[data.table.split == "test", "subject_id"]) == set(external.subject_id)


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    images = np.random.default_rng(0).normal(size=(3, 6, 7, 6)).astype(np.float32)
    ds = AgeDataset(images, np.arange(3.0), augment=True, seed=5)
    a = ds[1][0]
    ds.set_epoch(1)
    b = ds[1][0]
    ds.set_epoch(0)
    assert torch_equal(ds[1][0], a) and not torch_equal(a, b)
    assert sorted(a.flatten().tolist()) == pytest.approx(sorted(images[1].flatten().tolist()))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['lr_rate'\]"):
        config_from_dict({"train": {"lr_rate": 1}})
    with pytest.raises(
        ValueError,
        match=r"unknown key\(s\) \['optim'\]; expected some of \['data', 'eval', 'model', 'train'\]",
    ):
        config_from_dict({"optim": {}})
    with pytest.raises(ValueError, match="sfcn_kl"):
        config_from_dict({"train": {"loss": "sfcn_kl"}, "model": {"name": "small"}})
    with pytest.raises(ValueError, match="split_fractions"):
        config_from_dict({"data": {"split_fractions": [0.5, 0.5, 0.5]}})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "synthetic_ratio", -1.0),
        ("train", "epochs", 0),
        ("train", "batch_size", 0),
        ("train", "val_smoothing", 0),
    ],
)
def test_config_refuses_a_count_or_ratio_below_its_bound_naming_the_field(section, key, value):
    with pytest.raises(ValueError, match=rf"config {section}\.{key} = "):
        config_from_dict({section: {key: value}})
