"""Faults: SIGKILL at seeded random points, a full disk, and two processes on one output folder.

After a kill, every file under its final name is complete (it loads), and a rerun gives exactly the files of an
uninterrupted run. A full disk gives exit status 2 with a message naming the file, and the files of the previous
run stay byte for byte as they were. A second writer on a locked folder is refused and writes nothing.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import leftovers, snapshot, temp_files, write_bids

from flowlet.data.io import FolderLockedError, folder_lock, write_table_atomic
from flowlet.data.nifti import load_volume
from pipelines import augment, bap_predict, generate, phantoms

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _generate_argv(ckpt, out) -> list[str]:
    return ["--checkpoint_path", str(ckpt), "--output_dir", str(out), "--generation_conditions", "Age=30", "Age=70",
            "--num_synthetic", "6", "--num_flow_steps", "2", "--solver", "euler", "--batch_size", "1",
            "--seed", "3", "--device", "cpu", "--no-progress"]  # fmt: skip


def _augment_argv(real, ckpt, out) -> list[str]:
    return ["--real", str(real), "--checkpoint", str(ckpt), "--out", str(out), "--bin-width", "20", "--steps", "2", "--solver", "euler",
            "--batch-size", "1", "--synthetic-ratio", "1.5", "--seed", "4", "--device", "cpu", "--no-progress"]  # fmt: skip


def _phantom_argv(out) -> list[str]:
    return ["--n", "2", "--out", str(out), "--voxel-size", "4", "--seed", "5", "--no-progress"]


def _kill_when(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``cmd``; SIGKILL it as soon as ``ready()`` is true (the test fails if it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before the kill point; make it longer"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


def _final_files(folder: Path, pattern: str) -> list[Path]:
    """Files under their final name (a killed writer may leave hidden ``.name.XXXX.tmp`` files)."""
    return [p for p in folder.rglob(pattern) if not p.name.startswith(".")]


def _count(folder: Path, pattern: str) -> int:
    return len(_final_files(folder, pattern))


def _without_command(meta: bytes) -> dict:
    data = json.loads(meta)
    data.pop("command")
    return data


def _equal_runs(reference: dict[str, bytes], result: dict[str, bytes], volatile=()) -> None:
    assert sorted(result) == sorted(reference)
    for name, content in reference.items():
        if name in volatile:
            assert _without_command(result[name]) == _without_command(content)
        else:
            assert result[name] == content, name


# Kill points are drawn from a seeded generator: "random" places, the same on every run of the suite.
KILL_POINTS = [int(k) for k in np.random.default_rng(2024).integers(0, 5, size=2)]


@pytest.fixture(scope="module")
def generated_reference(tmp_path_factory, tiny_checkpoint) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("gen-ref") / "out"
    assert generate.main(_generate_argv(tiny_checkpoint, out)) == 0
    return snapshot(out)


def test_generate_killed_at_random_points_then_rerun_equals_an_uninterrupted_run(
    cli, tmp_path, tiny_checkpoint, generated_reference
):
    out = tmp_path / "out"
    argv = _generate_argv(tiny_checkpoint, out)
    cmd = [sys.executable, "-m", "pipelines.generate", *argv]
    for after in KILL_POINTS:

        def ready(after=after) -> bool:
            return _count(out, "FlowLet_synthetic_brain_*.nii.gz") >= after and (out / ".lock").exists()

        def second_writer_then_ready(after=after) -> bool:
            if not ready(after):
                return False
            # A second writer while the first one runs is refused (the CLI's message: see the test below).
            with pytest.raises(FolderLockedError, match="another process"), folder_lock(out):
                pass
            return True

        _kill_when(cmd, second_writer_then_ready)
        for path in _final_files(out, "*.nii.gz"):
            load_volume(path)  # whatever carries a final name is complete
        assert not (out / "generation.json").exists()
    assert cli(generate.main, argv).code == 0  # the killed run left no stale lock behind
    _equal_runs(generated_reference, snapshot(out), volatile=("generation.json",))
    assert temp_files(out) == []


def test_augment_killed_before_any_volume_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert augment.main(_augment_argv(real, tiny_checkpoint, reference)) == 0
    cmd = [sys.executable, "-m", "pipelines.augment", *_augment_argv(real, tiny_checkpoint, out)]
    _kill_when(cmd, lambda: (out / "plan.tsv").exists())
    for path in _final_files(out, "*.nii.gz"):
        load_volume(path)
    assert augment.main(_augment_argv(real, tiny_checkpoint, out)) == 0
    _equal_runs(snapshot(reference), snapshot(out))


def test_phantoms_killed_then_rerun_equals_an_uninterrupted_run(tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert phantoms.main(_phantom_argv(reference)) == 0
    cmd = [sys.executable, "-m", "pipelines.phantoms", *_phantom_argv(out)]
    _kill_when(cmd, lambda: (out / "sub-0001" / "anat" / "sub-0001_T1w.nii.gz").exists())
    assert not (out / "participants.tsv").exists()
    for path in _final_files(out, "*.nii.gz"):
        load_volume(path)
    assert phantoms.main([*_phantom_argv(out), "--overwrite"]) == 0
    _equal_runs(snapshot(reference), snapshot(out))
    assert temp_files(out) == []


STUDY_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flowlet.data.io import write_text_atomic
    from pipelines.study.runner import Stage, run_stages

    def cohort(ctx):
        for i in range(3):
            write_text_atomic(ctx.stage_dir / f"subject{i}.txt", f"subject {i} age {20 + 10 * i}\\n")
        return {"n": 3}

    def augment(ctx):
        for i in range(6):
            time.sleep(float(sys.argv[2]))
            write_text_atomic(ctx.stage_dir / f"synthetic{i}.txt", f"synthetic {i} seed {ctx.config['seed'] + i}\\n")
        return {"n": 6}

    def report(ctx):
        text = "".join(sorted(p.read_text() for p in ctx.study_dir.rglob("*.txt") if p.parent != ctx.stage_dir))
        write_text_atomic(ctx.stage_dir / "report.txt", text)
        return {"lines": text.count("\\n")}

    stages = [Stage("cohort", cohort, config_sections=("cohort",)),
              Stage("augment", augment, depends=("cohort",), config_sections=("augment",)),
              Stage("report", report, depends=("augment",), config_sections=("report",))]
    run_stages(Path(sys.argv[1]), stages, {"cohort": {}, "augment": {"seed": 7}, "report": {}})
    """
)


