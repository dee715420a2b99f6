"""Preprocessing: the official normalisation and padding fixture, pad/crop inverses, reorientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowlet.data.nifti import Volume
from flowlet.data.preprocessing import (
    centre_crop,
    centre_pad,
    crop_start,
    minmax_to_unit,
    reorient_to_ras,
    resample_like,
    robust_normalize,
    zscore,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "preprocess.pt"


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def test_official_normalisation_and_padding(official: dict) -> None:
    normalized = robust_normalize(official["raw"].numpy())
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, official["normalized"].numpy(), rtol=0, atol=1e-6)
    padded = centre_pad(normalized, official["target_size"])
    np.testing.assert_allclose(padded.array, official["padded"].numpy(), rtol=0, atol=1e-6)
    assert [list(p) for p in padded.pad_width] == official["pad_before_after"]


def test_normalisation_formula_by_hand() -> None:
    x = np.arange(201, dtype=np.float32)  # percentiles 0.5/99.5 of 0..200 are exactly 1 and 199
    y = robust_normalize(x)
    assert y[0] == y[1] == -1.0
    assert y[-1] == y[-2] == 1.0
    assert y[100] == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_array_equal(robust_normalize(np.full((3, 3, 3), 7.0)), np.zeros((3, 3, 3)))


def test_normalisation_mask_ignores_background() -> None:
    x = np.zeros((10, 10, 10), dtype=np.float32)
    x[2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    mask = x > 0
    y = robust_normalize(x, 0, 100, mask=mask)
    assert y[mask].min() == -1.0
    assert y[mask].max() == 1.0
    assert robust_normalize(x, 0, 100)[mask].min() == 0.0  # background 0 takes -1, the brain only [0, 1]
    with pytest.raises(ValueError, match="empty"):
        robust_normalize(x, mask=np.zeros_like(mask))


@pytest.mark.parametrize("seed", range(6))
def test_pad_then_crop_is_identity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(2, 9, size=3))
    target = tuple(s + int(p) for s, p in zip(shape, rng.integers(0, 6, size=3)))  # odd and even pads
    x = rng.normal(size=shape)
    padded = centre_pad(x, target)
    assert padded.array.shape == target
    np.testing.assert_array_equal(centre_crop(padded.array, shape), x)
    for (before, after), s, t in zip(padded.pad_width, shape, target):
        assert before == (t - s) // 2
        assert before + after == t - s
    assert crop_start(target, shape) == tuple(b for b, _ in padded.pad_width)


def test_official_export_crop_start() -> None:
    assert crop_start((112, 112, 112), (91, 109, 91)) == (10, 1, 10)
    result = centre_pad(np.zeros((91, 109, 91)), (112, 112, 112))
    assert result.pad_width == ((10, 11), (1, 2), (10, 11))


def test_edge_padding_replicates_border() -> None:
    x = np.arange(3.0).reshape(3, 1, 1)
    out = centre_pad(x, (6, 1, 1)).array[:, 0, 0]
    np.testing.assert_array_equal(out, [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(
        centre_pad(x, (6, 1, 1), mode="constant").array[:, 0, 0], [0, 0, 1, 2, 0, 0]
    )


def test_larger_input_refused_unless_cropping() -> None:
    x = np.arange(7 * 4 * 3, dtype=float).reshape(7, 4, 3)
    with pytest.raises(ValueError, match="larger than the target"):
        centre_pad(x, (5, 6, 3))
    out = centre_pad(x, (5, 6, 3), crop_larger=True)
    assert out.array.shape == (5, 6, 3)
    np.testing.assert_array_equal(out.array[:, 1:5, :], x[1:6])
    with pytest.raises(ValueError, match="larger shape"):
        centre_crop(x, (8, 4, 3))


def test_minmax_and_zscore() -> None:
    x = np.array([2.0, 4.0, 6.0])
    np.testing.assert_allclose(minmax_to_unit(x), [0, 0.5, 1])
    np.testing.assert_allclose(zscore(x), [-np.sqrt(1.5), 0, np.sqrt(1.5)], rtol=1e-6)
    np.testing.assert_allclose(zscore(x, mask=np.array([True, True, False])), [-1, 1, 3])
    np.testing.assert_array_equal(minmax_to_unit(np.ones(4)), np.zeros(4))


def test_reorient_to_ras_keeps_world_coordinates() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(3, 4, 5)).astype(np.float32)
    # voxel axes: i -> -x (LAS-like), j -> z, k -> y, anisotropic and shifted
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 3.0, -5], [0, 1.5, 0, 7], [0, 0, 0, 1]])
    out = reorient_to_ras(Volume(data=data, affine=affine))
    assert out.shape == (3, 5, 4)
    assert np.all(np.diag(out.affine)[:3] > 0)
    np.testing.assert_allclose(out.affine[:3, :3], np.diag([2.0, 3.0, 1.5]))
    for index in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        world = affine @ np.array([*index, 1.0])
        new_index = np.linalg.solve(out.affine, world)[:3]
        assert np.allclose(new_index, np.round(new_index))
        assert out.data[tuple(np.round(new_index).astype(int))] == data[index]
    same = Volume(data=data, affine=np.diag([1.0, 2.0, 3.0, 1.0]))
    assert reorient_to_ras(same) is same


def test_resample_like_onto_same_and_coarser_grid() -> None:
    from flowlet.data.grid import Grid

    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[2, 1, 3] = 5.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    volume = Volume(data=data, affine=affine)
    same = resample_like(volume, volume)
    np.testing.assert_array_equal(same.data, data)
    # a 4 mm grid shifted by one 2 mm voxel picks voxel (2*i+1, ...) of the source
    shifted = affine.copy()
    shifted[:3, :3] *= 2
    shifted[:3, 3] = 2.0
    out = resample_like(volume, Grid(shape=(2, 2, 2), affine=shifted), interpolation="nearest")
    np.testing.assert_array_equal(out.affine, shifted)
    assert out.data[0, 0, 1] == 0.0
    assert out.data.sum() == 0.0  # (2,1,3) is not of the form (2i+1, 2j+1, 2k+1)
    data[1, 1, 3] = 7.0
    out = resample_like(Volume(data=data, affine=affine), Grid(shape=(2, 2, 2), affine=shifted))
    assert out.data[0, 0, 1] == pytest.approx(7.0)
