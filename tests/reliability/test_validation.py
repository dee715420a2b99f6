"""Validation at the boundary: numbers, checkpoint fields, image headers and dtypes, duplicates, target tables.

Every refusal: exit status 2 (or the library's ``ValueError``), a message naming the flag, file or field and what
was expected, before any work; nothing written.
"""

from __future__ import annotations

import builtins
import gzip
import json
import logging
import math
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from reliability_helpers import AFFINE, good_image, leftovers, write_bids, write_raw, write_table_cohort

from flowlet.data.nifti import save_volume
from pipelines import augment, bap_predict, bap_train, generate, phantoms, prep, train
from pipelines.eval import cli as evaluate
from pipelines.eval.common import cohort_table
from pipelines.study import cli as study_cli

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official"


# ------------------------------------------------------------------------------ checkpoints: condition ranges
def _ours_with_ranges(tmp_path: Path, source: Path, lo: float, hi: float) -> Path:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload["condition_ranges"] = {"Age": [lo, hi]}
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def _official_with_ranges(tmp_path: Path, _source: Path, lo: float, hi: float) -> Path:
    folder = tmp_path / "official"
    folder.mkdir()
    for name in ("model.pth", "config.json"):
        (folder / name).write_bytes((OFFICIAL / name).read_bytes())
    (folder / "condition_ranges.json").write_text(json.dumps({"Age": {"min": lo, "max": hi}}))
    return folder / "model.pth"


RANGES = {"inverted": (90.0, 10.0), "nan_min": (math.nan, 90.0), "inf_max": (10.0, math.inf)}


def _run_checkpoint(cli, command: str, ckpt: Path, tmp_path: Path):
    out = tmp_path / "out"
    if command == "flowlet-generate":
        argv = ["--checkpoint_path", ckpt, "--output_dir", out, "--generation_conditions", "Age=40",
                "--num_synthetic", "1", "--num_flow_steps", "1", "--no-progress"]  # fmt: skip
        return cli(generate.main, argv), out
    real = write_bids(tmp_path / "real")
    argv = ["--real", real, "--checkpoint", ckpt, "--out", out, "--steps", "1", "--bin-width", "20",
            "--synthetic-ratio", "0.5", "--no-progress"]  # fmt: skip
    return cli(augment.main, argv), out


@pytest.mark.parametrize("command", ["flowlet-generate", "flowlet-augment"])
@pytest.mark.parametrize("case", list(RANGES))
def test_checkpoint_with_a_bad_condition_range_is_refused(command, case, cli, tmp_path, tiny_checkpoint):
    ckpt = _ours_with_ranges(tmp_path, tiny_checkpoint, *RANGES[case])
    result, out = _run_checkpoint(cli, command, ckpt, tmp_path)
    assert result.code == 2, result.text
    for words in ("edited.pt", "condition_ranges", "'Age'", "finite min <= max"):
        assert words in result.text, (words, result.text)
    assert leftovers(out) == []


@pytest.mark.parametrize("case", ["nan_min", "inf_max"])
def test_official_condition_ranges_must_be_finite(case, cli, tmp_path, tiny_checkpoint):
    ckpt = _official_with_ranges(tmp_path, tiny_checkpoint, *RANGES[case])
    result, out = _run_checkpoint(cli, "flowlet-generate", ckpt, tmp_path)
    assert result.code == 2, result.text
    assert "condition_ranges.json" in result.text and "finite min <= max" in result.text
    assert leftovers(out) == []


