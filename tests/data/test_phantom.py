"""The ageing phantom at 4 mm: determinism, geometry, ageing direction, ground truth, CLI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from flowlet.data.grid import mni_grid
from flowlet.data.phantom import (
    INTRACRANIAL,
    PhantomConfig,
    age_histogram,
    make_phantom,
    write_phantom_cohort,
)
from pipelines.phantoms import main

VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")


@pytest.fixture(scope="module")
def config():
    return PhantomConfig.from_yaml(voxel_size=4)


def _volume(subject, regions, tissue="all"):
    v = subject.volumes
    return float(v[v["region"].isin(regions) & (v["tissue"] == tissue)]["volume_mm3"].sum())


def test_config_reads_rates_with_sources(config):
    curve = config.curves["lateral_ventricles"]
    assert curve.rate(35) == pytest.approx(1.8)
    assert curve.rate(80) == pytest.approx(5.5)
    assert "Geriatr" in curve.sources
    # Integrated growth 25 -> 35 at 1.8 %/y.
    assert curve.log_volume(35, 25) == pytest.approx(10 * np.log1p(0.018), rel=1e-6)
    assert curve.log_volume(15, 25) < 0
    with pytest.raises(ValueError, match="voxel_size"):
        PhantomConfig.from_yaml(voxel_size=3)


def test_subject_geometry_and_tissue_bookkeeping(config):
    subject = make_phantom(40.0, sex="F", site=1, seed=3, config=config)
    grid = mni_grid(4)
    assert subject.image.shape == subject.labels.shape == grid.shape
    assert subject.image.dtype == np.float32 and subject.labels.dtype == np.int32
    np.testing.assert_array_equal(subject.affine, grid.affine)
    totals = subject.volumes[subject.volumes["region"] == INTRACRANIAL].set_index("tissue")["volume_mm3"]
    assert totals["gm"] + totals["wm"] + totals["csf"] == pytest.approx(totals["all"], rel=1e-6)
    # T1-like contrast: mean intensity in WM-dominated voxels above GM above CSF.
    t = subject.tissue
    means = [subject.image[(t[k] > 0.8)].mean() for k in ("csf", "gm", "wm")]
    assert means[0] < means[1] < means[2]


def test_ventricles_grow_and_hippocampus_shrinks_with_age_for_one_individual(config):
    ages = (20.0, 50.0, 80.0)
    subjects = [make_phantom(a, sex="M", site=0, seed=11, config=config) for a in ages]
    vent = [_volume(s, VENTRICLES) for s in subjects]
    hippo = [_volume(s, ("Left_Hippocampus", "Right_Hippocampus")) for s in subjects]
    gm = [_volume(s, (INTRACRANIAL,), "gm") for s in subjects]
    assert vent[0] < vent[1] < vent[2]
    assert vent[2] / vent[0] > 2.0
    assert hippo[0] > hippo[2]
    assert gm[0] > gm[1] > gm[2]


def test_intracranial_volume_is_constant_across_ages_for_one_individual(config):
    icv = [_volume(make_phantom(a, seed=5, config=config), (INTRACRANIAL,)) for a in (10.0, 45.0, 85.0)]
    assert icv[0] == pytest.approx(icv[1], rel=1e-9) == pytest.approx(icv[2], rel=1e-9)
    other = _volume(make_phantom(45.0, seed=6, config=config), (INTRACRANIAL,))
    assert other != pytest.approx(icv[1], rel=1e-4)


def test_bad_arguments(config):
    with pytest.raises(ValueError, match="sex"):
        make_phantom(30, sex="X", config=config)
    with pytest.raises(ValueError, match="unknown site"):
        make_phantom(30, site="nowhere", config=config)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_is_byte_identical_and_independent_of_n(tmp_path):
    a = write_phantom_cohort(tmp_path / "a", 2, voxel_size=4, seed=7, progress=False)
    b = write_phantom_cohort(tmp_path / "b", 2, voxel_size=4, seed=7, progress=False)
    c = write_phantom_cohort(tmp_path / "c", 1, voxel_size=4, seed=7, progress=False)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b
    name = "sub-0001/anat/sub-0001_T1w.nii.gz"
    assert files_c[name] == files_a[name]
    assert {"participants.tsv", "dataset_description.json", "dseg.tsv", "code/phantom_config.json"} <= set(
        files_a
    )


def test_cohort_files_match_ground_truth(tmp_path):
    root = write_phantom_cohort(tmp_path / "ph", 2, voxel_size=4, seed=1, progress=False)
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "age", "sex", "site"]
    dseg_table = pd.read_csv(root / "dseg.tsv", sep="\t")
    for pid in participants["participant_id"]:
        anat = root / pid / "anat"
        image = nib.load(str(anat / f"{pid}_T1w.nii.gz"))
        np.testing.assert_allclose(image.affine, mni_grid(4).affine)
        labels = np.asarray(nib.load(str(anat / f"{pid}_dseg.nii.gz")).dataobj).astype(int)
        volumes = pd.read_csv(anat / f"{pid}_volumes.tsv", sep="\t")
        counted = np.bincount(labels.ravel(), minlength=dseg_table["index"].max() + 1) * 64.0
        expected = dict(zip(dseg_table["name"], counted[dseg_table["index"]]))
        table = volumes[volumes["tissue"] == "all"].set_index("region")["volume_mm3"]
        for name, value in expected.items():
            assert table[name] == pytest.approx(value)


def test_age_histogram_file(tmp_path):
    path = tmp_path / "hist.tsv"
    path.write_text("age_min\tage_max\tproportion\n20\t30\t0.75\n60\t70\t0.25\n")
    hist = age_histogram(path)
    ages = np.array([hist.sample(np.random.default_rng(i)) for i in range(200)])
    assert np.all(((ages >= 20) & (ages <= 30)) | ((ages >= 60) & (ages <= 70)))
    assert 0.6 < np.mean(ages < 40) < 0.9
    skewed = age_histogram("skewed")
    dense = sum(w for lo, w in zip(skewed.edges, skewed.weights) if 20 <= lo < 40)
    assert dense > 0.5


def test_cli_smoke_and_overwrite_guard(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--n", "2", "--out", str(out), "--voxel-size", "4", "--sites", "2", "--no-progress"]) == 0
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert len(participants) == 2 and set(participants["site"]) <= {"site0", "site1"}
    assert (out / "sub-0002" / "anat" / "sub-0002_T1w.nii.gz").is_file()
    assert main(["--n", "1", "--out", str(out), "--voxel-size", "4", "--no-progress"]) == 2
    assert "holds an earlier flowlet-phantoms run; use --overwrite" in capsys.readouterr().err
    assert main(["--n", "1", "--out", str(out), "--voxel-size", "4", "--no-progress", "--overwrite"]) == 0


def test_cli_rejects_a_malformed_age_histogram(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("from\tto\tn\n20\t30\t5\n")
    assert main(["--n", "1", "--out", str(tmp_path / "x"), "--age-hist", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv" in err and "age_min, age_max" in err
    overlap = tmp_path / "overlap.tsv"
    overlap.write_text("age_min\tage_max\tcount\n20\t40\t5\n30\t50\t5\n")
    assert main(["--n", "1", "--out", str(tmp_path / "y"), "--age-hist", str(overlap), "--no-progress"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
