"""``bap-train``: which scans are on an MNI grid (for the ridge baseline's volumes) and how ``summary.json`` is
written."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from bap_helpers import tiny_run_sets

from flowlet.data.grid import mni_grid
from pipelines import bap_train


@pytest.mark.parametrize("size", [1.0, 1.5, 2.0, 3.0, 4.0])
def test_scans_on_every_mni_grid_that_cohorts_read_are_recognised(tmp_path, size):
    grid = mni_grid(size)
    data = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
    path = tmp_path / f"mni_{size}.nii.gz"
    nib.save(nib.Nifti1Image(data, grid.affine), path)
    found = bap_train._on_mni_grid(str(path))
    assert found is not None, f"a {size} mm MNI scan was not recognised"
    assert found.shape == grid.shape and np.allclose(found.affine, grid.affine)


def test_a_scan_off_the_mni_grids_is_not_recognised(tmp_path):
    grid = mni_grid(2.0)
    shifted = grid.affine.copy()
    shifted[0, 3] += 1.0  # half a voxel off
    path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(grid.shape, dtype=np.float32), shifted), path)
    assert bap_train._on_mni_grid(str(path)) is None


def test_summary_is_written_once_with_the_baseline_results(tiny_real, tmp_path, monkeypatch):
    writes = []
    replace = os.replace

    def counting_replace(source, target, *args, **kwargs):
        if os.path.basename(target) == "summary.json":
            writes.append(target)
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", counting_replace)
    out = tmp_path / "run"
    argv = ["--real", str(tiny_real), "--config", "demo", "--epochs", "1", "--no-progress", "--out", str(out)]
    assert bap_train.main([*argv, *tiny_run_sets(5)]) == 0
    assert len(writes) == 1, writes
    summary = json.loads((out / "summary.json").read_text())
    assert {"cnn", "mean-age"} <= set(summary["results_mae_years"])
    assert "bias_correction_check" in summary  # what the training wrote is kept
