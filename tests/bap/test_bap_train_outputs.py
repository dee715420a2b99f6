"""``bap-train``: which scans are on an MNI grid (for the ridge baseline's volumes) and how ``summary.json`` is
written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

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
