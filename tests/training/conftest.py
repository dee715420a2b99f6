"""Shared fixtures: a tiny on-disk cohort and the tiny training config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from configs import config_path
from flowlet.data.nifti import save_volume
from flowlet.training.config import load_train_config

AFFINE = np.diag([-4.0, 4.0, 4.0, 1.0])


def make_cohort(root, n_subjects: int = 12, shape=(7, 8, 6)) -> str:
    """Write ``n_subjects`` small volumes whose bright blob grows with age; return the table path."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    rows = []
    for i in range(n_subjects):
        age = 20.0 + 60.0 * i / (n_subjects - 1)
        data = (radius < 1.0 + 2.0 * age / 80.0).astype(np.float32) + 0.05 * rng.standard_normal(shape)
        path = root / f"sub-{i:02d}_T1w.nii.gz"
        save_volume(path, data.astype(np.float32), AFFINE)
        rows.append({"subject_id": f"{i:02d}", "path": str(path), "age": age, "sex": "F", "site": "a"})
    table = root / "cohort.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    return str(table)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> str:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def tiny_config(tiny_cohort, tmp_path):
    """Build the tiny config with the cohort and a fresh run folder; extra overrides as arguments."""
    torch.set_num_threads(1)

    def build(*overrides: str, run: str = "run"):
        return load_train_config(
            config_path("flowlet", "tiny"),
            [f"data.source={tiny_cohort}", f"runtime.run_dir={tmp_path / run}", *overrides],
        )

    return build
