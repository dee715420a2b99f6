"""Resuming ``flowlet-prep``: a finished scan is found where its verdict put it and its outputs are read once."""

from __future__ import annotations

import numpy as np
import pytest

from flowlet.data.nifti import save_volume
from flowlet.data.prep import PrepConfig, subject
from flowlet.data.prep.register import RegisteredScan
from flowlet.data.prep.subject import ScanJob, prepare_scan, verify_scan

PASSING = {"brain_mask_dice": 0.9, "ncc": 0.5, "affine_determinant": 1.0, "scale_min": 1.0, "scale_max": 1.0}


@pytest.fixture
def job(tmp_path) -> ScanJob:
    source = tmp_path / "raw" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    save_volume(source, np.random.default_rng(0).random((8, 8, 8), dtype=np.float32), np.eye(4))
    return ScanJob("01", "n/a", source, "sub-01/anat", "sub-01")


def _fake_registration(monkeypatch, config: PrepConfig, qc: dict[str, float]) -> None:
    shape = config.grid.shape
    mask = np.zeros(shape, dtype=bool)
    mask[10:20, 10:20, 10:20] = True
    scan = RegisteredScan(np.where(mask, 1.0, 0.0).astype(np.float32), mask, np.eye(4), dict(qc))
    monkeypatch.setattr(subject, "register_scan", lambda data, affine, cfg: scan)


def _count_input_reads(monkeypatch) -> list:
    reads = []
    real = subject.sha256_file

    def counted(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(subject, "sha256_file", counted)
    return reads


@pytest.mark.parametrize("keep_rejected", [False, True])
@pytest.mark.parametrize("qc", [PASSING, {**PASSING, "ncc": 0.1}], ids=["ok", "rejected"])
def test_a_finished_scan_verifies_once_with_its_verdict(tmp_path, job, monkeypatch, keep_rejected, qc):
    config = PrepConfig(voxel_size=4)
    _fake_registration(monkeypatch, config, qc)
    out = tmp_path / "out"
    written = prepare_scan(job, out, config, keep_rejected=keep_rejected)
    expected = "ok" if qc is PASSING else "rejected"
    assert written.status == expected
    in_rejected = written.outputs["image"].startswith(subject.REJECTED_DIR)
    assert in_rejected == (expected == "rejected" and not keep_rejected)

    reads = _count_input_reads(monkeypatch)
    found = verify_scan(job, out, config, keep_rejected=keep_rejected)
    assert found is not None and found.resumed
    assert (found.status, found.outputs) == (expected, written.outputs)
    assert len(reads) == 1  # the input is hashed once, wherever the scan lies
