"""Bad checkpoints, official configs, conditions, target histograms and phantom options, per command.

Every case: exit status 2, a message naming the file or flag and what was expected, and an output folder that
holds nothing (at most a released lock file).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reliability_helpers import leftovers, temp_files, write_bids

from pipelines import augment, bap_predict, generate, phantoms

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official"


def _official(tmp_path: Path, *, config: dict | None = None, drop: tuple[str, ...] = (), ranges=None) -> Path:
    """A copy of the official fixture trio with an edited config.json / condition_ranges.json."""
    folder = tmp_path / "official"
    folder.mkdir()
    shutil.copy(OFFICIAL / "model.pth", folder / "model.pth")
    raw = json.loads((OFFICIAL / "config.json").read_text()) | (config or {})
    for key in drop:
        raw.pop(key)
    (folder / "config.json").write_text(json.dumps(raw))
    ranges = ranges if ranges is not None else json.loads((OFFICIAL / "condition_ranges.json").read_text())
    (folder / "condition_ranges.json").write_text(json.dumps(ranges))
    return folder / "model.pth"


def _truncated_copy(tmp_path: Path) -> Path:
    path = _official(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    return path


# case -> (checkpoint builder, words the message must contain)
BAD_CHECKPOINTS = {
    "missing_file": (lambda t: t / "absent.pt", ("absent.pt", "not found")),
    "truncated_checkpoint": (_truncated_copy, ("model.pth", "refused to load", "nothing from it was run")),
    "random_bytes_checkpoint": (_random_bytes, ("random.pt", "refused to load")),
    "official_config_missing_fields": (
        lambda t: _official(t, drop=("unet_channel_mult", "model_input_size")),
        ("config.json", "required field(s)", "unet_channel_mult", "model_input_size"),
    ),
    "official_config_wrong_type": (
        lambda t: _official(t, config={"unet_num_res_blocks": "two"}),
        ("config.json", "'unet_num_res_blocks' must be a int", "'two'"),
    ),
    "different_architecture": (
        lambda t: _official(t, config={"unet_model_channels": 16}),
        ("model.pth", "config.json", "unet_model_channels"),
    ),
    "condition_ranges_inverted": (
        lambda t: _official(t, ranges={"Age": {"min": 90, "max": 10}}),
        ("condition_ranges.json", "'Age'", "min <= max"),
    ),
    "bap_checkpoint_given_to_generator": (None, ("best.pt", "no state dict found")),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["flowlet-generate", "flowlet-augment"])
def test_bad_flowlet_checkpoint(command, case, cli, tmp_path, request):
    build, expected = BAD_CHECKPOINTS[case]
    ckpt = request.getfixturevalue("bap_checkpoint") if build is None else build(tmp_path)
    out = tmp_path / "out"
    if command == "flowlet-generate":
        result = cli(generate.main, ["--checkpoint_path", ckpt, "--output_dir", out, "--generation_conditions",
                                     "Age=40", "--num_synthetic", "1", "--num_flow_steps", "1", "--no-progress"])  # fmt: skip
    else:
        real = write_bids(tmp_path / "real")
        result = cli(augment.main, ["--real", real, "--checkpoint", ckpt, "--out", out, "--steps", "1",
                                    "--bin-width", "20", "--no-progress"])  # fmt: skip
    assert result.code == 2, result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert leftovers(out) == []
    assert temp_files(tmp_path) == []


def test_flowlet_checkpoint_given_to_bap_predict(cli, tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    result = cli(
        bap_predict.main, ["--checkpoint", tiny_checkpoint, "--cohort", real, "--out", tmp_path / "p.csv"]
    )
    assert result.code == 2
    assert "tiny.pt" in result.text and "not a brain-age checkpoint" in result.text
    assert not (tmp_path / "p.csv").exists()


# flowlet-generate: bad conditions and options (case -> extra flags, expected words)
BAD_GENERATE = {
    "condition_not_a_number": (["--generation_conditions", "Age=old"], ("--generation_conditions", "KEY=NUMBER", "'Age=old'")),
    "condition_unknown_only": (["--generation_conditions", "Weight=3"], ("no item names a model condition", "'Age'")),
    "num_synthetic_zero": (["--generation_conditions", "Age=40", "--num_synthetic", "0"], ("--num_synthetic must be >= 1",)),
    "linspace_reversed": (["--ages-linspace", "80", "20", "3"], ("--ages-linspace", "MIN < MAX")),
    "unknown_solver": (["--generation_conditions", "Age=40", "--solver", "rk45"], ("solver", "'rk45'", "choose from")),
    "unknown_ablation": (["--generation_conditions", "Age=40", "--ablation", "nofilm"], ("--ablation", "'nofilm'")),
    "prefix_escapes_output": (["--ages-linspace", "20", "80", "2", "--filename_prefix", "../../escaped"],
                              ("would leave the output folder",)),
    "prefix_absolute_path": (["--ages-linspace", "20", "80", "2", "--filename_prefix", "/tmp/abs"],
                             ("would leave the output folder",)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_GENERATE))
def test_bad_generate_options(case, cli, tmp_path, tiny_checkpoint):
    extra, expected = BAD_GENERATE[case]
    out = tmp_path / "out"
    result = cli(generate.main, ["--checkpoint_path", tiny_checkpoint, "--output_dir", out, "--num_flow_steps", "1",
                                 "--no-progress", *extra])  # fmt: skip
    assert result.code == 2, result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert leftovers(out) == []
    assert not list(tmp_path.parent.glob("escaped*")) and not list(Path("/tmp").glob("abs_*AgeLin*"))


def test_generate_age_outside_the_checkpoint_range_is_clipped_with_a_warning(cli, tmp_path, tiny_checkpoint):
    """Official behaviour (spec): ages outside the training range are clipped; the user is told the range."""
    out = tmp_path / "out"
    result = cli(generate.main, ["--checkpoint_path", tiny_checkpoint, "--output_dir", out, "--num_flow_steps", "1",
                                 "--generation_conditions", "Age=150", "--num_synthetic", "1", "--no-progress"])  # fmt: skip
    assert result.code == 0
    assert "[150.0] lie outside the training range [10, 90] and are clipped" in result.text


# flowlet-augment: targets that cannot be met (case -> extra flags, expected words)
BAD_TARGETS = {
    "ages_outside_checkpoint_range": (["--bins", "90", "100", "110", "--synthetic-ratio", "1"],
                                      ("outside the checkpoint's training age range 10-90", "--allow-extrapolation")),
    "gaussian_without_mass": (["--target-hist", "gaussian:500,1"], ("gaussian:500.0,1.0 puts no mass in the bins",)),
    "gaussian_negative_sd": (["--target-hist", "gaussian:50,-5"], ("gaussian target", "positive SD")),
    "min_per_bin_over_budget": (["--min-per-bin", "50", "--max-synthetic", "3"],
                                ("--min-per-bin 50 needs", "more than the budget of 3")),
    "unknown_target": (["--target-hist", "flat"], ("--target-hist 'flat'", "expected uniform, match:FILE")),
    "target_file_missing": (["--target-hist", "match:nowhere.tsv"], ("nowhere.tsv", "target file not found")),
    "bins_not_increasing": (["--bins", "50", "40", "60"], ("--bins", "strictly increasing")),
    "negative_ratio": (["--synthetic-ratio", "-1"], ("--synthetic-ratio", "non-negative")),
    "bad_shard": (["--shard", "2/2"], ("--shard '2/2'", "0 <= I < N")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_target_that_cannot_be_met(case, cli, tmp_path, tiny_checkpoint):
    extra, expected = BAD_TARGETS[case]
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    result = cli(augment.main, ["--real", real, "--checkpoint", tiny_checkpoint, "--out", out, "--steps", "1",
                                "--bin-width", "20", "--no-progress", *extra])  # fmt: skip
    assert result.code == 2, result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert leftovers(out) == []


# flowlet-phantoms: bad options (case -> extra flags or histogram file text, expected words)
BAD_PHANTOMS = {
    "n_zero": (["--n", "0"], None, ("--n must be at least 1",)),
    "hist_missing_file": (["--age-hist", "nowhere.tsv"], None, ("nowhere.tsv", "not 'skewed', 'uniform' or an existing file")),
    "hist_wrong_columns": ([], "lo\thi\tn\n20\t40\t5\n", ("columns ['lo', 'hi', 'n']", "age_min, age_max")),
    "hist_absurd_age": ([], "age_min\tage_max\tcount\n20\t250\t5\n", ("0 <= age_min < age_max <= 120",)),
    "hist_overlapping_bins": ([], "age_min\tage_max\tcount\n20\t50\t5\n40\t60\t5\n", ("must not overlap",)),
    "hist_negative_count": ([], "age_min\tage_max\tcount\n20\t40\t-5\n", ("'count' must be non-negative",)),
    "hist_non_numeric": ([], "age_min\tage_max\tcount\n20\tforty\t5\n", ("numeric age_min, age_max and count",)),
    "too_many_sites": (["--sites", "99"], None, ("sites must be between 1 and",)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PHANTOMS))
def test_bad_phantom_options(case, cli, tmp_path):
    extra, hist_text, expected = BAD_PHANTOMS[case]
    if hist_text is not None:
        (tmp_path / "hist.tsv").write_text(hist_text)
        extra = ["--age-hist", str(tmp_path / "hist.tsv")]
    out = tmp_path / "out"
    argv = ["--n", "2", "--out", out, "--voxel-size", "4", "--no-progress", *extra]
    result = cli(phantoms.main, argv)
    assert result.code == 2, result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert leftovers(out) == []


def test_phantoms_refuse_a_non_empty_folder_and_leave_it_alone(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli(phantoms.main, ["--n", "1", "--out", out, "--voxel-size", "4", "--no-progress"])
    assert result.code == 2
    assert f"output folder '{out}' is not empty; use --overwrite" in result.text
    assert leftovers(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
