"""Hostile files: pickle payloads in checkpoints and caches, escaping paths and ids, unsafe YAML tags.

A payload's ``__reduce__`` would create a marker file when unpickled; every test checks that the marker never
appears, so "refused" means "refused before any of its code ran".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reliability_helpers import AFFINE, Payload, good_image, leftovers, write_bids, write_table_cohort

from flowlet.data.io import resolve_inside
from flowlet.data.nifti import save_volume
from pipelines import augment, bap_predict, bap_train, generate, train

RESUME_XFAIL: dict[str, str] = {}


def _flowlet_generate(ckpt: Path, tmp_path: Path):
    return generate.main, ["--checkpoint_path", ckpt, "--output_dir", tmp_path / "out", "--generation_conditions",
                           "Age=40", "--num_synthetic", "1", "--num_flow_steps", "1", "--no-progress"]  # fmt: skip


def _flowlet_augment(ckpt: Path, tmp_path: Path):
    real = write_bids(tmp_path / "real")
    return augment.main, ["--real", real, "--checkpoint", ckpt, "--out", tmp_path / "out", "--no-progress"]


def _bap_predict(ckpt: Path, tmp_path: Path):
    real = write_bids(tmp_path / "real")
    return bap_predict.main, ["--checkpoint", ckpt, "--cohort", real, "--out", tmp_path / "out" / "p.csv"]


LOADERS = {
    "flowlet-generate": (_flowlet_generate, "model.pth"),
    "flowlet-augment": (_flowlet_augment, "model.pth"),
    "bap-predict": (_bap_predict, "best.pt"),
}


@pytest.mark.parametrize("command", list(LOADERS))
def test_pickle_payload_checkpoint_is_refused_and_runs_nothing(command, cli, tmp_path, hostile_checkpoint):
    build, name = LOADERS[command]
    ckpt, marker = hostile_checkpoint(tmp_path / "hostile" / name)
    main, argv = build(ckpt, tmp_path)
    result = cli(main, argv)
    assert not marker.exists(), "the pickle payload ran"
    assert result.code == 2, result.text
    assert str(ckpt) in result.text
    assert "refused" in result.text or "cannot read the checkpoint" in result.text
    assert leftovers(tmp_path / "out") == []


def _train_resume(tmp_path: Path, hostile_checkpoint) -> tuple:
    source = write_bids(tmp_path / "cohort")
    run_dir = tmp_path / "run"
    state, marker = hostile_checkpoint(run_dir / "checkpoints" / "state.pt")
    argv = ["--config", "tiny", "--set", f"data.source={source}", "--run-dir", run_dir, "--resume"]
    return train.main, argv, state, marker


def _bap_resume(tmp_path: Path, hostile_checkpoint) -> tuple:
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "run"
    last, marker = hostile_checkpoint(out / "last.pt")
    argv = ["--real", table, "--config", "demo", "--out", out, "--epochs", "1", "--resume", "--no-progress",
            "--set", "model.options.channels=[4, 8]", "--set", "train.num_threads=1"]  # fmt: skip
    return bap_train.main, argv, last, marker


RESUMERS = {"flowlet-train --resume": _train_resume, "bap-train --resume": _bap_resume}


@pytest.mark.parametrize("command", list(RESUMERS))
def test_pickle_payload_resume_state_never_runs(command, cli, tmp_path, hostile_checkpoint):
    main, argv, _state, marker = RESUMERS[command](tmp_path, hostile_checkpoint)
    result = cli(main, argv)
    assert not marker.exists(), "the pickle payload ran"
    assert result.code != 0


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            c, marks=[pytest.mark.xfail(strict=True, reason=RESUME_XFAIL[c])] if c in RESUME_XFAIL else []
        )
        for c in RESUMERS
    ],
)
def test_pickle_payload_resume_state_message(command, cli, tmp_path, hostile_checkpoint):
    main, argv, state, _marker = RESUMERS[command](tmp_path, hostile_checkpoint)
    result = cli(main, argv)
    assert result.code == 2, result.text
    assert str(state) in result.text


def test_library_loaders_refuse_pickle_payloads(tmp_path, hostile_checkpoint):
    from bap.checkpoint import load_checkpoint
    from flowlet.checkpoint import CheckpointError, load_bundle, read_checkpoint_payload

    ckpt, marker = hostile_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"x\.pt: refused to load.*nothing from it was run"):
        load_bundle(ckpt)
    with pytest.raises(CheckpointError, match=r"x\.pt: refused to load"):
        read_checkpoint_payload(ckpt)
    with pytest.raises(ValueError, match=r"x\.pt: cannot read the checkpoint"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def _pickled_npy(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)


def test_image_cache_of_bap_never_unpickles(tmp_path):
    from bap.data import _cache_name, load_arrays

    image = save_volume(tmp_path / "img.nii.gz", good_image(1), AFFINE)
    marker = tmp_path / "cache-payload-ran"
    _pickled_npy(tmp_path / "cache" / _cache_name(str(image)), marker)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_arrays([str(image)], cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_image_cache_of_training_never_unpickles(tmp_path):
    from flowlet.training.config import DataConfig
    from flowlet.training.data import _cache_key, preprocess_volume

    image = save_volume(tmp_path / "img.nii.gz", good_image(1), AFFINE)
    cfg = DataConfig(image_size=(8, 8, 8), save_size=(8, 8, 8), cache_dir=str(tmp_path / "cache"))
    marker = tmp_path / "cache-payload-ran"
    _pickled_npy(tmp_path / "cache" / f"{_cache_key(str(image), cfg)}.npy", marker)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        preprocess_volume(image, cfg)
    assert not marker.exists()


def test_npy_scan_with_a_pickle_is_refused_naming_the_file(cli, tmp_path, bap_checkpoint):
    root = tmp_path / "cohort"
    marker = tmp_path / "npy-payload-ran"
    _pickled_npy(root / "s00.npy", marker)
    save_volume(root / "s01.nii.gz", good_image(1), AFFINE)
    pd.DataFrame({"subject_id": ["a", "b"], "path": ["s00.npy", "s01.nii.gz"], "age": [30, 40]}).to_csv(
        root / "cohort.csv", index=False
    )
    out = tmp_path / "out"
    result = cli(bap_predict.main, ["--checkpoint", bap_checkpoint, "--cohort", root / "cohort.csv", "--out",
                                    out / "p.csv"])  # fmt: skip
    assert result.code == 2
    assert "s00.npy: cannot read the array" in result.text
    assert not marker.exists() and leftovers(out) == []


def test_phantom_config_yaml_python_tag_is_refused(tmp_path):
    import yaml

    from flowlet.data.phantom import PhantomConfig

    marker = tmp_path / "yaml-payload-ran"
    config = tmp_path / "phantom.yaml"
    config.write_text(f"voxel_size: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises((ValueError, yaml.YAMLError)):
        PhantomConfig.from_yaml(config)
    assert not marker.exists()


HOSTILE_NAMES = [
    "../escape",
    "../../etc/passwd",
    "/tmp/absolute",
    "a/../../b",
    "sub-01/../../..",
    "..",
    "./..",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_resolve_inside_refuses_every_escape(tmp_path, name):
    with pytest.raises(ValueError, match="would leave the output folder"):
        resolve_inside(tmp_path / "out", name)


def test_resolve_inside_keeps_odd_but_harmless_names_inside(tmp_path):
    for name in ["sub-ünï cödé", "a;rm -rf ~", "sub-01/./anat/x.nii.gz", "dir/../file", "-rf", "$(touch x)"]:
        resolved = resolve_inside(tmp_path, name)
        assert tmp_path.resolve() in resolved.parents


HOSTILE_IDS = [
    "../../escape-id",
    "/tmp/abs-escape-id",
    "a;rm -rf ~",
    "ünï cödé $(touch pwned)",
    "..",
    "sub-../x",
]


def _hostile_cohort(root: Path) -> Path:
    rows = []
    for i, sid in enumerate([*HOSTILE_IDS, "plain1", "plain2"]):
        image = save_volume(root / f"img{i}.nii.gz", good_image(i), AFFINE)
        rows.append({"subject_id": sid, "path": image.name, "age": 20 + 7 * i, "sex": "F", "site": "a"})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return root / "cohort.csv"


def _files_outside(tmp_path: Path, out: Path) -> set[str]:
    return {str(p) for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents}


@pytest.mark.parametrize("command", ["bap-predict", "flowlet-train", "flowlet-augment"])
def test_hostile_subject_ids_cannot_place_files_outside_the_output(
    command, cli, tmp_path, request, tiny_checkpoint
):
    table = _hostile_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    before = _files_outside(tmp_path, out)
    if command == "bap-predict":
        ckpt = request.getfixturevalue("bap_checkpoint")
        argv = ["--checkpoint", ckpt, "--cohort", table, "--out", out / "p.csv"]
        result = cli(bap_predict.main, argv)
    elif command == "flowlet-train":
        argv = [
            "--config",
            "tiny",
            "--set",
            f"data.source={table}",
            "--run-dir",
            out,
            "--set",
            "training.max_steps=1",
        ]
        result = cli(train.main, argv)
    else:
        argv = ["--real", table, "--checkpoint", tiny_checkpoint, "--out", out, "--steps", "1", "--bin-width", "20",
                "--max-synthetic", "2", "--no-progress"]  # fmt: skip
        result = cli(augment.main, argv)
    assert result.code == 0, result.text
    assert _files_outside(tmp_path, out) == before
    assert not list(Path("/tmp").glob("abs-escape-id*")) and not (tmp_path.parent / "escape-id").exists()
    assert leftovers(out), "the command wrote its results"
    if command == "bap-predict":  # the ids travel as values, unchanged
        assert set(pd.read_csv(out / "p.csv", dtype=str)["subject_id"]) >= {"../../escape-id", "a;rm -rf ~"}
    shutil.rmtree(out)
