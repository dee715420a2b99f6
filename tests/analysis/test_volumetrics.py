import logging

import numpy as np
import pandas as pd
import pytest

from analysis.region_volumes import WHOLE_BRAIN, combine_regions, label_volumes
from analysis.tissue_maps import LabelTissueSegmenter
from analysis.volumetrics import RegionVolumetrics
from flowlet.data.grid import Grid
from flowlet.data.nifti import Volume
from flowlet.data.templates import Atlas

# Oblique, anisotropic voxels: a rotation times diag(0.8, 1.3, 2.5) mm, so |det| = 2.6 mm³.
_C, _S = np.cos(0.3), np.sin(0.3)
AFFINE = np.eye(4)
AFFINE[:3, :3] = np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, 1]]) @ np.diag([0.8, 1.3, 2.5])
AFFINE[:3, 3] = [10.0, -20.0, 5.0]
VOXEL = 2.6


def _atlas_and_tissue():
    regions = np.zeros((6, 5, 4), np.int32)
    regions[:3] = 1
    regions[3:5, :, :2] = 2  # region 3 is named but absent
    tissue = np.zeros((6, 5, 4), np.int32)
    tissue[:, :2] = 2  # gm
    tissue[:, 2:4] = 3  # wm
    tissue[:, 4, :3] = 1  # csf
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["left", "right", "absent"]})
    atlas = Atlas(name="hand", labels=regions, affine=AFFINE, table=table)
    return atlas, regions, tissue


def test_label_volumes_exact_with_anisotropic_oblique_affine():
    _, regions, _ = _atlas_and_tissue()
    out = label_volumes(regions, AFFINE, names={1: "left", 2: "right", 3: "absent"}).set_index("region")
    assert out.loc["left", "n_voxels"] == 60
    assert out.loc["left", "volume_mm3"] == pytest.approx(60 * VOXEL, rel=1e-12)
    assert out.loc["right", "volume_mm3"] == pytest.approx(20 * VOXEL, rel=1e-12)
    assert out.loc["absent", "volume_mm3"] == 0.0
    with pytest.raises(ValueError, match="integer"):
        label_volumes(regions.astype(float), AFFINE)


def test_region_tissue_volumes_exact():
    atlas, regions, tissue = _atlas_and_tissue()
    vol = RegionVolumetrics(atlas, segmenter=LabelTissueSegmenter()).fit()
    table = vol.transform([Volume(tissue.astype(np.float32), AFFINE)], subject_ids=["sub1"])
    got = table.set_index(["region", "tissue"])["volume_mm3"]
    for name, idx in (("left", 1), ("right", 2)):
        for t_name, t_val in (("csf", 1), ("gm", 2), ("wm", 3)):
            expected = np.sum((regions == idx) & (tissue == t_val)) * VOXEL
            assert got[(name, t_name)] == pytest.approx(expected, rel=1e-12)
        assert got[(name, "all")] == pytest.approx(np.sum((regions == idx) & (tissue > 0)) * VOXEL)
    assert got[("absent", "gm")] == 0.0
    assert got[(WHOLE_BRAIN, "gm")] == pytest.approx(np.sum(tissue == 2) * VOXEL)
    mean = table.set_index(["region", "tissue"])["mean_intensity"]
    assert mean[("left", "wm")] == pytest.approx(3.0)
    assert np.isnan(mean[("absent", "gm")])
    assert set(table.columns) >= {"subject_id", "region", "tissue", "volume_mm3", "mean_intensity"}


def test_off_grid_image_is_resampled_and_logged(caplog):
    atlas, regions, tissue = _atlas_and_tissue()
    fine = np.repeat(np.repeat(np.repeat(tissue, 2, 0), 2, 1), 2, 2).astype(np.float32)
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] = AFFINE[:3, :3] / 2
    # voxel centres of the fine grid: shift by a quarter coarse voxel so that coarse centres fall inside blocks
    fine_affine[:3, 3] = AFFINE[:3, 3] - AFFINE[:3, :3] @ np.full(3, 0.25)
    vol = RegionVolumetrics(atlas, segmenter=LabelTissueSegmenter()).fit()
    with caplog.at_level(logging.WARNING):
        table = vol.transform([Volume(fine, fine_affine)], subject_ids=["s"])
    assert "resampling" in caplog.text
    got = table.set_index(["region", "tissue"])["volume_mm3"]
    assert got[("left", "gm")] == pytest.approx(np.sum((regions == 1) & (tissue == 2)) * VOXEL)


def test_combine_regions_sums_volumes_and_weights_intensity():
    t = pd.DataFrame(
        {
            "subject_id": "s",
            "region_index": [1, 2],
            "region": ["l", "r"],
            "tissue": "csf",
            "volume_mm3": [10.0, 30.0],
            "mean_intensity": [1.0, 2.0],
        }
    )
    out = combine_regions(t, {"both": ["l", "r"]}).set_index("region")
    assert out.loc["both", "volume_mm3"] == 40.0
    assert out.loc["both", "mean_intensity"] == pytest.approx(1.75)
    with pytest.raises(ValueError, match="not in the table"):
        combine_regions(t, {"x": ["nope"]})


def test_fit_is_required():
    atlas, _, tissue = _atlas_and_tissue()
    with pytest.raises(RuntimeError, match="not fitted"):
        RegionVolumetrics(atlas).transform([Volume(tissue.astype(np.float32), AFFINE)])


def test_grid_of_custom_atlas():
    atlas, _, _ = _atlas_and_tissue()
    vol = RegionVolumetrics(atlas, segmenter=LabelTissueSegmenter()).fit()
    assert vol.grid_ == Grid(shape=(6, 5, 4), affine=AFFINE)
