"""Bad cohort tables and participants files × every command that reads a cohort.

Missing or misnamed columns, non-numeric / NaN / negative / absurd ages, duplicate ids, images without a row, an
empty cohort and a missing image: each command stops with exit status 2, a message naming the file, the column (or
subject) and what was expected, and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import BAD_TABLES, leftovers, temp_files

from pipelines import augment, bap_predict, bap_train, train
from pipelines.eval import cli as evaluate


def _augment(source: Path, out: Path, ckpts) -> tuple:
    return augment.main, ["--real", source, "--checkpoint", ckpts["flowlet"], "--out", out, "--steps", "1",
                          "--no-progress"]  # fmt: skip


def _bap_train(source: Path, out: Path, _ckpts) -> tuple:
    return bap_train.main, [
        "--real",
        source,
        "--config",
        "demo",
        "--out",
        out,
        "--epochs",
        "1",
        "--no-progress",
    ]


def _bap_predict(source: Path, out: Path, ckpts) -> tuple:
    return bap_predict.main, ["--checkpoint", ckpts["bap"], "--cohort", source, "--out", out / "pred.csv"]


def _train(source: Path, out: Path, _ckpts) -> tuple:
    return train.main, ["--config", "tiny", "--set", f"data.source={source}", "--run-dir", out,
                        "--set", "training.max_steps=1"]  # fmt: skip


def _eval(source: Path, out: Path, _ckpts) -> tuple:
    return evaluate.main, ["regions", "--cohort", source, "--out", out, "--registration", "none",
                           "--no-progress"]  # fmt: skip


COMMANDS = {
    "flowlet-augment": _augment,
    "bap-train": _bap_train,
    "bap-predict": _bap_predict,
    "flowlet-train": _train,
    "flowlet-eval": _eval,
}


def _cases():
    for command in COMMANDS:
        for case in BAD_TABLES:
            marks = []
            yield pytest.param(command, case, id=f"{command}-{case}", marks=marks)


@pytest.mark.parametrize(("command", "case"), list(_cases()))
def test_bad_cohort_is_named_and_nothing_is_written(command, case, cli, tmp_path, request):
    ckpts = {}
    if command == "bap-predict":
        ckpts["bap"] = request.getfixturevalue("bap_checkpoint")
    if command == "flowlet-augment":
        ckpts["flowlet"] = request.getfixturevalue("tiny_checkpoint")
    source = BAD_TABLES[case].build(tmp_path / "cohort")
    out = tmp_path / "out"
    main, argv = COMMANDS[command](source, out, ckpts)
    result = cli(main, argv)
    assert result.code == 2, result.text
    for words in BAD_TABLES[case].expected:
        assert words in result.text, (words, result.text)
    assert [f for f in leftovers(out) if not f.endswith(".log")] == []
    assert temp_files(tmp_path) == []