def test_save_bundle_refuses_an_inverted_range(tmp_path, tiny_checkpoint):
    from flowlet.checkpoint import CheckpointError, load_bundle, save_bundle

    bundle = load_bundle(tiny_checkpoint)
    with pytest.raises(
        CheckpointError, match=r"condition 'Age' must have finite min <= max, got min=90, max=10"
    ):
        save_bundle(tmp_path / "x.pt", bundle.model, bundle.model_config, condition_ranges={"Age": (90.0, 10.0)},
                    model_input_size=bundle.model_input_size, save_size=None, path_name="rectified",
                    provenance={})  # fmt: skip
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------- numeric flags of every command
def _generate(extra):
    return generate.main, ["--checkpoint_path", "demo", "--output_dir", "{out}", "--generation_conditions",
                           "Age=40", *extra]  # fmt: skip


def _augment(extra):
    return augment.main, ["--real", "{real}", "--checkpoint", "demo", "--out", "{out}", *extra]


def _bap_train(extra):
    return bap_train.main, ["--real", "{real}", "--out", "{out}", *extra]


def _eval(extra):
    return evaluate.main, ["regions", "--cohort", "{real}", "--out", "{out}", *extra]


# case -> (command builder, extra flags, words the message must contain)
BAD_NUMBERS = {
    "generate-age-nan": (_generate, ["--generation_conditions", "Age=nan"], ("--generation_conditions", "finite")),
    "generate-age-inf": (_generate, ["--generation_conditions", "Age=inf"], ("--generation_conditions", "finite")),
    "generate-guidance-nan": (_generate, ["--guidance-scale", "nan"], ("--guidance-scale", "finite number in [0, 100]")),
    "generate-guidance-inf": (_generate, ["--guidance-scale", "inf"], ("--guidance-scale", "[0, 100]")),
    "generate-save-size-zero": (_generate, ["--save_size", "0", "0", "0"], ("--save_size", "integer in [1, 4096]", "'0'")),
    "generate-save-size-negative": (_generate, ["--save_size", "8", "-8", "8"], ("--save_size", "'-8'")),
    "generate-steps-zero": (_generate, ["--num_flow_steps", "0"], ("--num_flow_steps", "[1, 10000]")),
    "generate-num-synthetic-huge": (_generate, ["--num_synthetic", "1000000000"], ("--num_synthetic", "1000000]")),
    "generate-seed-negative": (_generate, ["--seed", "-1"], ("--seed", "[0, 4294967295]")),
    "generate-threads-zero": (_generate, ["--threads", "0"], ("--threads", "[1, 1024]")),
    "generate-linspace-nan": (lambda e: (generate.main, ["--checkpoint_path", "demo", "--output_dir", "{out}", *e]),
                              ["--ages-linspace", "20", "nan", "3"], ("--ages-linspace", "finite number")),
    "generate-linspace-huge": (lambda e: (generate.main, ["--checkpoint_path", "demo", "--output_dir", "{out}", *e]),
                               ["--ages-linspace", "20", "80", "1e9"], ("--ages-linspace", "[1, 1000000]")),
    "augment-ratio-huge": (_augment, ["--synthetic-ratio", "1e9"], ("--synthetic-ratio", "1000]")),
    "augment-ratio-inf": (_augment, ["--synthetic-ratio", "inf"], ("--synthetic-ratio", "finite number")),
    "augment-ratio-nan": (_augment, ["--synthetic-ratio", "nan"], ("--synthetic-ratio", "finite number")),
    "augment-bin-width-tiny": (_augment, ["--bin-width", "1e-9"], ("--bin-width", "[0.1, 120]")),
    "augment-bins-nan": (_augment, ["--bins", "20", "nan", "60"], ("--bins", "[0, 120]")),
    "augment-guidance-nan": (_augment, ["--guidance-scale", "nan"], ("--guidance-scale", "[0, 100]")),
    "augment-save-size-zero": (_augment, ["--save-size", "0", "0", "0"], ("--save-size", "[1, 4096]")),
    "augment-steps-zero": (_augment, ["--steps", "0"], ("--steps", "[1, 10000]")),
    "augment-max-synthetic-huge": (_augment, ["--max-synthetic", "1e12"], ("--max-synthetic", "integer")),
    "bap-train-ratio-inf": (_bap_train, ["--synthetic-ratio", "inf"], ("--synthetic-ratio", "[0, 1000]")),
    "bap-train-epochs-zero": (_bap_train, ["--epochs", "0"], ("--epochs", "[1, 100000]")),
    "bap-train-seeds-zero": (_bap_train, ["--seeds", "0"], ("--seeds", "[1, 1000]")),
    "bap-train-lr-nan": (_bap_train, ["--set", "train.lr=.nan"], ("train.lr", "finite number")),
    "bap-train-lr-negative": (_bap_train, ["--set", "train.lr=-1"], ("train.lr = -1", "(0, 10]")),
    "bap-train-n-boot-zero": (_bap_train, ["--set", "eval.n_boot=0"], ("eval.n_boot = 0", "[1, 1e+06]")),
    "bap-predict-batch-zero": (lambda e: (bap_predict.main, ["--checkpoint", "x.pt", "--cohort", "{real}",
                                                             "--out", "{out}/p.csv", *e]),
                               ["--batch-size", "0"], ("--batch-size", "[1, 4096]")),
    "eval-limit-negative": (_eval, ["--limit", "-1"], ("--limit", "[1, inf]")),
    "eval-voxel-size-nan": (_eval, ["--voxel-size", "nan"], ("--voxel-size", "[0.5, 8]")),
    "eval-jobs-zero": (_eval, ["--jobs", "0"], ("--jobs", "[1, 1024]")),
    "train-lr-inf": (lambda e: (train.main, ["--config", "tiny", "--set", "data.source={real}", "--run-dir",
                                             "{out}", *e]),
                     ["--set", "training.lr=.inf"], ("training.lr", "finite number")),
    "train-save-size-zero": (lambda e: (train.main, ["--config", "tiny", "--set", "data.source={real}", "--run-dir",
                                                     "{out}", *e]),
                             ["--set", "data.save_size=[0, 0, 0]"], ("data.save_size [0, 0, 0]", "must be positive")),
    "phantoms-n-huge": (lambda e: (phantoms.main, ["--out", "{out}", *e]), ["--n", "1000000000"], ("--n", "100000]")),
    "phantoms-seed-negative": (lambda e: (phantoms.main, ["--n", "2", "--out", "{out}", *e]), ["--seed", "-5"],
                               ("--seed", "[0, 4294967295]")),
    "prep-voxel-size-inf": (lambda e: (prep.main, ["--bids", "{real}", "--out", "{out}", *e]),
                            ["--voxel-size", "inf"], ("--voxel-size", "[0.5, 8]")),
    "prep-jobs-zero": (lambda e: (prep.main, ["--bids", "{real}", "--out", "{out}", *e]), ["--jobs", "0"],
                       ("--jobs", "[1, 1024]")),
    "study-threads-negative": (lambda e: (study_cli.main, ["--config", "demo", "--out", "{out}", *e]),
                               ["--threads", "-1"], ("--threads", "[0, 1024]")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_NUMBERS))
