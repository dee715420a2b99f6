"""Grids, resampling, templates and atlases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from flowlet.data.grid import MNI_2MM_AFFINE, Grid, mni_grid, resample_to_grid, same_grid
from flowlet.data.nifti import Volume, save_volume
from flowlet.data.templates import (
    brain_mask,
    list_atlases,
    list_templates,
    load_atlas,
    load_custom_atlas,
    load_template,
    load_tissue_priors,
)


@pytest.mark.parametrize(
    ("size", "shape"), [(1, (182, 218, 182)), (2, (91, 109, 91)), (4, (46, 55, 46)), (3, (61, 73, 61))]
)
def test_mni_grid_shapes_and_origin(size, shape):
    grid = mni_grid(size)
    assert grid.shape == shape
    np.testing.assert_allclose(grid.affine[:3, 3], [90, -126, -72])
    np.testing.assert_allclose(np.diag(grid.affine)[:3], [-size, size, size])
    assert grid.voxel_volume_mm3 == pytest.approx(size**3)


def test_mni_2mm_is_the_official_affine_and_grids_hash_equal():
    assert np.array_equal(mni_grid(2).affine, MNI_2MM_AFFINE)
    assert mni_grid(2) == Grid((91, 109, 91), MNI_2MM_AFFINE + 1e-7)
    assert hash(mni_grid(2)) == hash(Grid((91, 109, 91), MNI_2MM_AFFINE.copy()))
    assert mni_grid(2) != mni_grid(4)
    assert same_grid(MNI_2MM_AFFINE, (91, 109, 91), mni_grid(2).affine, mni_grid(2).shape)
    assert not same_grid(MNI_2MM_AFFINE, (91, 109, 91), mni_grid(2).affine, (91, 109, 90))


def test_resample_linear_reproduces_a_linear_ramp_and_nearest_keeps_labels():
    src_grid = mni_grid(4)
    world = (
        np.einsum("ij,jxyz->ixyz", src_grid.affine[:3, :3], np.indices(src_grid.shape))
        + src_grid.affine[:3, 3, None, None, None]
    )
    ramp = (0.5 * world[0] + 2.0 * world[2]).astype(np.float32)
    dst = mni_grid(8)
    out = resample_to_grid(Volume(ramp, src_grid.affine), dst)
    dst_world = (
        np.einsum("ij,jxyz->ixyz", dst.affine[:3, :3], np.indices(dst.shape))
        + dst.affine[:3, 3, None, None, None]
    )
    np.testing.assert_allclose(out.data, 0.5 * dst_world[0] + 2.0 * dst_world[2], atol=1e-3)
    labels = (np.arange(np.prod(src_grid.shape)) % 7).reshape(src_grid.shape).astype(np.int32)
    near = resample_to_grid(Volume(labels, src_grid.affine), dst, interpolation="nearest")
    assert near.data.dtype == np.int32
    assert set(np.unique(near.data)) <= set(range(7))
    np.testing.assert_array_equal(
        near.data, labels[::2, ::2, ::2][: dst.shape[0], : dst.shape[1], : dst.shape[2]]
    )


def test_resample_outside_is_zero():
    grid = mni_grid(4)
    shifted = grid.affine.copy()
    shifted[0, 3] += 1000.0
    out = resample_to_grid(Volume(np.ones(grid.shape, np.float32), shifted), grid)
    assert not out.data.any()


def test_templates_and_priors_on_grid():
    grid = mni_grid(4)
    assert "icbm152-t1" in list_templates()
    for name in list_templates():
        vol = load_template(name, grid)
        assert vol.data.shape == grid.shape and vol.data.dtype == np.float32
        assert vol.data.max() > 0
    priors = load_tissue_priors(grid)
    mask = brain_mask(grid)
    total = priors["gm"] + priors["wm"] + priors["csf"]
    np.testing.assert_allclose(total[mask], 1.0, atol=1e-5)
    assert not total[~mask].any()
    # Intracranial volume of the template: about 1.9 L; GM > WM > CSF.
    vols = {k: v.sum() * grid.voxel_volume_mm3 / 1e6 for k, v in priors.items()}
    assert 1.6 < sum(vols.values()) < 2.1
    assert vols["gm"] > vols["wm"] > vols["csf"]


def test_cached_arrays_are_read_only():
    grid = mni_grid(4)
    with pytest.raises(ValueError, match="read-only"):
        load_template("icbm152-gm", grid).data[0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        load_atlas("aal", grid).labels[0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        brain_mask(grid)[0, 0, 0] = True


@pytest.mark.parametrize("name", list_atlases())
@pytest.mark.parametrize("size", [4, 2])
def test_every_packaged_atlas_loads_on_mni_grids(name, size):
    grid = mni_grid(size)
    atlas = load_atlas(name, grid)
    assert atlas.labels.shape == grid.shape and atlas.labels.dtype == np.int32
    present = np.unique(atlas.labels)
    present = present[present != 0]
    assert present.size > 20
    assert set(present) <= set(atlas.table["index"])
    assert 0 not in set(atlas.table["index"])
    assert np.allclose(atlas.affine, grid.affine)


def test_harvard_oxford_index_zero_is_a_region_and_maps_to_label_one():
    atlas = load_atlas("harvard-oxford", mni_grid(2))
    names = atlas.region_names()
    assert len(names) == 113
    assert names[1] == "Left_Frontal_Pole" and names[113] == "Right_Accumbens"
    assert names[97] == "Left_Lateral_Ventricle"  # spelling fixed from the label file's "Ventrical"
    counts = np.bincount(atlas.labels.ravel(), minlength=114)
    assert counts[1] > 0 and counts[97] > 0 and counts[103] > 0
    # A higher threshold can only shrink the labelled region.
    strict = load_atlas("harvard-oxford", mni_grid(2), threshold=60)
    assert np.count_nonzero(strict.labels) < np.count_nonzero(atlas.labels)


def test_unknown_atlas_and_template_names():
    with pytest.raises(ValueError, match=r"unknown atlas 'nope'; choose from \["):
        load_atlas("nope")
    with pytest.raises(ValueError, match="unknown template"):
        load_template("nope")


def _custom(tmp_path, labels, rows):
    image = save_volume(tmp_path / "atlas.nii.gz", labels, np.diag([3.0, 3.0, 3.0, 1.0]), dtype=np.int16)
    table = tmp_path / "atlas.tsv"
    pd.DataFrame(rows, columns=["index", "name"]).to_csv(table, sep="\t", index=False)
    return image, table


def test_custom_atlas_round_trip_with_anisotropic_resampling(tmp_path):
    labels = np.zeros((6, 5, 4), np.int16)
    labels[:3] = 1
    labels[3:] = 2
    image, table = _custom(tmp_path, labels, [(0, "bg"), (1, "left"), (2, "right")])
    atlas = load_custom_atlas(image, table)
    assert atlas.region_names() == {1: "left", 2: "right"}
    np.testing.assert_array_equal(atlas.labels, labels)
    fine = Grid((11, 9, 7), np.diag([1.5, 1.5, 1.5, 1.0]))
    resampled = load_custom_atlas(image, table, fine)
    # Every second fine voxel sits exactly on a source voxel.
    np.testing.assert_array_equal(resampled.labels[::2, ::2, ::2], labels)
    assert set(np.unique(resampled.labels)) == {1, 2}


def test_custom_atlas_errors_name_the_file(tmp_path):
    labels = np.zeros((4, 4, 4), np.int16)
    labels[0] = 3
    image, table = _custom(tmp_path, labels, [(1, "a")])
    with pytest.raises(ValueError, match=r"labels \[3\] occur"):
        load_custom_atlas(image, table)
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tregion\n3\tx\n")
    with pytest.raises(ValueError, match="needs columns 'index' and 'name'"):
        load_custom_atlas(image, bad)
    with pytest.raises(ValueError, match="not found"):
        load_custom_atlas(image, tmp_path / "missing.tsv")
    float_img = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), str(float_img))
    with pytest.raises(ValueError, match="integer label image"):
        load_custom_atlas(float_img, table)
