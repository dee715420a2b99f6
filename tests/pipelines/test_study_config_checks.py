"""The study config refuses bad ``augment`` and ``bap`` settings when it is loaded, before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from configs import config_path
from pipelines.study.cli import main
from pipelines.study.config import StudyConfigError, load_study_config

# (section, key, value, words the message must hold after the file name)
LATE_SETTINGS = [
    ("augment", "bin_width", -3, ("augment.bin_width", "expected a positive number of years", "-3")),
    ("augment", "synthetic_ratio", -1.0, ("augment.synthetic_ratio", "expected a non-negative number")),
    ("augment", "max_synthetic", -5, ("augment.max_synthetic", "expected a non-negative count")),
    ("augment", "min_per_bin", -2, ("augment.min_per_bin", "expected a non-negative count")),
    ("augment", "target_hist", "triangular", ("augment.target_hist", "expected uniform, match:FILE")),
    (
        "augment",
        "target_hist",
        "match:absent.tsv",
        ("augment.target_hist", "absent.tsv: target file not found"),
    ),
    ("augment", "solver", "leapfrog", ("augment.solver", "unknown value 'leapfrog'", "midpoint")),
    ("augment", "steps", 0, ("augment.steps", "positive integer", "got 0")),
    ("augment", "time_grid", "spiral", ("augment.time_grid", "unknown value 'spiral'", "cosine")),
    ("augment", "batch_size", 0, ("augment.batch_size", "positive integer", "got 0")),
    ("augment", "seed", -1, ("augment.seed", ">= 0")),
    ("bap", "config", "no-such-bap", ("bap.config", "no packaged config 'bap/no-such-bap'")),
    ("bap", "overrides", {"trian": {"epochs": 2}}, ("bap.overrides", "unknown config section 'trian'")),
    (
        "bap",
        "overrides",
        {"train": {"epochs": "two"}},
        ("bap.overrides", "train.epochs: expected an integer"),
    ),
    (
        "eval",
        "atlas",
        "harvard-oxfrod",
        ("eval.atlas = 'harvard-oxfrod'", "expected one of", "harvard-oxford"),
    ),
]


def _demo_with(tmp_path: Path, section: str, key: str, value) -> Path:
    raw = yaml.safe_load(config_path("study", "demo").read_text(encoding="utf-8"))
    raw["cohort"]["phantoms"]["n"] = 12  # small, so that a run which is not refused stays short
    raw[section][key] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "key", "value", "words"), LATE_SETTINGS, ids=lambda v: str(v)[:20])
def test_late_settings_are_refused_at_load_naming_file_and_field(tmp_path, section, key, value, words):
    path = _demo_with(tmp_path, section, key, value)
    with pytest.raises(StudyConfigError) as info:
        load_study_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {words[0]}"), message
    for word in words[1:]:
        assert word in message, (word, message)


def test_the_demo_settings_pass_the_load_checks():
    config = load_study_config(config_path("study", "demo"))
    assert config.augment.bin_width == 10.0 and config.bap.config == "demo"


def test_bad_augment_section_stops_the_study_before_its_first_stage(tmp_path, capsys):
    path = _demo_with(tmp_path, "augment", "bin_width", -3)
    out = tmp_path / "study"
    assert main(["--config", str(path), "--out", str(out), "--until", "split"]) == 2
    assert f"{path}: augment.bin_width: expected a positive number of years" in capsys.readouterr().err
    assert not out.exists()
