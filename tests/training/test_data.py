"""Training data: preprocessing cache, Haar items, seeded augmentation, condition normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from flowlet.data.cohort import load_cohort
from flowlet.training.config import AugmentConfig, DataConfig
from flowlet.training.data import (
    WaveletDataset,
    compute_condition_ranges,
    normalize_condition,
    preprocess_volume,
    split_cohort,
)
from flowlet.wavelets import idwt3d


def test_preprocess_pads_normalises_and_caches(tiny_cohort, tmp_path):
    cfg = DataConfig(image_size=(8, 8, 8), cache_dir=str(tmp_path / "cache"))
    path = pd.read_csv(tiny_cohort, sep="\t")["path"][0]
    x = preprocess_volume(path, cfg)
    assert x.shape == (8, 8, 8) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros((8, 8, 8), np.float32))  # a second call must read the cache
    assert not preprocess_volume(path, cfg).any()


def test_dataset_items_invert_to_the_volume(tiny_cohort):
    table = load_cohort(tiny_cohort).table
    cfg = DataConfig(image_size=(8, 8, 8), augment=AugmentConfig(noise_prob=1.0, noise_std=0.5))
    ranges = compute_condition_ranges(table, ("Age",), ("age",))
    data = WaveletDataset(table, cfg, ("Age",), ranges, augment=True)
    item = data[3]
    assert item["image"].shape == (8, 4, 4, 4)
    volume = idwt3d(item["image"][None])[0, 0].numpy()
    np.testing.assert_allclose(volume, data.volume(3), atol=1e-6)
    age = table["age"][3]
    assert item["conditions"]["Age"].item() == pytest.approx((age - 20.0) / 60.0, rel=1e-6)
    a, b, c = data[(3, 11)], data[(3, 11)], data[(3, 12)]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])


def test_condition_helpers():
    assert normalize_condition(np.array([0.0, 5.0, 20.0]), 0.0, 10.0).tolist() == [0.0, 0.5, 1.0]
    assert normalize_condition(3.0, 2.0, 2.0) == 0.5
    with pytest.raises(KeyError, match="'years'"):
        compute_condition_ranges(pd.DataFrame({"age": [1.0]}), ("Age",), ("years",))


def test_split_is_by_subject(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    split = split_cohort(cohort, 0.25, seed=1)
    assert len(split.train) + len(split.val) == len(cohort)
    assert not set(split.train.subjects()) & set(split.val.subjects())
    assert len(split_cohort(cohort, 0.0, seed=1).val) == 0
