"""The study's eval stage calls the ``flowlet-eval`` run functions in-process: their errors reach the study as raised."""

from __future__ import annotations

import pytest

from flowlet.data import keys
from flowlet.data.cohort import load_cohort
from pipelines.eval import privacy, quality
from pipelines.study.config import study_config_from_dict
from pipelines.study.runner import StageContext, StageResult
from pipelines.study.stages import run_eval


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder holding a split (4 phantoms, 2 train and 2 test) and a 'synthetic' cohort."""
    from flowlet.data.phantom import write_phantom_cohort

    root = tmp_path_factory.mktemp("study")
    folder = write_phantom_cohort(root / "cohort" / "data", 4, voxel_size=4, seed=1, progress=False)
    table = load_cohort(folder).table.assign(**{keys.SPLIT: ["train", "test", "train", "test"]})
    (root / "split").mkdir()
    table.to_csv(root / "split" / "split.tsv", sep="\t", index=False)
    return root


def _context(root, name: str) -> StageContext:
    stage_dir = root / name
    stage_dir.mkdir(exist_ok=True)
    results = {
        "split": StageResult("split", "k1", {"split": "split/split.tsv"}),
        "augment": StageResult("augment", "k2", {"synthetic": "cohort/data"}),
    }
    return StageContext(study_dir=root, stage_dir=stage_dir, config={}, full_config={}, results=results)


def _config(**section):
    raw = {"cohort": {"phantoms": {"n": 4}}, "generator": {"checkpoint": "demo"}, "eval": section}
    return study_config_from_dict(raw)


def _raise(exc: BaseException):
    def run(*args, **kwargs):
        raise exc

    return run


def test_a_quality_error_reaches_the_study_unchanged(study, monkeypatch):
    monkeypatch.setattr(quality, "run_quality", _raise(ValueError("boom")))
    with pytest.raises(ValueError, match=r"^boom$"):
        run_eval(_context(study, "eval-q"), _config(registration="none"))


def test_a_privacy_error_reaches_the_study_unchanged(study, monkeypatch):
    monkeypatch.setattr(privacy, "run_privacy", _raise(KeyError("no column")))
    with pytest.raises(KeyError, match="no column"):
        run_eval(_context(study, "eval-p"), _config(quality=False))


def test_the_stage_passes_its_section_to_the_run_functions(study, monkeypatch):
    seen = {}

    def record(name):
        def run(*args, **kwargs):
            seen[name] = (args, kwargs)

        return run

    monkeypatch.setattr(quality, "run_quality", record("quality"))
    monkeypatch.setattr(privacy, "run_privacy", record("privacy"))
    ctx = _context(study, "eval-args")
    outputs = run_eval(ctx, _config(atlas="aal", registration="none", max_images=3, jobs=2))
    assert outputs == {"quality": "eval-args/quality", "privacy": "eval-args/privacy"}
    (real, synthetic, _, config, measure), _ = seen["quality"]
    assert real == ctx.stage_dir / "real_train.tsv" and synthetic.endswith("data")
    assert (config.atlas.name, config.voxel_size) == ("aal", 4.0)
    assert (measure.registration, measure.limit, measure.jobs, measure.progress) == ("none", 3, 2, False)
    (train, holdout, _, _, privacy_config), kwargs = seen["privacy"]
    assert holdout == ctx.stage_dir / "real_test.tsv" and privacy_config == config
    assert kwargs == {"limit": 3, "progress": False}
    assert len(load_cohort(train).table) == 2


def test_bad_eval_settings_are_refused_with_the_config(monkeypatch):
    from pipelines.study.config import StudyConfigError

    for section in ({"jobs": 0}, {"max_images": 0}, {"registration": "affine"}):
        with pytest.raises(StudyConfigError, match="eval needs"):
            _config(**section)
