"""``flowlet-study``: bad study configurations and a bad cohort stop the study with a named error.

A bad configuration is refused before the study folder is created; a bad cohort stops the first stage, which then
has no ``stage.json`` record (so nothing downstream can reuse it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from reliability_helpers import BAD_TABLES, leftovers

from configs import config_path
from pipelines.study import cli as study


def _config(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(config_path("study", "demo").read_text())
    text = edit(raw)
    path = tmp_path / "study.yaml"
    path.write_text(text if isinstance(text, str) else yaml.safe_dump(raw))
    return path


STUDY_CASES = {
    "unknown_key": (lambda raw: raw.update(cohortt={"n": 1}), ("unknown key(s)", "cohortt")),
    "wrong_type": (
        lambda raw: raw["split"].update(seed="zero"),
        ("split.seed", "expected an integer", "'zero'"),
    ),
    "two_cohort_sources": (
        lambda raw: raw["cohort"].update(path="somewhere"),
        ("cohort needs exactly one of 'path' or 'phantoms'",),
    ),
    "python_tag": (
        lambda raw: "name: !!python/object/apply:os.system ['touch {marker}']\n",
        ("not valid YAML", "python/object"),
    ),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_bad_study_config_is_refused_before_anything_is_written(case, cli, tmp_path):
    edit, expected = STUDY_CASES[case]
    marker = tmp_path / "payload-ran"
    config = _config(tmp_path, lambda raw: t.format(marker=marker) if isinstance(t := edit(raw), str) else t)
    out = tmp_path / "study"
    result = cli(study.main, ["--config", config, "--out", out])
    assert result.code == 2, result.text
    assert str(config) in result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert not marker.exists()
    assert not out.exists()


def test_missing_study_config(cli, tmp_path):
    result = cli(study.main, ["--config", tmp_path / "absent.yaml", "--out", tmp_path / "study"])
    assert result.code == 2
    assert "absent.yaml: study config not found" in result.text
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("case", ["absurd_age_250", "duplicate_ids", "missing_age_column"])
def test_bad_cohort_stops_the_study_at_its_first_stage(case, cli, tmp_path):
    source = BAD_TABLES[case].build(tmp_path / "cohort")

    def use_cohort(raw: dict) -> None:
        raw["cohort"] = {"path": str(source)}

    config = _config(tmp_path, use_cohort)
    out = tmp_path / "study"
    result = cli(study.main, ["--config", config, "--out", out, "--until", "cohort"])
    assert result.code == 2, result.text
    for words in BAD_TABLES[case].expected:
        assert words in result.text, (words, result.text)
    assert not (out / "cohort" / "stage.json").exists()
    assert [f for f in leftovers(out) if f not in ("study_config.json", ".flowlet-manifest.json")] == []
