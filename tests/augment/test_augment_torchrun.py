"""Under torchrun, every flowlet-augment process takes the shard RANK/WORLD_SIZE unless --shard is given."""

from __future__ import annotations

import filecmp
from pathlib import Path

from pipelines.augment import main, shard_from_environment


def _args(cohort, ckpt, out, *extra):
    return ["--real", cohort, "--checkpoint", ckpt, "--out", str(out), "--bin-width", "10", "--steps", "2",
            "--batch-size", "3", "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def _volumes(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.nii.gz"))


def test_shard_comes_from_the_torchrun_environment():
    assert shard_from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == "3/8"
    assert shard_from_environment({"LOCAL_RANK": "0"}) == "0/1"  # not a torchrun group
    assert shard_from_environment({}) == "0/1"


def test_torchrun_ranks_together_equal_one_run(tiny_cohort, tiny_checkpoint, tmp_path, monkeypatch):
    whole, ranks = tmp_path / "whole", tmp_path / "ranks"
    assert main(_args(tiny_cohort, tiny_checkpoint, whole)) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    written = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        before = set(_volumes(ranks)) if ranks.exists() else set()
        assert main(_args(tiny_cohort, tiny_checkpoint, ranks)) == 0
        written.append(set(_volumes(ranks)) - before)
    assert written[0] and written[1] and not written[0] & written[1]  # each rank made its own part
    assert _volumes(ranks) == _volumes(whole)
    for name in _volumes(whole):
        assert filecmp.cmp(whole / name, ranks / name, shallow=False)
    # an explicit --shard wins over the environment: rank 1's shard again is already complete
    monkeypatch.setenv("RANK", "0")
    assert main(_args(tiny_cohort, tiny_checkpoint, ranks, "--shard", "1/2")) == 0
    assert _volumes(ranks) == _volumes(whole)
