"""QC limits and the verdict, the QC table's flags and robust z-scores, on hand-made results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowlet.data.prep import (
    PrepConfig,
    QcLimits,
    ScanJob,
    ScanResult,
    output_names,
    qc_problems,
    qc_table,
)


def _job(subject: str) -> ScanJob:
    return ScanJob(
        subject,
        "n/a",
        Path(f"/raw/sub-{subject}/anat/sub-{subject}_T1w.nii.gz"),
        f"sub-{subject}/anat",
        f"sub-{subject}",
    )


def _qc(**changes) -> dict[str, float]:
    qc = {
        "ncc": 0.52,
        "brain_mask_dice": 0.92,
        "affine_determinant": 0.9,
        "scale_min": 0.88,
        "scale_max": 1.05,
        "mutual_information_nats": 0.7,
        "brain_volume_mm3": 1.5e6,
        "brain_volume_mni_mm3": 1.8e6,
    }
    qc.update(changes)
    return qc


def _ok(subject: str, volume: float, ncc: float = 0.52) -> ScanResult:
    qc = _qc(ncc=ncc, brain_volume_mm3=volume)
    return ScanResult(_job(subject), "ok", qc=qc, outputs={"image": "x.nii.gz"}, seconds=1.0)


def test_a_typical_good_scan_passes_and_each_broken_limit_is_named():
    limits = QcLimits()
    assert qc_problems(_qc(), limits) == []
    # A head squashed into the brain box (the failure of registering a raw head to a brain template).
    squashed = qc_problems(_qc(affine_determinant=0.42, scale_min=0.62, scale_max=0.8), limits)
    assert [p.split()[0] for p in squashed] == ["affine_determinant", "scale"]
    assert "0.420 outside [0.45, 1.3]" in squashed[0]
    # A misplaced head: the subject's own brain mask misses the template's, and the images do not correlate.
    shifted = qc_problems(_qc(brain_mask_dice=0.61, ncc=0.12), limits)
    assert shifted == ["brain_mask_dice 0.610 < 0.75", "ncc 0.120 < 0.35"]
    # A missing measure fails rather than passes.
    assert qc_problems({k: v for k, v in _qc().items() if k != "ncc"}, limits) == ["ncc nan < 0.35"]
    assert qc_problems(_qc(scale_max=1.31), limits) and not qc_problems(_qc(scale_max=1.29), limits)
    # A whole head registered onto the brain template: the template brain is blown up to the head's size.
    assert qc_problems(_qc(affine_determinant=1.7, scale_max=1.25, scale_min=1.15), limits)


def test_limits_must_be_ordered_ranges():
    with pytest.raises(ValueError, match="determinant"):
        QcLimits(determinant=(1.2, 0.8))
    with pytest.raises(ValueError, match="scale"):
        QcLimits(scale=(0.0, 1.2))


def test_table_marks_failed_and_rejected_scans_and_flags_volume_outliers_among_the_passing():
    volumes = [1.50e6, 1.52e6, 1.48e6, 1.51e6, 1.49e6, 2.40e6]
    results = [_ok(f"{i:02d}", v) for i, v in enumerate(volumes)]
    rejected = _qc(ncc=0.1, brain_volume_mm3=9e6)
    results.append(ScanResult(_job("06"), "rejected", reason="ncc 0.100 < 0.3", qc=rejected))
    results.append(ScanResult(_job("07"), "failed", reason="x.nii.gz: expected a 3D image, got 4D"))
    table = qc_table(results).set_index("subject_id")
    # Six passing volumes: median 1.505e6, absolute deviations 0.025, 0.015, 0.005, 0.005, 0.015, 0.895 (e6) ->
    # MAD 0.015e6, and the 2.40e6 scan has z = 0.895e6 / (1.4826 * 0.015e6) ≈ 40.2; the rejected scan's 9e6 takes
    # no part in the statistics.
    assert table.loc["05", "brain_volume_mm3_z"] == pytest.approx(0.895e6 / (1.4826 * 0.015e6))
    assert table.loc["05", "flags"] == "brain_volume_mm3_z"
    assert table.loc["06", "flags"] == "rejected" and np.isnan(table.loc["06", "brain_volume_mm3_z"])
    assert table.loc["07", "flags"] == "failed" and "4D" in table.loc["07", "reason"]
    assert np.isnan(table.loc["07", "ncc"])
    assert table["qc_pass"].tolist() == [True] * 6 + [False, False]
    assert table["outlier"].tolist() == [False] * 5 + [True, True, True]


def test_no_z_scores_with_fewer_than_five_scans():
    table = qc_table([_ok("01", 1.0e6), _ok("02", 3.0e6)])
    assert table["brain_volume_mm3_z"].isna().all() and not table["outlier"].any()


def test_output_names_follow_bids_derivatives():
    names = output_names(_job("01"), PrepConfig(voxel_size=1.5, template="mni152-t1-brain"))
    assert names["image"] == "sub-01/anat/sub-01_space-MNI152NLin6Asym_res-1p5_desc-preproc_T1w.nii.gz"
    assert names["mask"].endswith("_desc-brain_mask.nii.gz")
    assert names["montage"] == "qc/scans/sub-01_qc.png"
    rejected = output_names(_job("01"), PrepConfig(), rejected=True)
    assert rejected["image"].startswith("qc/rejected/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_")
    assert rejected["montage"] == names["montage"]
    with pytest.raises(ValueError, match="unknown template"):
        PrepConfig(template="colin27")
    with pytest.raises(ValueError, match="seed"):
        PrepConfig(seed=0)
