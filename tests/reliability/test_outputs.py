"""The output-folder contract (``flowlet.data.outputs``) and clean exits (``pipelines.cli.run_cli``).

Every command writes only into its own output folder: an output that is, contains or lies inside an input is
refused; a non-empty folder the command did not create is refused unless ``--overwrite``, which never deletes a file
the command's manifest does not list; a refused run leaves nothing behind; a second writer is refused by the lock.
Ctrl-C and a full disk end with one line and an exit status (130, 2), no traceback, and a rerun continues.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliability_helpers import leftovers, snapshot, temp_files, write_bids, write_table_cohort

from flowlet.data.io import folder_lock
from pipelines import augment, bap_predict, bap_train, generate, phantoms, train
from pipelines.eval import cli as evaluate

MANIFEST = ".flowlet-manifest.json"


def _augment_argv(real, ckpt, out, *extra) -> list:
    return ["--real", real, "--checkpoint", ckpt, "--out", out, "--steps", "1", "--solver", "euler",
            "--bin-width", "20", "--synthetic-ratio", "1.5", "--max-synthetic", "4", "--batch-size", "1",
            "--no-progress", *extra]  # fmt: skip


def _generate_argv(ckpt, out, *extra) -> list:
    return ["--checkpoint_path", ckpt, "--output_dir", out, "--generation_conditions", "Age=40",
            "--num_synthetic", "2", "--num_flow_steps", "1", "--batch_size", "1", "--no-progress", *extra]  # fmt: skip


def _bap_train_argv(real, out, *extra) -> list:
    return ["--real", real, "--config", "demo", "--out", out, "--epochs", "3", "--set", "train.patience=0",
            "--set", "model.options.channels=[4, 8]", "--set", "eval.n_boot=10", "--set", "train.num_threads=1",
            "--no-progress", *extra]  # fmt: skip


def _train_argv(table, out, *extra) -> list:
    return ["--config", "tiny", "--set", f"data.source={table}", "--run-dir", out,
            "--set", "training.max_steps=1", *extra]  # fmt: skip


def _eval_argv(cohort, out, *extra) -> list:
    return ["regions", "--cohort", cohort, "--out", out, "--registration", "none", "--no-progress", *extra]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupted(cli, main, argv):
    """Run a command whose loop raises KeyboardInterrupt; a Ctrl-C that escapes the command fails the test."""
    try:
        return cli(main, argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a KeyboardInterrupt traceback")


def _raise_on_call(n: int, real, exc: BaseException):
    """A stand-in for ``real`` that raises ``exc`` on its ``n``-th call (1-based) and works otherwise."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------- the data losses
def test_augment_into_its_own_real_cohort_is_refused_and_the_cohort_is_untouched(
    cli, tmp_path, tiny_checkpoint
):
    real = write_bids(tmp_path / "real")  # a cohort folder without dataset_description.json
    before = _files(real)
    result = cli(augment.main, _augment_argv(real, tiny_checkpoint, real))
    assert result.code == 2, result.text
    assert "is the input" in result.text and str(real) in result.text
    assert _files(real) == before


