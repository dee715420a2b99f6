"""The study's external test cohort: balanced phantom ages, a train/val-only split of the training cohort, and
subject ids that must not collide between the two cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowlet.data import keys
from pipelines.study.config import StudyConfigError, study_config_from_dict
from pipelines.study.runner import run_stages
from pipelines.study.stages import balanced_test_ages, build_stages


def test_balanced_ages_fill_every_bin_the_training_ages_span():
    ages = balanced_test_ages(np.array([8.4, 25.0, 31.0, 89.2]), per_bin=20, bin_width=10.0, seed=0)
    counts = pd.Series(np.floor(ages / 10) * 10).value_counts().sort_index()
    assert counts.index.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    assert (counts == 20).all()
    assert ages.min() >= 8.4 and ages.max() <= 89.2
    assert np.array_equal(ages, balanced_test_ages(np.array([8.4, 89.2]), per_bin=20, bin_width=10.0, seed=0))


def _raw(prefix: str) -> dict:
    return {
        "cohort": {"phantoms": {"n": 6, "voxel_size": 4, "age_hist": "uniform", "sites": 2, "seed": 3}},
        "test": {"phantoms": {"per_bin": 1, "bin_width": 40.0, "seed": 9, "label_prefix": prefix}},
        "split": {"fractions": [0.6, 0.4, 0.0], "seed": 0, "age_bin_width": 40.0, "stratify_site": False},
        "generator": {"checkpoint": "demo"},
        "bap": {"arms": ["real"]},
    }


def test_external_test_cohort_is_the_test_split_and_the_training_cohort_gives_train_and_val(tmp_path):
    config = study_config_from_dict(_raw("test"))
    results = run_stages(tmp_path, build_stages(config), config.to_dict(), stop_after="split")
    table = pd.read_csv(tmp_path / results["split"].outputs["split"], sep="\t", dtype=str)
    test = table[table[keys.SPLIT] == "test"]
    assert len(test) == results["cohort"].outputs["n_test_scans"] >= 2
    assert test[keys.SUBJECT_ID].str.startswith("test").all()
    own = table[table[keys.SPLIT] != "test"]
    assert set(own[keys.SPLIT]) == {"train", "val"} and len(own) == 6


def test_colliding_subject_ids_are_refused_and_named(tmp_path):
    config = study_config_from_dict(_raw(""))
    with pytest.raises(ValueError, match=r"also in the training cohort: \['0001'"):
        run_stages(tmp_path, build_stages(config), config.to_dict(), stop_after="cohort")


def test_test_section_needs_one_source():
    raw = _raw("test")
    raw["test"]["path"] = "/somewhere"
    with pytest.raises(StudyConfigError, match="test needs exactly one"):
        study_config_from_dict(raw)
