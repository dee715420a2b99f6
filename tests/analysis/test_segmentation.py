import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import clone

from analysis.metrics import dice
from analysis.segmentation import TissueSegmenter
from analysis.tissue_maps import TISSUES
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


def _sphere_atlas(fractions: dict[str, np.ndarray]):
    """The phantom's tissue as one atlas region: ``(labels, Atlas)``."""
    import pandas as pd

    from flowlet.data.templates import Atlas

    regions = (sum(fractions.values()) > 0).astype(np.int32)
    table = pd.DataFrame({"index": [1], "name": ["sphere"]})
    return regions, Atlas(name="sphere", labels=regions, affine=GRID.affine, table=table)


def _partial_volume_phantom(wm_radius: float, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CSF/GM/WM sphere drawn at 0.5 mm and averaged onto the 2 mm grid: every boundary voxel is a known mix.

    Returns the 2 mm image and the true tissue fractions (``{"csf", "gm", "wm"}`` → ``(24, 24, 24)``).
    """
    k = 4
    r = np.linalg.norm((np.indices(tuple(n * k for n in GRID.shape)) + 0.5) / k - 12.0, axis=0)
    fine = np.zeros(r.shape, np.int32)
    fine[r < 10.7] = 1
    fine[r < 9.3] = 2
    fine[r < wm_radius] = 3

    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(24, k, 24, k, 24, k).mean(axis=(1, 3, 5))

    fractions = {t: down((fine == i + 1).astype(np.float64)) for i, t in enumerate(TISSUES)}
    means = {"csf": 0.15, "gm": 0.5, "wm": 0.8}
    image = sum(fractions[t] * means[t] for t in TISSUES)
    inside = sum(fractions.values()) > 0
    image = image + np.random.default_rng(seed).normal(0, 0.02, GRID.shape) * inside
    return image.astype(np.float32), fractions


@pytest.mark.parametrize("wm_radius", [6.6, 7.6])
def test_partial_volume_fractions_sum_to_the_true_tissue_volumes(wm_radius):
    """At 2 mm about half of the GM shell lies in mixed voxels. Summing the expected fractions of the
    partial-volume model recovers GM and WM volume; summing pure-class posteriors (no mixed classes) gives the
    mixed voxels wholly to one class and misses WM by several times as much."""
    image, fractions = _partial_volume_phantom(wm_radius, 0)
    mixed = (fractions["gm"] > 0.05) & (fractions["gm"] < 0.95)
    assert mixed.sum() > 0.4 * (fractions["gm"] > 0.05).sum()
    priors = {t: np.clip(ndimage.gaussian_filter(f, 1.2), 0, 1) for t, f in fractions.items()}
    truth = {t: float(f.sum()) * GRID.voxel_volume_mm3 for t, f in fractions.items()}
    errors = {}
    for pv in (True, False):
        seg = TissueSegmenter(grid=GRID, priors=priors, bias_sigma_mm=0, partial_volume=pv).fit()
        maps = seg.transform(Volume(image, GRID.affine))
        volumes = maps.volumes_mm3()
        errors[pv] = {t: volumes[t] / truth[t] - 1.0 for t in ("gm", "wm")}
        if pv:
            gm_mixed = maps.probabilities["gm"][mixed]
            assert np.corrcoef(gm_mixed, fractions["gm"][mixed])[0, 1] > 0.8
    assert max(abs(e) for e in errors[True].values()) < 0.03, errors
    assert abs(errors[False]["wm"]) > 3 * abs(errors[True]["wm"]) and abs(errors[False]["wm"]) > 0.05, errors


def test_label_volumes_count_each_voxel_for_its_most_likely_tissue():
    """``volumes="labels"`` (voxel counts, as FreeSurfer and DLMUSE count) against the default fractions."""

    from analysis.region_volumes import WHOLE_BRAIN
    from analysis.volumetrics import RegionVolumetrics

    image, fractions = _partial_volume_phantom(7.6, 1)
    priors = {t: np.clip(ndimage.gaussian_filter(f, 1.2), 0, 1) for t, f in fractions.items()}
    regions, atlas = _sphere_atlas(fractions)
    segmenter = TissueSegmenter(grid=GRID, priors=priors, bias_sigma_mm=0)
    tables = {}
    for mode in ("fractions", "labels", "pve"):
        vol = RegionVolumetrics(
            atlas, grid=GRID, segmenter=segmenter, registration="none", volumes=mode
        ).fit()
        tables[mode] = vol.transform([Volume(image, GRID.affine)]).set_index(["region", "tissue"])[
            "volume_mm3"
        ]
    maps = clone(segmenter).set_params(pve=True).fit().transform(Volume(image, GRID.affine))
    hard = maps.hard_labels()
    counted = maps.as_labels()
    assert np.array_equal(counted.hard_labels(), hard)
    for k, tissue in enumerate(TISSUES, start=1):
        assert set(np.unique(counted.probabilities[tissue])) <= {0.0, 1.0}
        in_sphere = float(((hard == k) & (regions == 1)).sum()) * GRID.voxel_volume_mm3
        assert tables["labels"][("sphere", tissue)] == pytest.approx(in_sphere)
        assert tables["fractions"][("sphere", tissue)] == pytest.approx(
            float(maps.probabilities[tissue][regions == 1].sum()) * GRID.voxel_volume_mm3, rel=1e-6
        )
        assert tables["pve"][("sphere", tissue)] == pytest.approx(
            float(maps.as_pve().probabilities[tissue][regions == 1].sum()) * GRID.voxel_volume_mm3, rel=1e-6
        )
    assert tables["labels"][(WHOLE_BRAIN, "gm")] == pytest.approx(
        float((hard == 2).sum()) * GRID.voxel_volume_mm3
    )
    assert tables["labels"][("sphere", "gm")] != pytest.approx(
        tables["fractions"][("sphere", "gm")], rel=1e-3
    )
    with pytest.raises(ValueError, match="unknown volumes"):
        RegionVolumetrics(atlas, volumes="counts")


def test_the_withdrawn_atropos_method_is_refused_with_its_reason():
    """``method="atropos"`` counted CSF as GM on skull-stripped scans; asking for it says so, in Python and in an
    eval config (naming the source and the key)."""
    from analysis.config import EvalConfig

    with pytest.raises(ValueError, match=r"'atropos' was withdrawn: .*counted CSF as GM"):
        TissueSegmenter(method="atropos")
    with pytest.raises(ValueError, match=r"unknown segmentation method 'kmeans'; choose from \['gmm'\]"):
        TissueSegmenter(method="kmeans")
    with pytest.raises(ValueError, match=r"e\.yaml: segmentation\.method = 'atropos' was withdrawn"):
        EvalConfig.from_dict({"segmentation": {"method": "atropos"}}, source="e.yaml")
    with pytest.raises(ValueError, match=r"e\.yaml: segmentation\.method = 'kmeans'; expected 'gmm'"):
        EvalConfig.from_dict({"segmentation": {"method": "kmeans"}}, source="e.yaml")


def test_an_unknown_atlas_name_is_refused_when_the_eval_config_loads():
    from analysis.config import EvalConfig

    with pytest.raises(
        ValueError, match=r"e\.yaml: atlas\.name = 'harvard-oxfrod'; expected one of .*harvard-oxford"
    ):
        EvalConfig.from_dict({"atlas": {"name": "harvard-oxfrod"}}, source="e.yaml")
    custom = EvalConfig.from_dict(
        {"atlas": {"name": "mine", "image": "a.nii.gz", "table": "a.tsv"}}, source="e.yaml"
    )
    assert custom.atlas.name == "mine"


def test_the_coarse_registration_pass_keeps_the_segmenter_settings():
    import pandas as pd

    from analysis.volumetrics import RegionVolumetrics
    from flowlet.data.templates import Atlas

    labels = _truth()
    atlas = Atlas(
        name="s", labels=labels, affine=GRID.affine, table=pd.DataFrame({"index": [1], "name": ["s"]})
    )
    settings = {"prior_weight": 0.7, "n_iter": 3, "margin_mm": 5.0, "prior_floor": 0.1, "random_state": 4}
    segmenter = TissueSegmenter(grid=GRID, priors=_priors(labels), partial_volume=False, **settings)
    vol = RegionVolumetrics(atlas, grid=GRID, segmenter=segmenter).fit()
    coarse = vol.coarse_segmenter_
    assert coarse.get_params() | {"grid": None, "priors": None} == segmenter.get_params() | {
        "grid": None,
        "priors": None,
    }
    assert coarse.grid_.shape == (12, 12, 12) and coarse.grid_.voxel_sizes == pytest.approx((4.0,) * 3)
    assert coarse is not segmenter and segmenter.grid is GRID


def _gm_sphere_in_csf(gm_radius: float, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two tissues: a GM sphere in CSF drawn at 0.5 mm and averaged onto the 2 mm grid (true fractions known)."""
    k = 4
    r = np.linalg.norm((np.indices(tuple(n * k for n in GRID.shape)) + 0.5) / k - 12.0, axis=0)
    fine = np.zeros(r.shape, np.int32)
    fine[r < 10.7] = 1
    fine[r < gm_radius] = 2
    fractions = {
        t: (fine == i + 1).reshape(24, k, 24, k, 24, k).mean(axis=(1, 3, 5)) for i, t in enumerate(TISSUES)
    }
    image = 0.15 * fractions["csf"] + 0.5 * fractions["gm"]
    inside = sum(fractions.values()) > 0
    image = image + np.random.default_rng(seed).normal(0, 0.02, GRID.shape) * inside
    return image.astype(np.float32), fractions


@pytest.mark.parametrize(("gm_radius", "seed"), [(5.3, 0), (7.7, 1)])
def test_linear_pve_recovers_the_gm_volume_of_mixed_voxels(gm_radius, seed):
    """Linear partial-volume fractions (``volumes="pve"``) read the GM/CSF mix of a boundary voxel from its
    intensity: the GM volume comes within 2 % and each mixed voxel's GM fraction within a fifth of what summing
    pure-class posteriors gets; per voxel the fractions (with background) sum to 1."""
    image, fractions = _gm_sphere_in_csf(gm_radius, seed)
    priors = {t: np.clip(ndimage.gaussian_filter(f, 1.2), 0, 1) for t, f in fractions.items()}
    mixed = (fractions["gm"] > 0.05) & (fractions["gm"] < 0.95)
    truth = float(fractions["gm"].sum())
    volume = Volume(image, GRID.affine)
    maps = TissueSegmenter(grid=GRID, priors=priors, bias_sigma_mm=0, pve=True).fit().transform(volume)
    pve = maps.as_pve()
    plain = TissueSegmenter(grid=GRID, priors=priors, bias_sigma_mm=0, partial_volume=False, pve=True).fit()
    posterior = plain.transform(volume).probabilities["gm"]
    gm = {"pve": pve.probabilities["gm"], "posterior": posterior, "fractions": maps.probabilities["gm"]}
    error = {name: abs(float(g.sum()) / truth - 1.0) for name, g in gm.items()}
    voxel = {name: float(np.abs(g - fractions["gm"])[mixed].mean()) for name, g in gm.items()}
    assert error["pve"] < 0.02 and error["pve"] < error["posterior"] / 3, error
    assert voxel["pve"] < voxel["posterior"] / 5, voxel
    # On this noise level the hard split is also a little closer than the posterior-weighted one.
    assert voxel["pve"] < voxel["fractions"] and error["pve"] < error["fractions"], (voxel, error)
    total = sum(pve.probabilities[t] for t in TISSUES)
    assert total.max() <= 1.0 + 1e-6
    # Mixed voxels (the GM/CSF pair) are split between the two classes; pure voxels keep their fractions.
    split = pve.probabilities["gm"] != maps.probabilities["gm"]
    assert split[mixed].mean() > 0.5
    assert np.allclose(total[split & (fractions["gm"] > 0.05)], 1.0, atol=1e-5)
    assert np.array_equal(pve.probabilities["wm"][split], np.zeros(int(split.sum()), np.float32))
    pure = maps.probabilities["gm"] > 0.999
    assert np.array_equal(pve.probabilities["gm"][pure], maps.probabilities["gm"][pure])
    with pytest.raises(ValueError, match="no partial-volume fractions"):
        plain.transform(volume).as_pve()


def test_partial_volume_fractions_are_computed_only_for_volumes_pve():
    """The linear partial-volume fractions are made only where asked (``pve=True``, which ``volumes="pve"`` sets on a
    copy of the segmenter); the fractions beside them are the same either way."""

    from analysis.volumetrics import RegionVolumetrics

    image, fractions = _gm_sphere_in_csf(7.7, 1)
    priors = {t: np.clip(ndimage.gaussian_filter(f, 1.2), 0, 1) for t, f in fractions.items()}
    volume = Volume(image, GRID.affine)
    segmenter = TissueSegmenter(grid=GRID, priors=priors, bias_sigma_mm=0)
    plain = clone(segmenter).fit().transform(volume)
    with_pve = clone(segmenter).set_params(pve=True).fit().transform(volume)
    assert plain.pve is None and with_pve.pve is not None
    for tissue in TISSUES:
        assert np.array_equal(plain.probabilities[tissue], with_pve.probabilities[tissue])
    with pytest.raises(ValueError, match="no partial-volume fractions"):
        plain.as_pve()
    _, atlas = _sphere_atlas(fractions)
    for mode in ("fractions", "labels", "pve"):
        vol = RegionVolumetrics(atlas, grid=GRID, segmenter=segmenter, volumes=mode).fit()
        maps, _ = vol.segment(volume)
        assert vol.segmenter_.pve is (mode == "pve") and vol.coarse_segmenter_.pve is False
        assert maps.pve is None
    assert segmenter.pve is False
