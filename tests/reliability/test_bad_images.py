"""Bad images × every command that reads images: a clear error naming the file, and no partial output.

Each case puts one bad image among seven good ones; the command must stop with exit status 2, the message must
name the bad file and say what was expected, and the output folder must hold nothing but a released lock file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import BAD_IMAGES, leftovers, temp_files, write_table_cohort

from pipelines import bap_predict, bap_train, train
from pipelines.eval import cli as evaluate


def _bap_train(table: Path, out: Path, _ckpt) -> tuple:
    return bap_train.main, [
        "--real",
        table,
        "--config",
        "demo",
        "--out",
        out,
        "--epochs",
        "1",
        "--no-progress",
    ]


def _bap_predict(table: Path, out: Path, ckpt) -> tuple:
    return bap_predict.main, ["--checkpoint", ckpt, "--cohort", table, "--out", out / "pred.csv"]


def _train(table: Path, out: Path, _ckpt) -> tuple:
    return train.main, ["--config", "tiny", "--set", f"data.source={table}", "--run-dir", out,
                        "--set", "training.max_steps=1"]  # fmt: skip


def _eval(table: Path, out: Path, _ckpt) -> tuple:
    return evaluate.main, [
        "regions",
        "--cohort",
        table,
        "--out",
        out,
        "--registration",
        "none",
        "--no-progress",
    ]


COMMANDS = {
    "bap-train": _bap_train,
    "bap-predict": _bap_predict,
    "flowlet-train": _train,
    "flowlet-eval": _eval,
}


def _cases():
    for command in COMMANDS:
        for case in BAD_IMAGES:
            if command == "flowlet-eval" and case == "all_zero":
                continue  # read_image refuses it (tested for the other commands); a full evaluation is too slow here
            yield pytest.param(command, case, id=f"{command}-{case}")


@pytest.mark.parametrize(("command", "case"), list(_cases()))
def test_bad_image_is_named_and_nothing_is_written(command, case, cli, tmp_path, request):
    ckpt = request.getfixturevalue("bap_checkpoint") if command == "bap-predict" else None
    table = write_table_cohort(tmp_path / "cohort", bad=case)
    out = tmp_path / "out"
    main, argv = COMMANDS[command](table, out, ckpt)
    result = cli(main, argv)
    assert result.code == 2, result.text
    bad_name = f"s00_bad_T1w{BAD_IMAGES[case].suffix}"
    assert bad_name in result.text
    for words in BAD_IMAGES[case].expected:
        assert words in result.text
    # A log of the failed run is not a result; everything else must be absent.
    assert [f for f in leftovers(out) if not f.endswith(".log")] == []
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("case", [c for c in BAD_IMAGES if c != "all_zero"])
def test_prep_reports_each_bad_scan_and_writes_no_image_for_it(case, cli, tmp_path):
    """``flowlet-prep`` goes on past a bad scan (exit 1), names it with the reason, and writes no image for it."""
    pytest.importorskip("ants")
    import pandas as pd

    from pipelines import prep

    bids = tmp_path / "bids"
    bad = BAD_IMAGES[case].write(bids / "sub-01" / "anat" / f"sub-01_T1w{BAD_IMAGES[case].suffix}")
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t40\n")
    out = tmp_path / "out"
    result = cli(prep.main, ["--bids", bids, "--out", out, "--voxel-size", "4", "--no-progress"])
    assert result.code == 1, result.text
    assert "0 of 1 scans preprocessed" in result.text and str(bad) in result.text
    for words in BAD_IMAGES[case].expected:
        assert words in result.text
    qc = pd.read_csv(out / "qc" / "prep_qc.tsv", sep="\t", dtype=str)
    assert qc["status"].tolist() == ["failed"] and BAD_IMAGES[case].expected[0] in qc["reason"].iloc[0]
    assert not list(out.rglob("*.nii*")) and temp_files(tmp_path) == []