def _study_snapshot(folder: Path) -> dict[str, bytes]:
    """Files of a study, with the timing field of each ``stage.json`` dropped (it is the only volatile value)."""
    files = snapshot(folder)
    for name in [n for n in files if n.endswith("stage.json")]:
        record = json.loads(files[name])
        record.pop("seconds", None)
        files[name] = json.dumps(record, sort_keys=True).encode()
    return files


def _run_script(script: Path, out: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", [str(script), str(out), "0"])
        runpy.run_path(str(script), run_name="__main__")


def test_study_killed_mid_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    script = tmp_path / "study.py"
    script.write_text(STUDY_SCRIPT)
    reference, out = tmp_path / "reference", tmp_path / "out"
    _run_script(script, reference, monkeypatch)
    _kill_when(
        [sys.executable, str(script), str(out), "0.1"], lambda: (out / "augment" / "synthetic1.txt").exists()
    )
    assert not (out / "augment" / "stage.json").exists()  # an unfinished stage has no record, so it reruns
    _run_script(script, out, monkeypatch)
    assert _study_snapshot(out) == _study_snapshot(reference)
    assert temp_files(out) == []


# ------------------------------------------------------------------------------------------------ full disk
def test_full_disk_during_generate_keeps_the_previous_files(cli, tmp_path, tiny_checkpoint, full_disk):
    out = tmp_path / "out"
    argv = ["--checkpoint_path", tiny_checkpoint, "--output_dir", out, "--generation_conditions", "Age=40",
            "--num_synthetic", "3", "--num_flow_steps", "1", "--seed", "1", "--no-progress"]  # fmt: skip
    assert cli(generate.main, argv).code == 0
    before = snapshot(out)
    full_disk(after=1)
    result = cli(generate.main, [*argv, "--seed", "2"])  # a different seed: new bytes for every file
    assert result.code == 2
    assert "FlowLet_synthetic_brain_1.nii.gz: No space left on device" in result.text
    after = snapshot(out)
    changed = [name for name in before if after[name] != before[name]]
    assert changed == ["Age_40.00/FlowLet_synthetic_brain_0.nii.gz"]  # the one write that succeeded
    assert after.keys() == before.keys() and temp_files(out) == []


def test_full_disk_during_phantoms_keeps_the_previous_files(cli, tmp_path, full_disk):
    out = tmp_path / "out"
    argv = ["--n", "2", "--out", out, "--voxel-size", "4", "--seed", "0", "--no-progress"]
    assert cli(phantoms.main, argv).code == 0
    before = snapshot(out)
    full_disk(after=0)
    result = cli(phantoms.main, [*argv[:-3], "--seed", "9", "--overwrite", "--no-progress"])
    assert result.code == 2
    assert "sub-0001_T1w.nii.gz: No space left on device" in result.text
    assert snapshot(out) == before and temp_files(out) == []


def test_full_disk_during_augment_keeps_the_previous_files(cli, tmp_path, tiny_checkpoint, full_disk):
    real = write_bids(tmp_path / "real")
    out = tmp_path / "out"
    argv = ["--real", real, "--checkpoint", tiny_checkpoint, "--out", out, "--steps", "1", "--bin-width", "20",
            "--max-synthetic", "3", "--no-progress"]  # fmt: skip
    assert cli(augment.main, argv).code == 0
    before = snapshot(out)
    full_disk(after=0)
    result = cli(augment.main, [*argv, "--seed", "5", "--overwrite"])  # other settings: replace the brains
    assert result.code == 2
    assert "dataset_description.json: No space left on device" in result.text
    assert snapshot(out) == before and temp_files(out) == []


def test_full_disk_during_bap_predict_keeps_the_previous_file(cli, tmp_path, bap_checkpoint, full_disk):
    real = write_bids(tmp_path / "real")
    out = tmp_path / "p.csv"
    argv = ["--checkpoint", bap_checkpoint, "--cohort", real, "--out", out]
    assert cli(bap_predict.main, argv).code == 0
    before = out.read_bytes()
    full_disk(after=0)
    result = cli(bap_predict.main, [*argv, "--overwrite"])  # an existing file is replaced only when asked
    assert out.read_bytes() == before and temp_files(tmp_path) == []
    assert result.code == 2
    assert "p.csv: No space left on device" in result.text


def test_full_disk_in_the_library_names_the_file_and_keeps_it(tmp_path, full_disk):
    import pandas as pd

    table = tmp_path / "t.tsv"
    write_table_atomic(table, pd.DataFrame({"a": [1, 2]}))
    before = table.read_bytes()
    full_disk(after=0)
    with pytest.raises(OSError, match=r"cannot write .*t\.tsv: No space left on device") as info:
        write_table_atomic(table, pd.DataFrame({"a": [3]}))
    assert info.value.errno == 28
    assert table.read_bytes() == before and temp_files(tmp_path) == []


# ------------------------------------------------------------------------------------------------ concurrency
@pytest.mark.parametrize("command", ["flowlet-phantoms", "flowlet-generate", "flowlet-augment"])
def test_a_second_writer_on_a_locked_folder_is_refused(command, cli, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    if command == "flowlet-phantoms":
        main, argv, lock = (
            phantoms.main,
            ["--n", "1", "--out", out, "--voxel-size", "4", "--no-progress"],
            ".lock",
        )
    elif command == "flowlet-generate":
        main, lock = generate.main, ".lock"
        argv = ["--checkpoint_path", tiny_checkpoint, "--output_dir", out, "--generation_conditions", "Age=40",
                "--num_synthetic", "1", "--num_flow_steps", "1", "--no-progress"]  # fmt: skip
    else:
        main, lock = augment.main, ".lock-shard-0-of-1"
        argv = ["--real", write_bids(tmp_path / "real"), "--checkpoint", tiny_checkpoint, "--out", out, "--steps",
                "1", "--bin-width", "20", "--max-synthetic", "2", "--no-progress"]  # fmt: skip
    with folder_lock(out, name=lock):  # the first writer, still running
        result = cli(main, argv)
    assert result.code == 2, result.text
    assert str(out) in result.text and "another process" in result.text
    assert leftovers(out) == []


def test_stale_temporaries_are_recognised_exactly(tmp_path):
    from flowlet.data.io import atomic_path, remove_stale_temporaries

    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / ".x.nii.gz.ab12cd_9.tmp.nii.gz"  # what a killed atomic_path leaves
    stale.write_bytes(b"half")
    others = [tmp_path / ".notes.tmp", tmp_path / ".x.swp", tmp_path / "x.nii.gz", tmp_path / ".lock"]
    for path in others:
        path.write_text("keep")
    with atomic_path(tmp_path / "done.tsv") as tmp:  # a real temporary name matches the same pattern
        tmp.write_text("a\n")
        twin = tmp.with_name(tmp.name.replace(".done.tsv.", ".other.tsv."))
        twin.write_text("half")
    assert remove_stale_temporaries(tmp_path) == sorted([stale, twin])
    assert all(p.read_text() == "keep" for p in others) and (tmp_path / "done.tsv").read_text() == "a\n"