def test_bad_number_is_refused_with_its_limits(case, cli, tmp_path):
    build, extra, expected = BAD_NUMBERS[case]
    main, argv = build(extra)
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    argv = [str(a).format(out=out, real=real) for a in argv]
    result = cli(main, argv)
    assert result.code == 2, result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert "Traceback" not in result.text
    assert leftovers(out) == []


def test_negative_limit_is_refused_by_the_evaluation_library(tmp_path):
    table = write_table_cohort(tmp_path / "cohort")
    with pytest.raises(ValueError, match=r"--limit: expected a positive number of images, got -1"):
        cohort_table(str(table), -1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_typed_config_sections_refuse_non_finite_numbers(value):
    from bap.config import TrainConfig
    from flowlet.data.config import ConfigTypeError, build_section

    with pytest.raises(ConfigTypeError, match=r"train\.lr: expected a finite number"):
        build_section(TrainConfig, {"lr": value}, "train")


# ------------------------------------------------------------------------------------- duplicate images
def _table(root: Path, rows: list[tuple[str, str]]) -> Path:
    frame = pd.DataFrame([{"subject_id": s, "path": p, "age": 30 + i} for i, (s, p) in enumerate(rows)])
    frame.to_csv(root / "dup.csv", index=False)
    return root / "dup.csv"


def test_one_image_file_under_two_subject_ids_is_refused(tmp_path):
    from flowlet.data.cohort import CohortError, load_cohort

    for i in range(3):
        save_volume(tmp_path / f"s{i}.nii.gz", good_image(i), AFFINE)
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "s1.nii.gz")
    for second in ("s1.nii.gz", "link.nii.gz"):
        table = _table(tmp_path, [("a", "s0.nii.gz"), ("b", "s1.nii.gz"), ("c", "s2.nii.gz"), ("d", second)])
        with pytest.raises(CohortError) as info:
            load_cohort(table)
        message = str(info.value)
        for words in (
            "dup.csv",
            "one image file is listed under 2 scans",
            "'b'",
            "'d'",
            "s1.nii.gz",
            "train and test",
        ):
            assert words in message, (words, message)


