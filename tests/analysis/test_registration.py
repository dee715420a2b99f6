import numpy as np
import pytest
from scipy import ndimage

from analysis.config import EvalConfig
from analysis.registration import (
    block_mean,
    demons_register,
    similarity_displacement,
    upsample_displacement,
    warp,
)
from analysis.volumetrics import grow_csf_structures


def _ball(shape, centre, radius):
    r = np.linalg.norm(np.indices(shape) - np.asarray(centre, float)[:, None, None, None], axis=0)
    return (r < radius).astype(np.float32)


def test_similarity_displacement_maps_centre_and_scale():
    moving = _ball((32, 32, 32), (16, 16, 16), 8)
    fixed = _ball((32, 32, 32), (14, 17, 15), 10)
    u = similarity_displacement(fixed > 0, moving > 0)
    warped = warp(moving, u)
    assert np.sum(np.abs(warped - fixed)) / fixed.sum() < 0.15


def test_demons_recovers_a_smooth_shift():
    moving = ndimage.gaussian_filter(_ball((24, 24, 24), (12, 12, 12), 6) * 3.0, 1.0)
    fixed = ndimage.shift(moving, (1.5, -1.0, 0.5), order=1)
    u = demons_register(fixed, moving, factors=(2, 1), iterations=40)
    before = np.abs(moving - fixed).mean()
    after = np.abs(warp(moving, u) - fixed).mean()
    assert after < 0.3 * before
    centre = u[:, 12, 12, 12]
    np.testing.assert_allclose(centre, [-1.5, 1.0, -0.5], atol=0.4)


def test_block_mean_and_upsampling_are_consistent():
    x = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    assert block_mean(x, 2).shape == (2, 3, 1)
    assert block_mean(x, 2)[0, 0, 0] == pytest.approx(x[:2, :2, :2].mean())
    u = np.ones((3, 2, 3, 1), np.float32)  # one coarse voxel everywhere
    np.testing.assert_allclose(upsample_displacement(u, 2, (4, 6, 2)), 2.0)  # = two fine voxels


def test_csf_structures_grow_into_connected_csf_only():
    labels = np.zeros((10, 5, 5), np.int64)
    labels[4:6, 2, 2] = 7
    csf = np.zeros((10, 5, 5))
    csf[2:8, 2, 2] = 1.0  # connected CSF along x
    csf[9, 2, 2] = 1.0  # separated by a gap
    out = grow_csf_structures(labels, csf, [7], steps=5)
    assert set(np.flatnonzero(out[:, 2, 2] == 7)) == {2, 3, 4, 5, 6, 7}


def test_eval_config_round_trip_and_errors():
    cfg = EvalConfig.from_dict(
        {"voxel_size": 4, "key_regions": [["hippocampus", "gm"]], "quality": {"alpha": 0.01}}
    )
    assert cfg.voxel_size == 4 and cfg.quality.alpha == 0.01
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        EvalConfig.from_dict({"quality": {"alfa": 0.1}})
    with pytest.raises(ValueError, match="increase"):
        EvalConfig.from_dict({"age_bins": [0, 50, 40]})


def test_eval_config_is_checked_like_every_other_config():
    cfg = EvalConfig.from_dict({"voxel_size": 4, "age_bins": [0, 50, 120]}, source="eval.yaml")
    assert isinstance(cfg.voxel_size, float) and cfg.age_bins == (0.0, 50.0, 120.0)
    with pytest.raises(ValueError, match=r"eval\.yaml\.segmentation\.n_iter: expected an integer"):
        EvalConfig.from_dict({"segmentation": {"n_iter": "many"}}, source="eval.yaml")
    with pytest.raises(ValueError, match=r"eval\.yaml\.key_regions\[0\]: expected 2 values"):
        EvalConfig.from_dict({"key_regions": [["hippocampus", "gm", "left"]]}, source="eval.yaml")
    with pytest.raises(ValueError, match=r"eval\.yaml\.quality: expected a mapping"):
        EvalConfig.from_dict({"quality": [0.05]}, source="eval.yaml")
    assert EvalConfig.from_dict({"segmentation": {"volumes": "pve"}}).segmentation.volumes == "pve"
    with pytest.raises(
        ValueError, match=r"segmentation\.volumes = 'counts'; expected 'fractions', 'labels' or 'pve'"
    ):
        EvalConfig.from_dict({"segmentation": {"volumes": "counts"}}, source="eval.yaml")
