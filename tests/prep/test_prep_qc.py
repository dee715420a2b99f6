"""The QC table's flags and robust z-scores, on hand-made results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowlet.data.prep import PrepConfig, ScanJob, ScanResult, output_names, qc_table


def _job(subject: str) -> ScanJob:
    return ScanJob(
        subject,
        "n/a",
        Path(f"/raw/sub-{subject}/anat/sub-{subject}_T1w.nii.gz"),
        f"sub-{subject}/anat",
        f"sub-{subject}",
    )


def _ok(subject: str, volume: float, ncc: float = 0.72) -> ScanResult:
    qc = {
        "ncc": ncc,
        "mutual_information_nats": 0.7,
        "brain_volume_mm3": volume,
        "affine_determinant": 1.0,
        "brain_volume_mni_mm3": 1.8e6,
        "template_mask_dice": 0.96,
    }
    return ScanResult(_job(subject), "ok", qc=qc, outputs={"image": "x.nii.gz"}, seconds=1.0)


def test_flags_failures_low_similarity_and_volume_outliers():
    volumes = [1.50e6, 1.52e6, 1.48e6, 1.51e6, 1.49e6, 2.40e6]
    results = [_ok(f"{i:02d}", v) for i, v in enumerate(volumes)]
    results.append(_ok("06", 1.50e6, ncc=0.2))
    results.append(ScanResult(_job("07"), "failed", reason="x.nii.gz: expected a 3D image, got 4D"))
    table = qc_table(results).set_index("subject_id")
    # Successful volumes: median 1.50e6, MAD 0.01e6 -> the 2.40e6 scan has z = 0.9e6 / (1.4826 * 1e4) ≈ 60.7.
    assert table.loc["05", "brain_volume_mm3_z"] == pytest.approx(0.90e6 / (1.4826 * 0.01e6))
    assert table.loc["05", "flags"] == "brain_volume_mm3_z"
    assert table.loc["06", "flags"] == "low_ncc"
    assert table.loc["07", "flags"] == "failed" and "4D" in table.loc["07", "reason"]
    assert np.isnan(table.loc["07", "ncc"])
    assert table["outlier"].tolist() == [False] * 5 + [True, True, True]


def test_no_z_scores_with_fewer_than_five_scans():
    table = qc_table([_ok("01", 1.0e6), _ok("02", 3.0e6)])
    assert table["brain_volume_mm3_z"].isna().all() and not table["outlier"].any()


def test_output_names_follow_bids_derivatives():
    names = output_names(_job("01"), PrepConfig(voxel_size=1.5, template="mni152-t1-brain"))
    assert names["image"] == "sub-01/anat/sub-01_space-MNI152NLin6Asym_res-1p5_desc-preproc_T1w.nii.gz"
    assert names["mask"].endswith("_desc-brain_mask.nii.gz")
    with pytest.raises(ValueError, match="unknown template"):
        PrepConfig(template="colin27")
    with pytest.raises(ValueError, match="seed"):
        PrepConfig(seed=0)