def test_one_image_under_two_ids_is_refused_by_every_command(cli, tmp_path):
    table = write_table_cohort(tmp_path / "cohort")
    frame = pd.read_csv(table)
    frame.loc[3, "path"] = frame.loc[1, "path"]  # s03 and s01 name one file
    frame.to_csv(table, index=False)
    out = tmp_path / "out"
    result = cli(
        bap_train.main, ["--real", table, "--config", "demo", "--out", out, "--epochs", "1", "--no-progress"]
    )
    assert result.code == 2, result.text
    assert "'s01'" in result.text and "'s03'" in result.text and "one image file" in result.text


def test_byte_identical_copies_under_two_ids_are_flagged(tmp_path, caplog):
    from flowlet.data.cohort import load_cohort

    for i in range(3):
        save_volume(tmp_path / f"s{i}.nii.gz", good_image(i), AFFINE)
    (tmp_path / "copy.nii.gz").write_bytes((tmp_path / "s2.nii.gz").read_bytes())
    table = _table(
        tmp_path, [("a", "s0.nii.gz"), ("b", "s1.nii.gz"), ("c", "s2.nii.gz"), ("d", "copy.nii.gz")]
    )
    with caplog.at_level(logging.WARNING):
        cohort = load_cohort(table)
    assert len(cohort) == 4
    text = caplog.text
    assert "byte-identical" in text and "'c'" in text and "'d'" in text and "copy.nii.gz" in text


# ------------------------------------------------------------------------- image headers, dtypes, access
def _huge_header_file(path: Path, shape=(4000, 4000, 4000)) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(AFFINE, code=2)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(64, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_header_claiming_a_huge_volume_is_refused_without_allocating(name, tmp_path):
    from flowlet.data.cohort import read_image
    from flowlet.data.nifti import NiftiError

    path = _huge_header_file(tmp_path / name)
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(NiftiError) as info:
            read_image(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    for words in (name, "(4000, 4000, 4000)", "64000000000 voxels", "FLOWLET_MAX_VOXELS"):
        assert words in message, (words, message)
    assert peak < 20 * 2**20, f"{peak / 2**20:.1f} MiB allocated"


def test_huge_header_is_named_by_a_command(cli, tmp_path, bap_checkpoint):
    table = write_table_cohort(tmp_path / "cohort")
    _huge_header_file(tmp_path / "cohort" / "s02_T1w.nii.gz")
    result = cli(
        bap_predict.main, ["--checkpoint", bap_checkpoint, "--cohort", table, "--out", tmp_path / "p.csv"]
    )
    assert result.code == 2, result.text
    assert "s02_T1w.nii.gz" in result.text and "FLOWLET_MAX_VOXELS" in result.text
    assert not (tmp_path / "p.csv").exists()


def test_uncompressed_file_shorter_than_its_header_is_refused(tmp_path):
    from flowlet.data.nifti import NiftiError, load_volume

    path = write_raw(tmp_path / "short.nii", good_image(0))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        NiftiError, match=r"short\.nii: the header declares 2400 bytes .* but the file has 2300"
    ):
        load_volume(path)


def test_voxel_budget_is_configurable(tmp_path, monkeypatch):
    from flowlet.data.nifti import NiftiError, load_volume

    path = save_volume(tmp_path / "a.nii.gz", good_image(0), AFFINE)
    monkeypatch.setenv("FLOWLET_MAX_VOXELS", "100")
    with pytest.raises(NiftiError, match=r"512 voxels, more than the budget of 100 \(FLOWLET_MAX_VOXELS\)"):
        load_volume(path)
    monkeypatch.setenv("FLOWLET_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match=r"FLOWLET_MAX_VOXELS: expected a positive integer .* 'lots'"):
        load_volume(path)
    monkeypatch.setenv("FLOWLET_MAX_VOXELS", "512")
    assert load_volume(path).shape == (8, 8, 8)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float64])
