"""``flowlet-prep`` on a real raw head scan of ``ixi-dev`` (skipped when the data set or ANTs is absent).

The data set lives outside the repository, in ``../shared/data/ixi-dev`` next to it (or wherever
``FLOWLET_IXI_DEV`` points); its DLMUSE parcellation gives a reference brain mask.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from flowlet.data.grid import resample_array
from flowlet.data.nifti import load_volume
from flowlet.data.prep import (
    PrepConfig,
    qc_problems,
    read_prep_record,
    register_scan,
    run_prep,
    scan_measures,
)
from flowlet.data.prep.measures import dice
from flowlet.data.preprocessing import reorient_to_ras

IXI = Path(
    os.environ.get(
        "FLOWLET_IXI_DEV", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ixi-dev"
    )
)
SUBJECT = "IXI012"
pytestmark = pytest.mark.skipif(
    not (IXI / f"sub-{SUBJECT}").is_dir(),
    reason=f"real-data test: {IXI} (ixi-dev, next to the repository or FLOWLET_IXI_DEV) is not there",
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("ants", reason="flowlet-prep needs antspyx (the 'prep' extra)")
    root = tmp_path_factory.mktemp("ixi")
    bids = root / "bids"
    bids.mkdir()
    (bids / f"sub-{SUBJECT}").symlink_to(IXI / f"sub-{SUBJECT}")
    ages = pd.read_csv(IXI / "participants.tsv", sep="\t")
    ages[ages["participant_id"] == f"sub-{SUBJECT}"].to_csv(bids / "participants.tsv", sep="\t", index=False)
    report = run_prep(bids, root / "prep", progress=False)
    return report


def _raw():
    return reorient_to_ras(load_volume(IXI / f"sub-{SUBJECT}" / "anat" / f"sub-{SUBJECT}_T1w.nii.gz"))


def test_a_real_head_is_brain_extracted_registered_and_passes_qc(prepared):
    assert prepared.failures == [] and prepared.n_ok == 1
    row = prepared.qc.iloc[0]
    out = prepared.out_dir
    mask = load_volume(out / row["output"].replace("desc-preproc_T1w", "desc-brain_mask")).data > 0
    xfm = next((out / f"sub-{SUBJECT}" / "anat").glob("*_xfm.json"))
    matrix = np.asarray(json.loads(xfm.read_text())["matrix"])
    # The DLMUSE brain mask carried through the same transform onto the grid.
    dseg = reorient_to_ras(
        load_volume(IXI / "derivatives" / "dlmuse" / f"sub-{SUBJECT}" / "anat" / f"sub-{SUBJECT}_dseg.nii.gz")
    )
    reference = ndimage.binary_fill_holes(dseg.data > 0).astype(np.float32)
    carried = resample_array(reference, np.linalg.inv(matrix) @ dseg.affine, PrepConfig().grid) > 0.5
    assert dice(mask, carried) >= 0.93
    # Native brain volume (MNI mask × determinant) near the reference intracranial volume (1652 mL).
    record = read_prep_record(out / row["output"])
    icv = pd.read_csv(IXI / "derivatives" / "dlmuse" / "volumes.tsv", sep="\t").set_index("participant_id")
    assert record["qc"]["brain_volume_mm3"] / 1000 == pytest.approx(
        icv.loc[f"sub-{SUBJECT}", "icv"], rel=0.08
    )
    assert (out / "qc" / "scans" / f"sub-{SUBJECT}_qc.png").is_file()


def test_qc_rejects_a_deliberately_wrong_transform(prepared):
    raw = _raw()
    xfm = next((prepared.out_dir / f"sub-{SUBJECT}" / "anat").glob("*_xfm.json"))
    right = np.asarray(json.loads(xfm.read_text())["matrix"])
    config = PrepConfig()
    assert qc_problems(scan_measures(raw.data, raw.affine, right, config), config.qc) == []
    shifted = right.copy()
    shifted[:3, 3] += [0.0, 25.0, -20.0]  # the brain box 32 mm off the brain
    problems = qc_problems(scan_measures(raw.data, raw.affine, shifted, config), config.qc)
    assert any(p.startswith("brain_mask_dice") for p in problems)
    squashed = right.copy()
    squashed[:3, :3] *= 0.72  # the whole head squeezed into the brain box
    problems = qc_problems(scan_measures(raw.data, raw.affine, squashed, config), config.qc)
    assert any(p.startswith("affine_determinant") for p in problems)


def test_a_4mm_output_is_registered_on_the_2mm_template(tmp_path):
    """IXI632 came out squeezed into the brain box when the affine was fitted to the 4 mm template (Dice 0.65)."""
    pytest.importorskip("ants", reason="flowlet-prep needs antspyx (the 'prep' extra)")
    subject = "IXI632"
    raw = reorient_to_ras(load_volume(IXI / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"))
    config = PrepConfig(voxel_size=4.0)
    assert config.registration_grid.shape == PrepConfig().grid.shape
    scan = register_scan(raw.data, raw.affine, config)
    assert scan.image.shape == tuple(config.grid.shape)
    assert qc_problems(scan.qc, config.qc) == []
    dseg = reorient_to_ras(
        load_volume(IXI / "derivatives" / "dlmuse" / f"sub-{subject}" / "anat" / f"sub-{subject}_dseg.nii.gz")
    )
    reference = ndimage.binary_fill_holes(dseg.data > 0).astype(np.float32)
    carried = resample_array(reference, np.linalg.inv(scan.transform) @ dseg.affine, config.grid) > 0.5
    assert dice(scan.mask, carried) >= 0.90
