"""The training loop on the tiny config: learning, exact resume, fixed validation, DDP equivalence, files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from flowlet.checkpoint import load_bundle
from flowlet.training.data import StepBatchSampler
from flowlet.training.state import load_train_state
from flowlet.training.steps import cosine_schedule
from flowlet.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _batch(trainer: Trainer, step: int) -> dict:
    sampler = StepBatchSampler(
        len(trainer.train_set),
        trainer.config.training.batch_size,
        seed=trainer.config.training.seed,
        start_step=step,
        total_steps=step + 1,
    )
    items = [trainer.train_set[key] for key in next(iter(sampler))]
    return {
        "image": torch.stack([i["image"] for i in items]),
        "conditions": {"Age": torch.stack([i["conditions"]["Age"] for i in items])},
    }


def test_loss_decreases_on_a_fixed_batch(tiny_config):
    trainer = Trainer(tiny_config("training.ema_decay=0.0", "training.lr=3e-3", "training.min_lr=3e-3"))
    batch = _batch(trainer, 0)
    losses = [trainer.train_step(batch, step=0)["loss"] for _ in range(16)]  # step 0: same noise and times
    assert losses[-1] < 0.65 * losses[0]
    assert losses[1] < losses[0] and losses[2] < losses[1]


def test_resume_reproduces_the_uninterrupted_run(tiny_config):
    straight = Trainer(tiny_config(run="straight"))
    straight.fit()
    first = Trainer(tiny_config(run="resumed"))
    first.fit(stop_after=3)
    assert load_train_state(first.ckpt_dir / "state.pt")["step"] == 3
    second = Trainer(tiny_config(run="resumed"))
    result = second.fit(resume=True)
    assert result.step == straight.step == 8
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    for name, value in straight.ema.module.state_dict().items():
        assert torch.equal(value, second.ema.module.state_dict()[name]), name
    a = pd.read_csv(straight.run_dir / "metrics.csv")
    b = pd.read_csv(second.run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(
        a.drop(columns=["it_per_s", "peak_memory_mb"]), b.drop(columns=["it_per_s", "peak_memory_mb"])
    )


def test_validation_loss_is_deterministic(tiny_config):
    trainer = Trainer(tiny_config())
    first, second = trainer.validate(), trainer.validate()
    assert first == second
    trainer.fit(stop_after=2)
    assert trainer.validate() == trainer.validate() != first


def test_run_folder_and_bundle(tiny_config):
    trainer = Trainer(tiny_config())
    result = trainer.fit()
    run = result.run_dir
    for name in (
        "config.yaml",
        "condition_ranges.json",
        "split.tsv",
        "metrics.csv",
        "checkpoints/best.pt",
        "checkpoints/latest.pt",
        "checkpoints/state.pt",
    ):
        assert (run / name).is_file(), name
    split = pd.read_csv(run / "split.tsv", sep="\t", dtype={"subject_id": str})
    assert not set(split.loc[split.split == "train", "subject_id"]) & set(
        split.loc[split.split == "val", "subject_id"]
    )
    bundle = load_bundle(run / "checkpoints" / "latest.pt")
    assert bundle.condition_ranges["Age"] == pytest.approx((20.0, 80.0))
    assert bundle.model_input_size == (8, 8, 8)
    for name, value in trainer.ema.module.state_dict().items():  # sampling uses the EMA weights
        assert torch.equal(bundle.model.state_dict()[name], value)
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.step) == [2, 4, 6, 8] and metrics.val_loss.notna().sum() == 2


def test_condition_dropout_and_switches_train(tiny_config):
    trainer = Trainer(
        tiny_config(
            "flow.condition_dropout=0.5",
            "flow.time_sampler=logit_normal",
            "model.time_scale=1000.0",
            "model.skip_kernel_size=1",
            "model.num_context_tokens=2",
            "training.max_steps=2",
        )
    )
    out = trainer.fit()
    assert out.step == 2 and torch.isfinite(torch.tensor(out.last_val_loss))


def test_cosine_schedule_endpoints():
    assert cosine_schedule(0, total=10, warmup=0, lr=1.0, min_lr=0.1) == pytest.approx(1.0)
    assert cosine_schedule(10, total=10, warmup=0, lr=1.0, min_lr=0.1) == pytest.approx(0.1)
    assert cosine_schedule(1, total=10, warmup=4, lr=1.0, min_lr=0.1) == pytest.approx(0.5)


def test_sampler_shards_cover_the_global_batch():
    full = StepBatchSampler(10, 4, seed=3, start_step=0, total_steps=5)
    shards = [
        list(StepBatchSampler(10, 4, seed=3, start_step=0, total_steps=5, rank=r, world_size=2))
        for r in range(2)
    ]
    for step, batch in enumerate(full):
        assert shards[0][step] + shards[1][step] == batch
    assert list(StepBatchSampler(10, 4, seed=3, start_step=2, total_steps=5)) == list(full)[2:]


def _cli(args: list[str], *, nproc: int | None = None, env_extra: dict | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    head = [sys.executable]
    if nproc:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*head, "-m", "pipelines.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two interpreter start-ups per launch; about 20 s on an idle 2-core machine
def test_two_process_gloo_matches_one_process(tiny_cohort, tmp_path):
    common = ["--config", "tiny", "--data", tiny_cohort, "--set", "training.max_steps=4"]
    _cli([*common, "--run-dir", str(tmp_path / "one")])
    _cli([*common, "--run-dir", str(tmp_path / "two")], nproc=2)
    one = load_train_state(tmp_path / "one" / "checkpoints" / "state.pt")
    two = load_train_state(tmp_path / "two" / "checkpoints" / "state.pt")
    # Two processes sum their gradients in another order than one, so the float32 gradients differ by rounding; Adam
    # divides each gradient by its own running magnitude, which turns that rounding into steps of up to ~1e-6 in the
    # zero-initialised output convolutions (1.1e-6 measured). A wrong all-reduce (a sum, or other batches) moves the
    # weights by about lr = 1e-3 per step, far above this tolerance.
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=5e-6, msg=name)
    assert two["best_val_loss"] == pytest.approx(one["best_val_loss"], rel=1e-5)


def test_cli_errors_name_the_key(tmp_path, capsys):
    from pipelines.train import main

    assert main(["--config", "tiny", "--set", "training.bogus=1"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "flowlet-train --config demo" in capsys.readouterr().out


def test_cli_trains_and_resumes(tiny_cohort, tmp_path):
    from pipelines.train import main

    args = [
        "--config",
        "tiny",
        "--data",
        tiny_cohort,
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "training.max_steps=4",
    ]
    assert main([*args, "--stop-after", "2"]) == 0
    assert load_train_state(tmp_path / "run" / "checkpoints" / "state.pt")["step"] == 2
    assert main([*args, "--resume"]) == 0
    assert load_train_state(tmp_path / "run" / "checkpoints" / "state.pt")["step"] == 4


def test_demo_pipeline_help(capsys):
    from pipelines.make_demo_checkpoint import ABLATIONS, main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--ablate" in capsys.readouterr().out
    from configs import config_path
    from flowlet.training.config import load_train_config

    for overrides in ABLATIONS.values():  # every ablation variant is a valid config
        load_train_config(config_path("flowlet", "demo"), overrides)


def test_failed_start_leaves_no_run_files_but_keeps_an_earlier_runs(tiny_config, monkeypatch):
    """A run that fails before its first checkpoint removes the files it created, and only those."""

    def broken(self, batch, step):
        raise RuntimeError("unreadable batch")

    fresh = Trainer(tiny_config(run="fresh"))
    monkeypatch.setattr(Trainer, "train_step", broken)
    with pytest.raises(RuntimeError, match="unreadable batch"):
        fresh.fit()
    assert sorted(p.name for p in fresh.run_dir.rglob("*") if p.is_file()) == []

    monkeypatch.undo()
    earlier = Trainer(tiny_config(run="earlier"))
    earlier.fit(stop_after=2)
    before = sorted(p.name for p in earlier.run_dir.rglob("*") if p.is_file())
    again = Trainer(tiny_config(run="earlier"))
    monkeypatch.setattr(Trainer, "train_step", broken)
    with pytest.raises(RuntimeError):
        again.fit(resume=True)
    assert sorted(p.name for p in again.run_dir.rglob("*") if p.is_file()) == before


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_run_that_raises_before_its_first_checkpoint_leaves_the_folder_as_it_was(tiny_config, monkeypatch):
    """The rule of :mod:`flowlet.data.outputs`: a failed run leaves nothing behind. A new run folder is removed
    again; a folder holding an earlier run keeps that run's files byte for byte (config, split, metrics and
    checkpoints), even when the failed run had already written its own config and a metrics row."""
    real_step = Trainer.train_step
    calls = {"n": 0}

    def fails_at_the_third_step(self, batch, step):
        calls["n"] += 1
        if calls["n"] == 3:  # after the metrics row of step 2, before the checkpoint of step 4
            raise RuntimeError("unreadable batch")
        return real_step(self, batch, step)

    new = Trainer(tiny_config(run="new"))
    monkeypatch.setattr(Trainer, "train_step", fails_at_the_third_step)
    with pytest.raises(RuntimeError, match="unreadable batch"):
        new.fit()
    assert not new.run_dir.exists()

    monkeypatch.undo()
    Trainer(tiny_config(run="earlier")).fit(stop_after=2)
    run_dir = Path(tiny_config(run="earlier").runtime.run_dir)
    before = _files(run_dir)
    assert {"config.yaml", "metrics.csv", "checkpoints/state.pt"} <= set(before)
    again = Trainer(tiny_config("training.lr=2e-3", run="earlier"))  # another run into the same folder
    calls["n"] = 0
    monkeypatch.setattr(Trainer, "train_step", fails_at_the_third_step)
    with pytest.raises(RuntimeError, match="unreadable batch"):
        again.fit()
    assert calls["n"] == 3
    after = _files(run_dir)
    assert sorted(after) == sorted(before)  # nothing new, no temporary or backup file left
    for name, data in before.items():
        assert after[name] == data, name
