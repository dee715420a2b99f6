import numpy as np
import pytest
from scipy import ndimage

from analysis.metrics import (
    FEATURE_NAMES,
    frechet_distance,
    handcrafted_features,
    memorisation_audit,
    mmd,
    ms_ssim,
    ms_ssim_diversity,
    nearest_neighbours,
    standardise_features,
)


def _blobs(n: int, seed: int, shape=(24, 28, 24)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
        x = 1.0 + x / x.std() * 0.3
        x[:2] = 0
        x[-2:] = 0
        out.append(x)
    return out


def test_ms_ssim_identity_and_monotone_in_noise():
    x = _blobs(1, 0)[0]
    rng = np.random.default_rng(1)
    assert ms_ssim(x, x) == pytest.approx(1.0)
    low = ms_ssim(x, x + rng.normal(0, 0.05, x.shape))
    high = ms_ssim(x, x + rng.normal(0, 0.3, x.shape))
    assert 1.0 > low > high > 0.0


def test_ms_ssim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)))


def test_diversity_detects_collapse():
    varied = _blobs(4, 2)
    collapsed = [varied[0] + 0.01 * k for k in range(4)]
    assert ms_ssim_diversity(collapsed)["ms_ssim_mean"] > 0.95
    assert ms_ssim_diversity(varied)["ms_ssim_mean"] < ms_ssim_diversity(collapsed)["ms_ssim_mean"] - 0.2


def test_features_are_scale_free_and_see_blur():
    x = _blobs(1, 3)[0]
    f = handcrafted_features(x)
    assert f.shape == (len(FEATURE_NAMES),)
    np.testing.assert_allclose(handcrafted_features(1000.0 * x), f, rtol=1e-6, atol=1e-9)
    blurred = handcrafted_features(ndimage.gaussian_filter(x, 2.0) * (x != 0))
    for name in ("laplacian_abs_mean", "fine_energy_ratio"):
        g = FEATURE_NAMES.index(name)
        assert blurred[g] < 0.7 * f[g]


def test_blurred_set_is_far_in_feature_space_halves_are_not():
    real = np.stack([handcrafted_features(v) for v in _blobs(12, 4, shape=(16, 18, 16))])
    other = np.stack([handcrafted_features(v) for v in _blobs(12, 5, shape=(16, 18, 16))])
    blur = np.stack(
        [
            handcrafted_features(ndimage.gaussian_filter(v, 1.5) * (v != 0))
            for v in _blobs(12, 5, shape=(16, 18, 16))
        ]
    )
    r, o, b = standardise_features(real, other, blur)
    assert mmd(r, b) > 5 * max(mmd(r, o), 0.01)
    # Fréchet distance of 85 features from 12 images is dominated by covariance noise; the mean term still shows.
    assert frechet_distance(r, b) > 2 * frechet_distance(r, o)


def test_nearest_neighbours_exact():
    ref = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    idx, corr = nearest_neighbours(np.array([[10.0, 20.0, 30.0, 41.0], [0.0, 0.0, 0.0, 1.0]]), ref)
    assert idx.tolist() == [0, 0]
    assert corr[0] > 0.99
    with pytest.raises(ValueError, match="constant"):
        nearest_neighbours(np.ones((1, 4)), ref)


def test_memorisation_audit_flags_copies_only():
    vols = [v.ravel() for v in _blobs(30, 6, shape=(12, 14, 12))]
    train, holdout, novel = np.stack(vols[:14]), np.stack(vols[14:22]), np.stack(vols[22:])
    rng = np.random.default_rng(0)
    copies = train[:8] + rng.normal(0, 0.01, train[:8].shape)
    synthetic = np.vstack([novel, copies])
    ages = np.r_[np.full(8, 30.0), np.full(8, 70.0)]
    audit = memorisation_audit(
        synthetic,
        train,
        holdout,
        synthetic_ids=[f"s{i}" for i in range(16)],
        synthetic_ages=ages,
        train_ids=[f"t{i}" for i in range(14)],
        holdout_ids=[f"h{i}" for i in range(8)],
        quantile=1.0,
    )
    flagged = audit.per_image.set_index("synthetic_id")["flagged"]
    assert flagged.iloc[8:].all()
    assert flagged.iloc[:8].mean() <= 0.25
    assert audit.per_image["nearest_train_id"].iloc[8:].tolist() == [f"t{i}" for i in range(8)]
    rates = audit.by_age_bin.set_index("age_bin")["flag_rate"]
    assert rates["[70, 80)"] == 1.0
    assert rates["[30, 40)"] <= 0.25
