"""``flowlet-prep`` end to end on tiny data: help, a missing extra, bad files, resume and the cohort it writes."""

from __future__ import annotations

import importlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from prep_synthetic import make_raw_scan, write_raw_scan

from flowlet.data.cohort import load_cohort
from flowlet.data.grid import mni_grid, same_grid
from flowlet.data.nifti import load_volume
from flowlet.data.prep import PrepConfig, QcLimits, find_scans, run_prep, verify_scan
from pipelines.prep import main


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "flowlet-prep --bids" in out and "flowlet-toolkit[prep]" in out
    assert "--keep-rejected" in out and "--no-brain-extraction" in out and "qc/rejected/" in out


def test_cli_flags_reach_the_settings(tmp_path, monkeypatch):
    seen = {}

    def fake_run_prep(bids, out, *, config, keep_rejected, **options):
        seen.update(config=config, keep_rejected=keep_rejected)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr("flowlet.data.prep.run_prep", fake_run_prep)
    (tmp_path / "bids").mkdir()
    argv = [
        "--bids",
        str(tmp_path / "bids"),
        "--out",
        str(tmp_path / "o"),
        "--no-brain-extraction",
        "--keep-rejected",
    ]
    assert main(argv) == 2
    assert seen["config"].brain_extraction is False and seen["keep_rejected"] is True
    assert main(argv[:4]) == 2
    assert seen["config"].brain_extraction is True and seen["keep_rejected"] is False


def test_missing_ants_names_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "ants":
            raise ImportError("No module named 'ants'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    (tmp_path / "bids" / "sub-01" / "anat").mkdir(parents=True)
    assert main(["--bids", str(tmp_path / "bids"), "--out", str(tmp_path / "out")]) == 2
    assert 'pip install "flowlet-toolkit[prep]"' in capsys.readouterr().err


def test_no_scans_is_a_usage_error(tmp_path, capsys):
    pytest.importorskip("ants")
    (tmp_path / "bids").mkdir()
    assert main(["--bids", str(tmp_path / "bids"), "--out", str(tmp_path / "out")]) == 2
    assert "no T1w scans found" in capsys.readouterr().err


def _bids_with_bad_files(root):
    scan = make_raw_scan(4.0, (2.5, 2.5, 2.75))
    write_raw_scan(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz", scan)
    corrupt = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    write_raw_scan(corrupt, scan)
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # truncated download
    four_d = root / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    four_d.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 3), np.float32), np.eye(4)), str(four_d))
    pd.DataFrame(
        {"participant_id": ["sub-01", "sub-02", "sub-03"], "age": [45, 50, 60], "sex": ["F", "M", "F"]}
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def test_run_reports_bad_files_resumes_and_writes_a_cohort(tmp_path, capsys):
    pytest.importorskip("ants")
    bids, out = _bids_with_bad_files(tmp_path / "bids"), tmp_path / "out"
    argv = ["--bids", str(bids), "--out", str(out), "--voxel-size", "4", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 3 scans preprocessed" in err and "2 failed" in err

    qc = pd.read_csv(out / "qc" / "prep_qc.tsv", sep="\t", dtype={"subject_id": str})
    by_subject = qc.set_index("subject_id")
    assert by_subject.loc["01", "status"] == "ok"
    assert by_subject.loc["01", "ncc"] > 0.6
    assert "truncated" in by_subject.loc["02", "reason"] and by_subject.loc["02", "flags"] == "failed"
    assert "expected a 3D image, got 4D" in by_subject.loc["03", "reason"]
    assert bool(by_subject.loc["01", "qc_pass"]) and not by_subject.loc["02", "qc_pass"]
    assert (out / "qc" / "prep_contact_sheet.png").is_file()
    assert (out / by_subject.loc["01", "montage"]).is_file()
    assert [p.name for p in (out / "qc" / "scans").iterdir()] == ["sub-01_ses-1_qc.png"]

    cohort = load_cohort(out)
    assert cohort.table[["subject_id", "session_id"]].values.tolist() == [["01", "1"]]
    assert cohort.ages.tolist() == [45.0]
    image = load_volume(cohort.table.loc[0, "path"])
    grid = mni_grid(4)
    assert same_grid(image.affine, image.shape, grid.affine, grid.shape)
    description = (out / "dataset_description.json").read_text()
    assert '"DatasetType": "derivative"' in description

    # Second run: the finished scan is verified and skipped; the bad ones fail again.
    before = (out / cohort.table.loc[0, "path"]).stat().st_mtime_ns
    assert main(argv) == 1
    qc = pd.read_csv(out / "qc" / "prep_qc.tsv", sep="\t", dtype={"subject_id": str}).set_index("subject_id")
    assert bool(qc.loc["01", "resumed"]) and (out / cohort.table.loc[0, "path"]).stat().st_mtime_ns == before
    # Other settings or another input mean the finished outputs do not count.
    job = next(j for j in find_scans(bids) if j.subject_id == "01")
    assert verify_scan(job, out, PrepConfig(voxel_size=4)) is not None
    assert verify_scan(job, out, PrepConfig(voxel_size=4, n4=False)) is None
    # Limits it cannot meet: the same outputs no longer verify in the cohort; the scan is processed again,
    # rejected, moved to qc/rejected/ (out of the cohort) and the run reports it.
    strict = PrepConfig(voxel_size=4, qc=QcLimits(min_ncc=0.999))
    assert verify_scan(job, out, strict) is None
    report = run_prep(bids, out, config=strict, progress=False)
    assert report.n_ok == 0 and report.n_rejected == 1 and "ncc" in dict(report.failures)[str(job.source)]
    assert not load_cohort_or_empty(out)
    assert list((out / "qc" / "rejected" / "sub-01").rglob("*desc-preproc_T1w.nii.gz"))
    assert verify_scan(job, out, strict).status == "rejected"
    job.source.write_bytes(job.source.read_bytes() + b"\0")
    assert verify_scan(job, out, PrepConfig(voxel_size=4)) is None


def load_cohort_or_empty(folder) -> list:
    """Images of the cohort in ``folder`` (none when it has no image at all)."""
    return sorted(folder.glob("sub-*/anat/*_T1w.nii.gz"))


@pytest.mark.slow
def test_parallel_run_writes_the_same_bytes_as_a_serial_run(tmp_path):
    """Two worker processes, one ITK thread each, and a fixed sampling seed: identical outputs."""
    pytest.importorskip("ants")
    bids = tmp_path / "bids"
    scan = make_raw_scan(4.0, (2.5, 2.5, 2.75))
    for subject in ("01", "02"):
        write_raw_scan(bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz", scan)
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "age": [30, 40]}).to_csv(
        bids / "participants.tsv", sep="\t", index=False
    )
    common = ["--bids", str(bids), "--voxel-size", "4", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    serial = sorted((tmp_path / "serial").glob("sub-*/anat/*.nii.gz"))
    assert len(serial) == 4
    for path in serial:
        twin = tmp_path / "parallel" / path.relative_to(tmp_path / "serial")
        assert twin.read_bytes() == path.read_bytes(), path.name
