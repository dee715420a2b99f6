"""flowlet-augment end to end on a tiny model: layout, exact histogram, shards, resume after a kill."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.data.cohort import load_cohort
from flowlet.data.nifti import load_volume
from pipelines.augment import main

TINY_AFFINE = np.diag([-8.0, 8.0, 8.0, 1.0])  # the affine stored in the tiny checkpoint (conftest)


def _args(cohort, ckpt, out, *extra):
    return [
        "--real",
        cohort,
        "--checkpoint",
        ckpt,
        "--out",
        str(out),
        "--bin-width",
        "10",
        "--steps",
        "2",
        "--no-progress",
        *extra,
    ]


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
    )


def test_dry_run_writes_nothing(tiny_cohort, tiny_checkpoint, tmp_path, capsys):
    assert main(_args(tiny_cohort, tiny_checkpoint, tmp_path / "out", "--dry-run")) == 0
    assert "synthetic brains:" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_uniform_fill_writes_a_readable_bids_derivative(tiny_cohort, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    plan = pd.read_csv(out / "plan.tsv", sep="\t")
    synthetic = load_cohort(out)
    assert len(synthetic) == plan["synthetic_count"].sum() > 0
    assert set(synthetic.table["site"]) == {"synthetic"}
    combined = np.concatenate([load_cohort(tiny_cohort).ages, synthetic.ages])
    edges = np.append(plan["bin_start"].to_numpy(), plan["bin_end"].iloc[-1])
    counts = np.histogram(combined, edges)[0]
    assert counts.max() / counts.min() <= 1.1
    volume = load_volume(synthetic.table["path"].iloc[0])
    assert volume.shape == (7, 8, 6)
    np.testing.assert_allclose(volume.affine, TINY_AFFINE)
    assert volume.data.min() >= 0.0 and volume.data.max() <= 1.0
    assert (out / "age_histograms.png").stat().st_size > 1000


def test_two_shards_equal_one_run(tiny_cohort, tiny_checkpoint, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(_args(tiny_cohort, tiny_checkpoint, whole, "--batch-size", "3")) == 0
    assert main(_args(tiny_cohort, tiny_checkpoint, parts, "--shard", "0/2", "--batch-size", "3")) == 0
    assert main(_args(tiny_cohort, tiny_checkpoint, parts, "--shard", "1/2", "--batch-size", "3")) == 0
    assert _files(whole) == _files(parts)
    mismatch = filecmp.cmpfiles(whole, parts, _files(whole), shallow=False)[1]
    assert mismatch == []


def test_rerun_skips_finished_files_and_repairs_a_corrupt_one(tiny_cohort, tiny_checkpoint, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    first = sorted(out.glob("sub-syn*/anat/*.nii.gz"))
    reference = first[0].read_bytes()
    first[0].write_bytes(reference[: len(reference) // 2])
    assert main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    assert first[0].read_bytes() == reference


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_cohort, tiny_checkpoint, tmp_path, sig):
    reference = tmp_path / "reference"
    assert (
        main(_args(tiny_cohort, tiny_checkpoint, reference, "--synthetic-ratio", "3", "--batch-size", "1"))
        == 0
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.augment",
        *_args(tiny_cohort, tiny_checkpoint, out, "--synthetic-ratio", "3", "--batch-size", "1"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 300
    while (
        time.time() < deadline and len(list(out.glob("sub-syn*/anat/*.nii.gz"))) < 3 and proc.poll() is None
    ):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    written = list(
        out.glob("sub-syn*/anat/sub-*.nii.gz")
    )  # final names only; a killed write leaves a hidden temp
    assert 0 < len(written) < len(list(reference.glob("sub-syn*/anat/*.nii.gz")))
    for path in written:  # whatever carries a final name is complete
        load_volume(path)
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--synthetic-ratio", "3", "--batch-size", "1")) == 0
    assert not list(out.glob("sub-syn*/anat/.*")), "the rerun removes temporary files left by the killed run"
    assert _files(out) == _files(reference)
    assert filecmp.cmpfiles(reference, out, _files(reference), shallow=False)[1] == []


def test_bad_inputs_are_named(tiny_cohort, tiny_checkpoint, tmp_path, capsys):
    assert main(_args(tiny_cohort, str(tmp_path / "none.pt"), tmp_path / "o")) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(_args(tiny_cohort, tiny_checkpoint, tmp_path / "o", "--shard", "3/2")) == 2
    assert "--shard" in capsys.readouterr().err
    assert (
        main(
            _args(
                tiny_cohort,
                tiny_checkpoint,
                tmp_path / "o",
                "--bins",
                "90",
                "100",
                "110",
                "--synthetic-ratio",
                "1",
            )
        )
        == 2
    )
    assert "allow-extrapolation" in capsys.readouterr().err


def _brains(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("sub-syn*/anat/*.nii.gz"))}


def test_rerun_with_other_settings_is_refused_and_keeps_the_folder(
    tiny_cohort, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    before, description = _brains(out), (out / "dataset_description.json").read_text()
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--solver", "heun")) == 2
    err = capsys.readouterr().err
    assert "Config.sampling.solver: 'midpoint' -> 'heun'" in err and "--overwrite" in err
    assert _brains(out) == before and (out / "dataset_description.json").read_text() == description
    # a different plan (more synthetic brains, other ids/ages) is refused too
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--synthetic-ratio", "3")) == 2
    assert "participants.tsv" in capsys.readouterr().err
    # the batch size only changes rounding: the same settings otherwise resume
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--batch-size", "2")) == 0
    assert _brains(out) == before


def test_overwrite_replaces_brains_made_with_other_settings(tiny_cohort, tiny_checkpoint, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--synthetic-ratio", "3")) == 0
    (out / "notes.txt").write_text("kept")
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--solver", "heun", "--overwrite")) == 0
    assert main(_args(tiny_cohort, tiny_checkpoint, fresh, "--solver", "heun")) == 0
    # the result equals a run into an empty folder: no brain of the old plan is left, other files are untouched
    assert _brains(out) == _brains(fresh)
    assert (out / "notes.txt").read_text() == "kept" and not list(out.glob(".stale-*"))
    assert main(_args(tiny_cohort, tiny_checkpoint, out, "--overwrite", "--shard", "0/2")) == 2


def test_one_run_plans_the_augmentation_once(tiny_cohort, tiny_checkpoint, tmp_path, monkeypatch):
    import flowlet.augment.plan as planning

    plans = []
    make_plan = planning.make_plan

    def counting_make_plan(*args, **kwargs):
        plans.append(make_plan(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(planning, "make_plan", counting_make_plan)
    out = tmp_path / "out"
    assert main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    assert len(plans) == 1
    written = pd.read_csv(out / "plan.tsv", sep="\t")
    assert written["synthetic_count"].tolist() == plans[0].table["synthetic_count"].tolist()