def test_integer_and_float_images_are_read_exactly(dtype, tmp_path):
    from flowlet.data.cohort import read_image

    data = np.clip(good_image(0), 0, 100).round().astype(dtype)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE, dtype=dtype), str(path))
    volume = read_image(path)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint16, np.int64])
def test_arrays_of_other_dtypes_are_read_exactly(dtype, tmp_path):
    from flowlet.data.cohort import read_image

    data = np.clip(good_image(1), 0, 100).round().astype(dtype)
    np.save(tmp_path / "x.npy", data)
    volume = read_image(tmp_path / "x.npy", affine=AFFINE)
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))


def _complex_nifti(path: Path) -> Path:
    return write_raw(path, good_image(0).astype(np.complex64) * (1 + 1j))


def _rgb_nifti(path: Path) -> Path:
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = np.clip(good_image(0), 0, 255).astype(np.uint8)
    return write_raw(path, rgb)


def _array(data: np.ndarray):
    def write(path: Path) -> Path:
        np.save(path, data)
        return path

    return write


BAD_DTYPES = {
    "complex_nifti": (_complex_nifti, ".nii.gz", ("complex64", "expected real intensities")),
    "rgb_nifti": (_rgb_nifti, ".nii.gz", ("RGB", "one grey value per voxel")),
    "complex_array": (
        _array(good_image(0).astype(np.complex128)),
        ".npy",
        ("complex128", "real intensities"),
    ),
    "bool_array": (_array(good_image(0) > 50), ".npy", ("bool", "real intensities")),
}


@pytest.mark.parametrize("case", list(BAD_DTYPES))
def test_non_intensity_dtypes_are_refused(case, tmp_path):
    from flowlet.data.cohort import read_image
    from flowlet.data.nifti import NiftiError

    write, suffix, expected = BAD_DTYPES[case]
    path = write(tmp_path / f"x{suffix}")
    with pytest.raises(NiftiError) as info:
        read_image(path, affine=AFFINE)
    for words in (path.name, *expected):
        assert words in str(info.value), (words, str(info.value))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".npy"])
