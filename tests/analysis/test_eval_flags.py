"""``flowlet-eval``: every sub-command accepts only the flags it uses, and each of those reaches its run function."""

from __future__ import annotations

import pytest

from pipelines.eval import cli, fidelity, privacy, quality, regions, tables
from pipelines.eval.common import MeasureOptions


def _argv(command: str, tmp_path) -> list[str]:
    """The required flags of ``command`` (paths that need not exist: argparse refuses before any reading)."""
    out = ["--out", str(tmp_path / "out")]
    return {
        "regions": ["regions", "--cohort", "c", *out],
        "quality": ["quality", "--real", "r", "--synthetic", "s", *out],
        "fidelity": ["fidelity", "--real", "r", "--synthetic", "s", *out],
        "privacy": ["privacy", "--train", "t", "--holdout", "h", "--synthetic", "s", *out],
        "tables": ["tables", "--inputs", "q", *out],
    }[command]


# flags a sub-command used to accept and ignore, and flags of other sub-commands
FOREIGN = [
    ("privacy", ["--atlas", "harvard-oxford"]),
    ("privacy", ["--atlas-image", "a.nii.gz", "--atlas-table", "a.tsv"]),
    ("privacy", ["--registration", "none"]),
    ("privacy", ["--jobs", "2"]),
    ("tables", ["--voxel-size", "4"]),
    ("tables", ["--limit", "2"]),
    ("tables", ["--atlas", "harvard-oxford"]),
    ("regions", ["--name", "x"]),
    ("regions", ["--bap", "best.pt"]),
    ("quality", ["--bins", "10", "50"]),
    ("quality", ["--holdout", "h"]),
    ("fidelity", ["--train", "t"]),
]


@pytest.mark.parametrize(("command", "extra"), FOREIGN, ids=[f"{c}{e[0]}" for c, e in FOREIGN])
def test_a_flag_the_subcommand_does_not_use_is_refused(command, extra, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*_argv(command, tmp_path), *extra])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {extra[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["regions", "quality", "fidelity", "privacy", "tables"])
def test_the_required_flags_alone_parse(command, tmp_path):
    args = cli.build_parser().parse_args(_argv(command, tmp_path))
    assert args.command == command and callable(args.run)


class _Recorder:
    def __init__(self):
        self.args, self.kwargs = (), {}

    def __call__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        return args[0] if args else None


def _run(monkeypatch, module, name: str, argv: list[str]) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(module, name, recorder)
    assert cli.main(argv) == 0
    return recorder


def test_privacy_flags_reach_the_audit(monkeypatch, tmp_path):
    argv = [*_argv("privacy", tmp_path), "--limit", "3", "--voxel-size", "4", "--no-progress"]
    rec = _run(monkeypatch, privacy, "run_privacy", argv)
    train, holdout, synthetic, out, config = rec.args
    assert (train, holdout, synthetic, out) == ("t", "h", "s", tmp_path / "out")
    assert config.voxel_size == 4.0 and rec.kwargs == {"limit": 3, "progress": False}


@pytest.mark.parametrize(("command", "module", "name"), [
    ("regions", regions, "run_regions"),
    ("quality", quality, "run_quality"),
    ("fidelity", fidelity, "run_fidelity"),
])  # fmt: skip
def test_measure_and_atlas_flags_reach_the_run_function(command, module, name, monkeypatch, tmp_path):
    image, table = tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv"
    argv = [*_argv(command, tmp_path), "--registration", "none", "--limit", "5", "--jobs", "2", "--no-progress",
            "--voxel-size", "4", "--atlas-image", str(image), "--atlas-table", str(table)]  # fmt: skip
    rec = _run(monkeypatch, module, name, argv)
    config, measure = rec.args[-2:]
    assert measure == MeasureOptions(registration="none", limit=5, progress=False, jobs=2)
    assert config.voxel_size == 4.0
    assert (config.atlas.image, config.atlas.table) == (str(image), str(table))


def test_regions_real_synthetic_goes_to_the_pair_run(monkeypatch, tmp_path):
    argv = ["regions", "--real", "r", "--synthetic", "s", "--out", str(tmp_path / "out"), "--atlas", "aal"]
    rec = _run(monkeypatch, regions, "run_regions_pair", argv)
    assert rec.args[:3] == ("r", "s", tmp_path / "out") and rec.args[3].atlas.name == "aal"


def test_fidelity_flags_reach_the_run_function(monkeypatch, tmp_path):
    argv = [*_argv("fidelity", tmp_path), "--bap", "best.pt", "--bap-column", "pred_corrected", "--bins", "10",
            "50", "90", "--n-boot", "300", "--no-truth", "--name", "model"]  # fmt: skip
    rec = _run(monkeypatch, fidelity, "run_fidelity", argv)
    assert rec.kwargs == {
        "bap": "best.pt",
        "bap_column": "pred_corrected",
        "bins": [10.0, 50.0, 90.0],
        "n_boot": 300,
        "truth": False,
        "name": "model",
    }


def test_quality_name_and_tables_names_reach_the_run_functions(monkeypatch, tmp_path):
    rec = _run(monkeypatch, quality, "run_quality", [*_argv("quality", tmp_path), "--name", "ablation"])
    assert rec.kwargs == {"name": "ablation"}
    argv = ["tables", "--inputs", "q", "p", "--names", "A", "B", "--out", str(tmp_path / "t")]
    rec = _run(monkeypatch, tables, "run_tables", argv)
    assert [str(p) for p in rec.args[0]] == ["q", "p"] and rec.args[1] == ["A", "B"]


@pytest.mark.parametrize(("field", "value", "words"), [
    ("registration", "affine", "registration: expected one of ['demons', 'none']"),
    ("limit", 0, "limit: expected a positive number"),
    ("jobs", 0, "jobs: expected at least 1"),
])  # fmt: skip
def test_measure_options_refuse_bad_values_naming_the_parameter(field, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        MeasureOptions(**{field: value})
