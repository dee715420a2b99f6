"""A phantom moved by a known affine, put on an oblique grid and bias-corrupted comes back to MNI space."""

from __future__ import annotations

import numpy as np
import pytest
from prep_synthetic import make_raw_scan, phantom

from flowlet.data.grid import mni_grid, resample_array
from flowlet.data.nifti import Volume
from flowlet.data.phantom.anatomy import phantom_anatomy
from flowlet.data.prep.measures import normalized_cross_correlation
from flowlet.data.preprocessing import reorient_to_ras

ants = pytest.importorskip("ants")

from flowlet.data.prep import PrepConfig, register_scan  # noqa: E402

#: Regions at least this large (mm³) are compared; smaller ones are a handful of voxels at 4 mm.
_MIN_REGION_MM3 = 10_000.0


def _round_trip(voxel_size: float, raw_voxel_mm: tuple[float, float, float]) -> dict[str, float]:
    truth = phantom(voxel_size)
    scan = make_raw_scan(voxel_size, raw_voxel_mm)
    raw = reorient_to_ras(Volume(scan.image, scan.affine))
    labels = reorient_to_ras(Volume(scan.labels, scan.affine))
    result = register_scan(raw.data, raw.affine, PrepConfig(voxel_size=voxel_size))
    grid = mni_grid(voxel_size)
    # The raw-space ground truth is carried through the recovered transform (soft counts, no rounding bias).
    labels_in_mni = np.linalg.inv(result.transform) @ labels.affine
    table = phantom_anatomy(grid).table
    errors = []
    for index in table["index"]:
        true_mm3 = float((truth.labels == index).sum()) * grid.voxel_volume_mm3
        if true_mm3 >= _MIN_REGION_MM3:
            indicator = (labels.data == index).astype(np.float32)
            found_mm3 = float(resample_array(indicator, labels_in_mni, grid).sum()) * grid.voxel_volume_mm3
            errors.append(found_mm3 / true_mm3 - 1.0)
    points = grid.affine @ np.vstack(
        [np.argwhere(truth.labels > 0).T, np.ones((1, int((truth.labels > 0).sum())))]
    )
    displacement = np.linalg.norm(((result.transform - scan.transform) @ points)[:3], axis=0)
    return {
        "correlation": normalized_cross_correlation(result.image, truth.image),
        "max_volume_error": float(np.max(np.abs(errors))),
        "n_regions": len(errors),
        "mean_displacement_mm": float(displacement.mean()),
        "template_ncc": result.qc["ncc"],
    }


def _check(numbers: dict[str, float], voxel_size: float) -> None:
    assert numbers["correlation"] >= 0.9, numbers
    assert numbers["max_volume_error"] <= 0.05, numbers
    assert numbers["n_regions"] >= 20, numbers
    assert numbers["mean_displacement_mm"] < voxel_size, numbers


def test_round_trip_4mm():
    _check(_round_trip(4.0, (2.0, 2.0, 2.2)), 4.0)


@pytest.mark.slow
def test_round_trip_2mm_from_1mm_raw():
    _check(_round_trip(2.0, (1.0, 1.0, 1.1)), 2.0)