def test_unreadable_file_is_named(suffix, tmp_path, monkeypatch):
    """Permission 000 has no effect for root, so the refusal of ``open`` is simulated."""
    from flowlet.data.cohort import read_image
    from flowlet.data.nifti import NiftiError

    path = tmp_path / f"locked{suffix}"
    if suffix == ".npy":
        np.save(path, good_image(0))
    else:
        save_volume(path, good_image(0), AFFINE)
    real_open = builtins.open

    def refusing(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(NiftiError, match=r"locked.*permission denied"):
        read_image(path, affine=AFFINE)


# ------------------------------------------------------------------------------- target histogram files
BAD_TARGET_FILES = {
    "empty_file": ("", ("cannot read the target table", "header row")),
    "header_only": ("bin_start\tbin_end\tcount\n", ("header but no rows",)),
    "binary_bytes": (bytes(range(256)) * 4, ("cannot read the target table",)),
    "non_numeric_edge": (
        "bin_start\tbin_end\tcount\n20\tforty\t5\n",
        ("'bin_end'", "finite numbers", "forty"),
    ),
    "infinite_count": ("bin_start\tbin_end\tcount\n20\t40\tinf\n", ("'count'", "finite numbers")),
    "ages_beyond_120": ("bin_start\tbin_end\tcount\n100\t200\t5\n", ("100-200", "[0, 120]")),
}


@pytest.mark.parametrize("case", list(BAD_TARGET_FILES))
def test_malformed_target_file_is_named(case, cli, tmp_path, tiny_checkpoint):
    content, expected = BAD_TARGET_FILES[case]
    target = tmp_path / "target.tsv"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    result = cli(augment.main, ["--real", real, "--checkpoint", tiny_checkpoint, "--out", out, "--steps", "1",
                                "--target-hist", target, "--no-progress"])  # fmt: skip
    assert result.code == 2, result.text
    assert "target.tsv" in result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert "Traceback" not in result.text
    assert leftovers(out) == []


@pytest.mark.parametrize(
    ("spec", "words"),
    [("match:{d}/ages.tsv", "ages in [0, 120]"), ("gaussian:nan,5", "finite numbers")],
)
def test_non_finite_target_values_are_refused(spec, words, tmp_path):
    from flowlet.augment.plan import PlanError
    from flowlet.augment.targets import parse_target

    (tmp_path / "ages.tsv").write_text("age\n30\ninf\n")
    with pytest.raises(PlanError) as info:
        parse_target(spec.format(d=tmp_path), np.array([0.0, 50.0, 100.0]))
    assert words in str(info.value)


# ------------------------------------------------------------------------------------- brain-age checkpoints
def _edited_bap(tmp_path: Path, source: Path, edit) -> Path:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    edit(payload)
    path = tmp_path / "edited_best.pt"
    torch.save(payload, path)
    return path


def _first_weight(payload) -> str:
    return next(k for k, v in payload["state_dict"].items() if v.ndim > 1)


def _reshape(payload) -> None:
    key = _first_weight(payload)
    payload["state_dict"][key] = torch.zeros(3, 3)


BAD_BAP = {
    "no_state_dict": (lambda p: p.pop("state_dict"), ("'state_dict' is missing",)),
    "no_model_kwargs": (lambda p: p.pop("model_kwargs"), ("'model_kwargs' is missing",)),
    "no_age_mean": (lambda p: p["model_kwargs"].pop("age_mean"), ("'model_kwargs.age_mean' is missing",)),
    "no_norm": (lambda p: p.pop("norm"), ("'norm' is missing",)),
    "missing_weight": (lambda p: p["state_dict"].pop(_first_weight(p)), ("1 missing keys",)),
    "unexpected_weight": (
        lambda p: p["state_dict"].update(extra=torch.zeros(2)),
        ("1 unexpected keys", "'extra'"),
    ),
    "wrong_shape": (_reshape, ("1 shape mismatches", "checkpoint (3, 3)")),
}


@pytest.mark.parametrize("case", list(BAD_BAP))
def test_broken_brain_age_checkpoint_is_named(case, cli, tmp_path, bap_checkpoint):
    edit, expected = BAD_BAP[case]
    ckpt = _edited_bap(tmp_path, bap_checkpoint, edit)
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "p.csv"
    result = cli(bap_predict.main, ["--checkpoint", ckpt, "--cohort", table, "--out", out])
    assert result.code == 2, result.text
    assert "edited_best.pt" in result.text
    for words in expected:
        assert words in result.text, (words, result.text)
    assert "Traceback" not in result.text
    assert not out.exists()


# ----------------------------------------------------------------------------------- spreadsheet-safe tables
HOSTILE_IDS = ["=HYPERLINK(1)", "+1+1", "-2+3", "@SUM(A1)", "plain"]


def test_written_tables_neutralise_formulas_and_read_back_intact(tmp_path):
    from flowlet.data.cohort import load_cohort, save_cohort_table

    rows = []
    for i, sid in enumerate(HOSTILE_IDS):
        save_volume(tmp_path / f"s{i}.nii.gz", good_image(i), AFFINE)
        rows.append({"subject_id": sid, "path": f"s{i}.nii.gz", "age": 30 + i, "note": "=cmd|' /C calc'!A0"})
    pd.DataFrame(rows).to_csv(tmp_path / "in.tsv", sep="\t", index=False)
    cohort = load_cohort(tmp_path / "in.tsv")
    saved = save_cohort_table(cohort, tmp_path / "out.tsv")
    cells = [line.split("\t") for line in saved.read_text().splitlines()[1:]]
    ids = [row[0] for row in cells]
    assert ids[:4] == ["'" + s for s in HOSTILE_IDS[:4]] and ids[4] == "plain"
    assert all(row[-1] == "'=cmd|' /C calc'!A0" for row in cells)
    assert load_cohort(saved).table["subject_id"].tolist() == HOSTILE_IDS
    assert load_cohort(saved).table["note"].tolist() == ["=cmd|' /C calc'!A0"] * len(HOSTILE_IDS)


def test_plain_numbers_are_not_escaped(tmp_path):
    from flowlet.data.io import write_table_atomic

    path = write_table_atomic(
        tmp_path / "t.csv", pd.DataFrame({"id": ["-3.5", "+2", "x"], "v": [-1.0, 2.0, 3.0]})
    )
    assert path.read_text().splitlines() == ["id,v", "-3.5,-1", "+2,2", "x,3"]
    from flowlet.data.io import spreadsheet_safe_text, undo_spreadsheet_safe_text

    for text in ("\tx", "\rx", "=x", "+x", "-x", "@x"):
        assert spreadsheet_safe_text(text) == "'" + text
        assert undo_spreadsheet_safe_text(spreadsheet_safe_text(text)) == text
    assert (
        undo_spreadsheet_safe_text("'quoted") == "'quoted"
    )  # only a ' before a formula character is removed


def test_bap_predict_output_is_spreadsheet_safe(cli, tmp_path, bap_checkpoint):
    table = write_table_cohort(tmp_path / "cohort")
    frame = pd.read_csv(table)
    frame.loc[0, "subject_id"] = "=1+2"
    frame.loc[1, "subject_id"] = "@cmd"
    frame.to_csv(table, index=False)
    out = tmp_path / "p.csv"
    assert cli(bap_predict.main, ["--checkpoint", bap_checkpoint, "--cohort", table, "--out", out]).code == 0
    ids = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert ids[:2] == ["'=1+2", "'@cmd"]
    assert not any(i.startswith(("=", "+", "-", "@")) for i in ids)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("quality:\n  alpha: 0\n", "quality.alpha = 0.0; expected a number in (0, 1]"),
        ("voxel_size: .inf\n", "voxel_size: expected a finite number"),
        ("segmentation:\n  n_iter: 0\n", "segmentation.n_iter = 0; expected a number in [1, 1000]"),
    ],
)
def test_eval_config_numbers_are_checked(text, words, cli, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(text)
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    result = cli(evaluate.main, ["regions", "--cohort", real, "--out", out, "--config", config, "--registration",
                                 "none", "--no-progress"])  # fmt: skip
    assert result.code == 2, result.text
    assert "eval.yaml" in result.text and words in result.text, result.text
    assert [f for f in leftovers(out) if not f.endswith(".log")] == []
