"""YAML configurations: unknown keys, wrong types, non-mappings and ``!!python`` tags, for every command with a config.

A ``!!python/object/apply`` tag would run code under ``yaml.load``; ``yaml.safe_load`` refuses it. The tests prove
the refusal by the absence of the marker file the tag would create.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import leftovers, write_bids, write_table_cohort

from pipelines import bap_train, train
from pipelines.eval import cli as evaluate


def _python_tag(marker: Path) -> str:
    return f"train:\n  lr: !!python/object/apply:os.system ['touch {marker}']\n"


# case -> (config text per command or a callable of the marker path, words the message must contain)
TRAIN_CASES = {
    "unknown_key": ("training:\n  lrr: 0.1\n", ("training: unknown key(s) ['lrr']",)),
    "wrong_type": ("training:\n  lr: fast\n", ("training.lr: expected a number", "fast")),
    "unknown_section": ("trainin:\n  lr: 0.1\n", ("trainin",)),
    "not_a_mapping": ("- just\n- a list\n", ("top level must be a mapping",)),
    "python_tag": (lambda m: f"training:\n  lr: !!python/object/apply:os.system ['touch {m}']\n", ("not valid YAML", "python/object")),
}  # fmt: skip

BAP_CASES = {
    "unknown_key": ("train:\n  lrr: 0.1\n", ("lrr",)),
    "wrong_type": ("train:\n  epochs: many\n", ("epochs", "many")),
    "not_a_mapping": ("- a\n- b\n", ("config.yaml",)),
    "python_tag": (_python_tag, ("cannot read the config", "python/object")),
}

EVAL_CASES = {
    "unknown_key": ("atlass: harvard-oxford\n", ("atlass",)),
    "wrong_type": ("voxel_size: big\n", ("voxel_size", "big")),
    "python_tag": (lambda m: f"voxel_size: !!python/object/apply:os.system ['touch {m}']\n", ("cannot read the config", "python/object")),
}  # fmt: skip


def _write(tmp_path: Path, text) -> tuple[Path, Path]:
    marker = tmp_path / "yaml-payload-ran"
    path = tmp_path / "config.yaml"
    path.write_text(text(marker) if callable(text) else text)
    return path, marker


def _check(result, expected, config: Path, marker: Path, out: Path) -> None:
    assert result.code == 2, result.text
    assert str(config) in result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert not marker.exists()
    assert [f for f in leftovers(out) if not f.endswith(".log")] == []


XFAIL: dict[str, str] = {}


def _params(command: str, cases: dict) -> list:
    return [
        pytest.param(
            case,
            id=case,
            marks=[pytest.mark.xfail(strict=True, reason=XFAIL[f"{command}-{case}"])]
            if f"{command}-{case}" in XFAIL
            else [],
        )
        for case in cases
    ]


@pytest.mark.parametrize("case", _params("flowlet-train", TRAIN_CASES))
def test_flowlet_train_config(case, cli, tmp_path):
    text, expected = TRAIN_CASES[case]
    config, marker = _write(tmp_path, text)
    source = write_bids(tmp_path / "cohort")
    out = tmp_path / "run"
    result = cli(train.main, ["--config", config, "--set", f"data.source={source}", "--run-dir", out])
    _check(result, expected, config, marker, out)


def test_flowlet_train_override_with_python_tag_is_refused(cli, tmp_path):
    marker = tmp_path / "override-payload-ran"
    out = tmp_path / "run"
    result = cli(train.main, ["--config", "tiny", "--run-dir", out,
                              "--set", f"training.lr=!!python/object/apply:os.system ['touch {marker}']"])  # fmt: skip
    assert result.code == 2, result.text
    assert "training.lr" in result.text
    assert not marker.exists()
    assert [f for f in leftovers(out) if not f.endswith(".log")] == []


@pytest.mark.parametrize("case", _params("bap-train", BAP_CASES))
def test_bap_train_config(case, cli, tmp_path):
    text, expected = BAP_CASES[case]
    config, marker = _write(tmp_path, text)
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "run"
    result = cli(bap_train.main, ["--real", table, "--config", config, "--out", out, "--no-progress"])
    _check(result, expected, config, marker, out)


def test_bap_train_set_with_unknown_key(cli, tmp_path):
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "run"
    result = cli(bap_train.main, ["--real", table, "--out", out, "--set", "train.lr_x=1", "--no-progress"])
    assert result.code == 2
    assert "lr_x" in result.text
    assert leftovers(out) == []


@pytest.mark.parametrize("case", _params("flowlet-eval", EVAL_CASES))
def test_eval_config(case, cli, tmp_path):
    text, expected = EVAL_CASES[case]
    config, marker = _write(tmp_path, text)
    source = write_bids(tmp_path / "cohort")
    out = tmp_path / "eval"
    result = cli(evaluate.main, ["regions", "--cohort", source, "--out", out, "--config", config, "--registration",
                                 "none", "--no-progress"])  # fmt: skip
    _check(result, expected, config, marker, out)
