"""Quality-check metrics on hand-built volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.generator_check import (
    VentricleVolumeMeter,
    histogram_distance,
    intensity_histogram,
    quality_check,
)


def _images(csf_voxels: list[int], shape=(4, 4, 4)) -> np.ndarray:
    out = np.full((len(csf_voxels), *shape), 0.9, np.float32)
    for i, k in enumerate(csf_voxels):
        out[i].reshape(-1)[:k] = 0.1
    return out


def test_meter_counts_csf_with_partial_volume():
    region = np.zeros((4, 4, 4), bool)
    region[:2] = True  # the first 32 voxels in C order
    ref = _images([0, 16])
    meter = VentricleVolumeMeter(
        region, voxel_volume_mm3=2.0 * 3.0 * 4.0, low_percentile=0, high_percentile=100
    )
    meter.fit(ref)
    assert (meter.lo_, meter.hi_) == pytest.approx((0.1, 0.9))
    np.testing.assert_allclose(meter.transform(_images([0, 5, 20])), [0.0, 5 * 24.0, 20 * 24.0])
    half = np.full((1, 4, 4, 4), 0.5, np.float32)  # midway intensity = half CSF in every region voxel
    assert meter.transform(half)[0] == pytest.approx(32 * 0.5 * 24.0)
    outside = _images([0])
    outside[0, 3] = 0.1  # dark voxels outside the region do not count
    assert meter.transform(outside)[0] == 0.0


def test_meter_errors():
    with pytest.raises(ValueError, match="empty"):
        VentricleVolumeMeter(np.zeros((2, 2, 2), bool), 1.0)
    meter = VentricleVolumeMeter(np.ones((2, 2, 2), bool), 1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        meter.transform(np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match="do not match"):
        meter.fit(np.zeros((1, 3, 2, 2)))


def test_histogram_distances():
    p = np.array([1.0, 0.0, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.0, 1.0])
    assert histogram_distance(p, p) == {"total_variation": 0.0, "wasserstein_1": 0.0}
    d = histogram_distance(p, q)
    assert d["total_variation"] == pytest.approx(1.0)
    assert d["wasserstein_1"] == pytest.approx(0.75)  # mass moved 3 bins of width 1/4
    hist = intensity_histogram(np.array([[0.0, 0.1, 0.6, 1.0]]), bins=2)
    np.testing.assert_allclose(hist, [0.5, 0.5])


def test_quality_check_rank_correlation():
    region = np.ones((4, 4, 4), bool)
    ref = _images([4, 30])
    gen = _images([5, 6, 20, 25])
    meter = VentricleVolumeMeter(region, 1.0, low_percentile=0, high_percentile=100)
    report = quality_check(gen, [20, 40, 60, 80], [0, 1, 2, 3], ref, [30.0, 70.0], meter)
    assert report.spearman_rho == pytest.approx(1.0)
    assert report.samples["ventricle_volume_mm3"].tolist() == pytest.approx([5, 6, 20, 25])
    assert report.histogram["total_variation"] == pytest.approx(abs(14 / 64 - 17 / 64))
    with pytest.raises(ValueError, match="must match"):
        quality_check(gen, [20], [0], ref, [30.0, 70.0], meter)