def test_augment_into_a_folder_inside_the_real_cohort_is_refused(cli, tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    before = _files(real)
    result = cli(augment.main, _augment_argv(real, tiny_checkpoint, real / "derivatives" / "synth"))
    assert result.code == 2, result.text
    assert "lies inside the input" in result.text
    assert _files(real) == before and not (real / "derivatives").exists()


def test_augment_refuses_a_folder_with_foreign_files_and_leaves_them(cli, tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "plan.tsv").write_text("my own plan\n")
    (out / "notes.txt").write_text("keep me\n")
    before = _files(out)
    result = cli(augment.main, _augment_argv(real, tiny_checkpoint, out))
    assert result.code == 2, result.text
    assert "is not empty" in result.text and "--overwrite" in result.text and "plan.tsv" in result.text
    assert _files(out) == before


def test_bap_predict_refuses_to_write_over_the_cohort_table(cli, tmp_path, bap_checkpoint):
    real = write_bids(tmp_path / "real")
    before = _files(real)
    for out in (real / "participants.tsv", real / "predictions.csv"):
        result = cli(bap_predict.main, ["--checkpoint", bap_checkpoint, "--cohort", real, "--out", out])
        assert result.code == 2, result.text
        assert "the input" in result.text and str(real) in result.text
    assert _files(real) == before


def test_an_output_reached_through_a_symbolic_link_is_still_refused(cli, tmp_path, bap_checkpoint):
    real = write_bids(tmp_path / "real")
    link = tmp_path / "results"
    link.symlink_to(real, target_is_directory=True)
    before = _files(real)
    result = cli(
        bap_predict.main,
        ["--checkpoint", bap_checkpoint, "--cohort", real, "--out", link / "participants.tsv"],
    )
    assert result.code == 2, result.text
    assert "lies inside the input" in result.text
    assert _files(real) == before


def test_bap_predict_replaces_an_existing_file_only_with_overwrite(cli, tmp_path, bap_checkpoint):
    real = write_bids(tmp_path / "real")
    out = tmp_path / "results.csv"
    out.write_text("a file of the user\n")
    argv = ["--checkpoint", bap_checkpoint, "--cohort", real, "--out", out]
    result = cli(bap_predict.main, argv)
    assert result.code == 2, result.text
    assert "already exists" in result.text and "--overwrite" in result.text
    assert out.read_text() == "a file of the user\n"
    assert cli(bap_predict.main, [*argv, "--overwrite"]).code == 0
    assert out.read_text().startswith("subject_id")


@pytest.fixture(scope="module")
def finished_bap_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished 3-epoch ``bap-train`` run and its cohort table."""
    root = tmp_path_factory.mktemp("bap-run")
    table = write_table_cohort(root / "cohort")
    out = root / "run"
    assert bap_train.main([str(a) for a in _bap_train_argv(table, out)]) == 0
    return table, out


def test_augment_shards_share_one_folder_and_one_manifest(cli, tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert cli(augment.main, _augment_argv(real, tiny_checkpoint, out, "--shard", shard)).code == 0
    listed = json.loads((out / MANIFEST).read_text())
    assert listed["command"] == "flowlet-augment"
    assert sorted(listed["files"]) == sorted(snapshot(out))
    assert len(list(out.rglob("sub-syn*_T1w.nii.gz"))) == 4


def test_bap_train_refuses_a_finished_run_without_resume_or_overwrite(cli, finished_bap_run, tmp_path):
    table, run = finished_bap_run
    before = _files(run)
    result = cli(bap_train.main, _bap_train_argv(table, run, "--seed", "7"))
    assert result.code == 2, result.text
    assert "--resume" in result.text and "--overwrite" in result.text
    assert _files(run) == before


def test_bap_train_overwrite_replaces_only_its_own_files(cli, finished_bap_run, tmp_path):
    import shutil

    table, finished = finished_bap_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("the user's notes\n")
    (run / "epoch-0099.pt").write_bytes(b"not listed in the manifest")
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["files"].append("epoch-0042.pt")  # a file of the earlier run that this run does not write again
    (run / MANIFEST).write_text(json.dumps(manifest))
    (run / "epoch-0042.pt").write_bytes(b"old")
    result = cli(bap_train.main, _bap_train_argv(table, run, "--seed", "7", "--overwrite"))
    assert result.code == 0, result.text
    assert (run / "notes.txt").read_text() == "the user's notes\n"
    assert (run / "epoch-0099.pt").read_bytes() == b"not listed in the manifest"
    assert not (run / "epoch-0042.pt").exists()
    assert (run / "summary.json").is_file() and (run / "best.pt").read_bytes() != (
        finished / "best.pt"
    ).read_bytes()


def test_bap_train_into_a_folder_inside_its_input_is_refused(cli, tmp_path):
    real = write_bids(tmp_path / "real")
    result = cli(bap_train.main, _bap_train_argv(real, real / "runs" / "a"))
    assert result.code == 2, result.text
    assert "lies inside the input" in result.text
    assert not (real / "runs").exists()


def test_generate_refuses_a_folder_it_did_not_create_and_reruns_its_own(cli, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("keep\n")
    result = cli(generate.main, _generate_argv(tiny_checkpoint, out))
    assert result.code == 2, result.text
    assert "is not empty" in result.text and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert cli(generate.main, _generate_argv(tiny_checkpoint, out, "--overwrite")).code == 0
    assert (out / "thesis.tex").read_text() == "keep\n"
    fresh = tmp_path / "fresh"
    assert cli(generate.main, _generate_argv(tiny_checkpoint, fresh)).code == 0
    assert cli(generate.main, _generate_argv(tiny_checkpoint, fresh)).code == 0  # its own folder: a rerun
    listed = json.loads((fresh / MANIFEST).read_text())
    assert listed["command"] == "flowlet-generate"
    assert sorted(listed["files"]) == sorted(snapshot(fresh))


def test_phantoms_overwrite_deletes_only_the_files_its_manifest_lists(cli, tmp_path):
    out = tmp_path / "out"
    argv = ["--out", out, "--voxel-size", "4", "--no-progress"]
    assert cli(phantoms.main, ["--n", "3", *argv]).code == 0
    (out / "notes.txt").write_text("keep\n")
    assert cli(phantoms.main, ["--n", "2", *argv, "--overwrite"]).code == 0
    assert (out / "notes.txt").read_text() == "keep\n"
    assert not list(out.rglob("sub-0003*")), "the third subject of the earlier cohort is stale"
    assert len(list(out.rglob("*_T1w.nii.gz"))) == 2


def test_eval_into_a_folder_inside_its_input_is_refused(cli, tmp_path):
    real = write_bids(tmp_path / "real")
    result = cli(evaluate.main, _eval_argv(real, real / "eval"))
    assert result.code == 2, result.text
    assert "lies inside the input" in result.text and not (real / "eval").exists()


def test_study_refuses_a_folder_it_did_not_create(cli, tmp_path):
    from pipelines.study import cli as study_cli

    out = tmp_path / "study"
    out.mkdir()
    (out / "data.csv").write_text("keep\n")
    result = cli(study_cli.main, ["--config", "demo", "--out", out, "--until", "cohort"])
    assert result.code == 2, result.text
    assert "is not empty" in result.text
    assert _files(out) == {"data.csv": b"keep\n"}


# ---------------------------------------------------------------------------------- a refused run leaves nothing
@pytest.mark.parametrize("command", ["flowlet-eval", "flowlet-train"])
def test_a_refused_run_leaves_no_folder_behind(command, cli, tmp_path):
    table = write_table_cohort(tmp_path / "cohort", bad="nan_voxel")
    out = tmp_path / "out"
    main, argv = (evaluate.main, _eval_argv(table, out)) if command == "flowlet-eval" else (
        train.main, _train_argv(table, out))  # fmt: skip
    result = cli(main, argv)
    assert result.code == 2, result.text
    assert "s00_bad_T1w.nii.gz" in result.text and "Traceback" not in result.text
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


def test_a_refused_run_keeps_the_users_empty_folder(cli, tmp_path):
    table = write_table_cohort(tmp_path / "cohort", bad="nan_voxel")
    out = tmp_path / "out"
    out.mkdir()
    assert cli(evaluate.main, _eval_argv(table, out)).code == 2
    assert out.is_dir() and leftovers(out) == [] and not (out / MANIFEST).exists()


# -------------------------------------------------------------------------------------------- one writer each
@pytest.mark.parametrize("command", ["bap-train", "flowlet-train", "flowlet-eval"])
def test_a_second_writer_is_refused_by_the_lock(command, cli, tmp_path):
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    main, argv = {
        "bap-train": (bap_train.main, _bap_train_argv(table, out)),
        "flowlet-train": (train.main, _train_argv(table, out)),
        "flowlet-eval": (evaluate.main, _eval_argv(table, out)),
    }[command]
    with folder_lock(out):  # the first writer, still running
        result = cli(main, argv)
    assert result.code == 2, result.text
    assert "another process" in result.text and str(out) in result.text
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------- Ctrl-C, full disk
def test_ctrl_c_in_bap_train_exits_130_and_resume_finishes_the_run(
    cli, tmp_path, monkeypatch, finished_bap_run
):
    import bap.train as bap_train_module

    table, reference = finished_bap_run
    out = tmp_path / "run"
    real_save = bap_train_module.save_checkpoint
    # saves per epoch: best.pt (when improved) and last.pt; the 4th save falls in the second epoch
    monkeypatch.setattr(
        bap_train_module, "save_checkpoint", _raise_on_call(4, real_save, KeyboardInterrupt())
    )
    result = _interrupted(cli, bap_train.main, _bap_train_argv(table, out))
    monkeypatch.setattr(bap_train_module, "save_checkpoint", real_save)
    assert result.code == 130, result.text
    assert "interrupted" in result.text and "--resume" in result.text and "Traceback" not in result.text
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 1 and temp_files(out) == []
    again = cli(bap_train.main, _bap_train_argv(table, out))
    assert again.code == 2 and "--resume" in again.text  # not silently started again
    assert cli(bap_train.main, _bap_train_argv(table, out, "--resume")).code == 0
    done = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert done["epochs_run"] == expected["epochs_run"] == 3
    assert done["best_val_mae"] == pytest.approx(expected["best_val_mae"], rel=1e-5)


def test_full_disk_in_bap_train_names_the_file_and_keeps_the_previous_run(
    cli, tmp_path, full_disk, finished_bap_run
):
    import shutil

    table, finished = finished_bap_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    full_disk(after=0)
    result = cli(bap_train.main, _bap_train_argv(table, run, "--resume"))  # its first write: config.yaml
    assert result.code == 2, result.text
    assert "config.yaml: No space left on device" in result.text and "cannot write" in result.text
    assert "Traceback" not in result.text
    assert snapshot(run) == before and temp_files(run) == []


def test_ctrl_c_in_augment_exits_130_and_the_rerun_completes(cli, tmp_path, tiny_checkpoint, monkeypatch):
    import flowlet.export

    real = write_bids(tmp_path / "real")
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert cli(augment.main, _augment_argv(real, tiny_checkpoint, reference)).code == 0
    real_write = flowlet.export.write_volumes
    monkeypatch.setattr(flowlet.export, "write_volumes", _raise_on_call(2, real_write, KeyboardInterrupt()))
    result = _interrupted(cli, augment.main, _augment_argv(real, tiny_checkpoint, out))
    monkeypatch.setattr(flowlet.export, "write_volumes", real_write)
    assert result.code == 130, result.text
    assert "interrupted" in result.text and "Traceback" not in result.text
    assert len(list(out.rglob("sub-syn*_T1w.nii.gz"))) == 1 and temp_files(out) == []
    assert cli(augment.main, _augment_argv(real, tiny_checkpoint, out)).code == 0
    assert snapshot(out) == snapshot(reference)


def test_ctrl_c_in_flowlet_train_exits_130_and_resume_finishes(cli, tmp_path, monkeypatch):
    from flowlet.training.trainer import Trainer

    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "run"
    argv = [*_train_argv(table, out), "--set", "training.max_steps=3"]
    monkeypatch.setattr(Trainer, "train_step", _raise_on_call(2, Trainer.train_step, KeyboardInterrupt()))
    result = _interrupted(cli, train.main, argv)
    monkeypatch.undo()
    assert result.code == 130, result.text
    assert "interrupted" in result.text and "--resume" in result.text and "Traceback" not in result.text
    assert (out / "checkpoints" / "state.pt").is_file() and temp_files(out) == []
    assert cli(train.main, [*argv, "--resume"]).code == 0
    assert (out / "checkpoints" / "latest.pt").is_file()


@pytest.mark.parametrize("command", ["flowlet-generate", "flowlet-phantoms", "flowlet-eval"])
def test_ctrl_c_exits_130_without_a_traceback(command, cli, tmp_path, tiny_checkpoint, monkeypatch):
    import flowlet.data.io as io_module

    out = tmp_path / "out"
    if command == "flowlet-generate":
        main, argv = generate.main, _generate_argv(tiny_checkpoint, out)
    elif command == "flowlet-phantoms":
        main, argv = phantoms.main, ["--n", "2", "--out", out, "--voxel-size", "4", "--no-progress"]
    else:
        main, argv = evaluate.main, _eval_argv(write_table_cohort(tmp_path / "cohort"), out)
    monkeypatch.setattr(io_module, "_fsync", _raise_on_call(2, io_module._fsync, KeyboardInterrupt()))
    result = _interrupted(cli, main, argv)
    assert result.code == 130, result.text
    assert "interrupted" in result.text and "Traceback" not in result.text
    assert temp_files(out) == []


def test_ctrl_c_in_a_study_exits_130_and_the_rerun_redoes_only_the_unfinished_stage(
    cli, tmp_path, monkeypatch
):
    import yaml

    import flowlet.data.cohort
    from configs import config_path
    from pipelines.study import cli as study_cli

    raw = yaml.safe_load(config_path("study", "demo").read_text())
    raw["cohort"] = {"path": str(write_bids(tmp_path / "real"))}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "study"
    argv = ["--config", config, "--out", out, "--until", "cohort"]
    real = flowlet.data.cohort.load_cohort
    monkeypatch.setattr(flowlet.data.cohort, "load_cohort", _raise_on_call(1, real, KeyboardInterrupt()))
    result = _interrupted(cli, study_cli.main, argv)
    monkeypatch.undo()
    assert result.code == 130, result.text
    assert "interrupted" in result.text and "Traceback" not in result.text
    assert not (out / "cohort" / "stage.json").exists()
    assert cli(study_cli.main, argv).code == 0
    assert (out / "cohort" / "stage.json").is_file()


@pytest.mark.parametrize("command", ["flowlet-train", "flowlet-eval"])
def test_full_disk_exits_2_names_the_file_and_leaves_no_folder(command, cli, tmp_path, full_disk):
    table = write_table_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    main, argv = (evaluate.main, _eval_argv(table, out, "--limit", "2")) if command == "flowlet-eval" else (
        train.main, _train_argv(table, out))  # fmt: skip
    full_disk(after=0)
    result = cli(main, argv)
    assert result.code == 2, result.text
    assert "No space left on device" in result.text and "cannot write" in result.text
    assert "Traceback" not in result.text
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
