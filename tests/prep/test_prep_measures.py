"""The pure maths of preprocessing, on hand-built arrays (no ANTs needed)."""

from __future__ import annotations

import numpy as np
import pytest

from flowlet.data.prep.ants_backend import ants_affine_to_ras
from flowlet.data.prep.measures import (
    dice,
    head_mask,
    intensity_brain_mask,
    largest_component,
    mutual_information,
    normalized_cross_correlation,
    otsu_threshold,
    refine_brain_mask,
    robust_z,
    scale_factors,
)


def _ball(shape, centre, radius):
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_otsu_splits_two_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 1, 5000), rng.normal(50, 2, 3000)])
    threshold = otsu_threshold(values)
    # Any threshold in the empty gap between the clusters maximises the between-class variance.
    assert (values[:5000] <= threshold + 0.5).all() and (values[5000:] > threshold).all()
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_robust_z_matches_hand_computation():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    # median 3, MAD = median(|[-2,-1,0,1,97]|) = 1 -> scale 1.4826
    z = robust_z(values)
    np.testing.assert_allclose(z[:5], (values[:5] - 3.0) / 1.4826)
    assert np.isnan(z[5])
    np.testing.assert_array_equal(robust_z(np.ones(4)), np.zeros(4))


def test_ncc_is_invariant_to_affine_intensity_changes_and_mi_detects_dependence():
    rng = np.random.default_rng(1)
    a = rng.random((8, 9, 10))
    assert normalized_cross_correlation(a, 3 * a + 2) == pytest.approx(1.0)
    assert normalized_cross_correlation(a, -a) == pytest.approx(-1.0)
    mask = np.zeros(a.shape, dtype=bool)
    mask[2:6] = True
    assert normalized_cross_correlation(a, a + 5 * ~mask, mask) == pytest.approx(1.0)
    independent = rng.random(a.shape)
    assert mutual_information(a, a, bins=8) == pytest.approx(np.log(8), rel=0.05)
    assert mutual_information(a, independent, bins=8) < 0.1


def test_largest_component_and_head_mask():
    shape = (30, 30, 30)
    big, small = _ball(shape, (12, 12, 12), 8), _ball(shape, (26, 26, 26), 2)
    np.testing.assert_array_equal(largest_component(big | small), big)
    image = np.where(big, 100.0, 0.0) + np.where(small, 80.0, 0.0)
    image[_ball(shape, (12, 12, 12), 3)] = 0  # a dark hole inside is filled
    np.testing.assert_array_equal(head_mask(image), big)


def test_intensity_brain_mask_peels_skull_and_scalp_off_a_head():
    """Brain (radius 12, dark ventricle inside), dark skull to 15, bright scalp to 17, touching the brain through a
    one-voxel bridge; air outside."""
    shape = (44, 44, 44)
    centre = (22, 22, 22)
    brain = _ball(shape, centre, 12)
    image = np.where(_ball(shape, centre, 17), 120.0, 0.0)  # scalp
    image[_ball(shape, centre, 15)] = 5.0  # skull
    image[brain] = 100.0
    image[_ball(shape, centre, 3)] = 20.0  # ventricle
    image[22, 22, 34:39] = 100.0  # bridge through the skull
    mask = intensity_brain_mask(image)
    assert dice(mask, brain) > 0.97
    assert not mask[~_ball(shape, centre, 14)].any()  # no scalp
    assert mask[_ball(shape, centre, 3)].all()  # the ventricle is inside
    assert not intensity_brain_mask(np.zeros(shape)).any()


def test_dice_and_scale_factors_by_hand():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(2 * 16 / 64)
    assert dice(a, a) == 1.0 and dice(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:2])
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([1.1, 0.9, 1.0])
    matrix[:3, 3] = [5, -3, 8]
    np.testing.assert_allclose(scale_factors(matrix), [1.1, 1.0, 0.9])
    assert np.prod(scale_factors(matrix)) == pytest.approx(abs(np.linalg.det(matrix[:3, :3])))


def test_refine_brain_mask_follows_the_subject_border():
    """Prior: radius 10; the subject's brain has radius 12 inside dark CSF and bright fat further out."""
    shape = (40, 40, 40)
    centre = (20, 20, 20)
    brain = _ball(shape, centre, 12)
    image = np.where(brain, 100.0, 10.0)
    image[~_ball(shape, centre, 14)] = 400.0  # fat: far brighter than any brain voxel
    prior = _ball(shape, centre, 10)
    mask = refine_brain_mask(image, prior, margin_vox=3)
    np.testing.assert_array_equal(mask, brain)
    shrunk = refine_brain_mask(np.where(_ball(shape, centre, 9), 100.0, 10.0), prior, margin_vox=3)
    assert _ball(shape, centre, 7).sum() < shrunk.sum() < prior.sum()


def test_itk_affine_parameters_convert_to_the_ras_matrix():
    """Build ITK parameters (LPS, centred) from a known RAS map and convert back."""
    ras = np.eye(4)
    angle = np.deg2rad(10)
    ras[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ras[:3, :3] *= [1.05, 0.95, 1.0]
    ras[:3, 3] = [10.0, -5.0, 3.0]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ ras @ flip
    centre = np.array([4.0, -2.0, 7.0])
    translation = lps[:3, 3] - centre + lps[:3, :3] @ centre
    params = np.concatenate([lps[:3, :3].ravel(), translation])
    np.testing.assert_allclose(ants_affine_to_ras(params, centre), ras, atol=1e-12)
    with pytest.raises(ValueError, match="12 affine parameters"):
        ants_affine_to_ras(params[:9], centre)
