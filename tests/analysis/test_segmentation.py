import numpy as np
import pytest
from scipy import ndimage

from analysis.metrics import dice
from analysis.segmentation import TISSUES, TissueSegmenter
from flowlet.data.grid import Grid
from flowlet.data.nifti import Volume

GRID = Grid(shape=(24, 24, 24), affine=np.diag([2.0, 2.0, 2.0, 1.0]))


def _truth() -> np.ndarray:
    """Nested spheres: CSF ventricle at the centre, WM, GM shell, CSF rim (labels 1=csf, 2=gm, 3=wm)."""
    r = np.linalg.norm(np.indices(GRID.shape) - 11.5, axis=0)
    labels = np.zeros(GRID.shape, np.int32)
    labels[r < 11] = 1
    labels[r < 9.5] = 2
    labels[r < 6.5] = 3
    labels[r < 2.5] = 1
    return labels


def _priors(labels: np.ndarray) -> dict[str, np.ndarray]:
    # Blurred truth, as a template prior is a blurred population average.
    return {
        t: np.clip(ndimage.gaussian_filter((labels == k + 1).astype(float), 1.2), 0, 1)
        for k, t in enumerate(TISSUES)
    }


def _image(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([0.0, 0.15, 0.5, 0.8])
    return means[labels] + rng.normal(0, 0.05, labels.shape) * (labels > 0)


@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (3000.0, 100.0)])
def test_segmentation_recovers_tissues_at_any_intensity_scale(scale, offset):
    labels = _truth()
    seg = TissueSegmenter(grid=GRID, priors=_priors(labels)).fit()
    img = np.where(labels > 0, _image(labels, 0) * scale + offset, 0.0)
    maps = seg.transform(Volume(img.astype(np.float32), GRID.affine))
    hard = maps.hard_labels()
    for k, tissue in enumerate(TISSUES):
        assert dice(hard == k + 1, labels == k + 1) > 0.9, tissue
    total = sum(maps.probabilities[t] for t in TISSUES)
    assert total.max() <= 1.0 + 1e-6
    assert total[labels > 0].mean() > 0.93  # CSF voxels near background intensity are partly background
    assert total[(labels == 0) & maps.mask].mean() < 0.05
    assert maps.means["csf"] < maps.means["gm"] < maps.means["wm"]
    true_gm = np.sum(labels == 2) * GRID.voxel_volume_mm3
    assert maps.volumes_mm3()["gm"] == pytest.approx(true_gm, rel=0.05)


def test_intensity_drives_posterior_where_the_prior_is_wrong():
    labels = _truth()
    grown = labels.copy()
    r = np.linalg.norm(np.indices(GRID.shape) - 11.5, axis=0)
    grown[r < 4.0] = 1  # a larger ventricle than the prior expects
    seg = TissueSegmenter(grid=GRID, priors=_priors(labels)).fit()
    maps = seg.transform(Volume(_image(grown, 1).astype(np.float32), GRID.affine))
    csf_inside = maps.probabilities["csf"][(r > 2.8) & (r < 3.7)].mean()
    assert csf_inside > 0.7


def test_bad_method_and_priors_raise():
    with pytest.raises(ValueError, match="unknown segmentation method"):
        TissueSegmenter(method="fast")
    with pytest.raises(ValueError, match="missing tissue"):
        TissueSegmenter(grid=GRID, priors={"gm": np.zeros(GRID.shape)}).fit()
    with pytest.raises(RuntimeError, match="not fitted"):
        TissueSegmenter(grid=GRID).transform(Volume(np.zeros(GRID.shape, np.float32), GRID.affine))
