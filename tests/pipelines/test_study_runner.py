"""The staged runner reruns exactly what changed."""

from __future__ import annotations

import pytest

from flowlet.data.io import FolderLockedError, folder_lock
from pipelines.study.runner import Stage, run_stages


def _stages(calls: list[str]):
    def make(name):
        def run(ctx):
            calls.append(name)
            (ctx.stage_dir / "out.txt").write_text(repr(dict(ctx.config)))
            return {"file": f"{name}/out.txt"}

        return run

    return [
        Stage("a", make("a"), config_sections=("a",)),
        Stage("b", make("b"), depends=("a",), config_sections=("b",)),
        Stage("c", make("c"), depends=("b",), config_sections=("c",)),
    ]


def test_rerun_skips_unchanged_and_reruns_downstream_of_a_change(tmp_path):
    calls: list[str] = []
    config = {"a": {"n": 1}, "b": {"lr": 0.1}, "c": {}}
    run_stages(tmp_path, _stages(calls), config)
    assert calls == ["a", "b", "c"]
    calls.clear()
    results = run_stages(tmp_path, _stages(calls), config)
    assert calls == []
    assert all(r.cached for r in results.values())
    run_stages(tmp_path, _stages(calls), {**config, "b": {"lr": 0.2}})
    assert calls == ["b", "c"]


def test_force_from_and_unknown_stage(tmp_path):
    calls: list[str] = []
    config = {"a": {}, "b": {}, "c": {}}
    run_stages(tmp_path, _stages(calls), config)
    calls.clear()
    run_stages(tmp_path, _stages(calls), config, force_from="b")
    assert calls == ["b", "c"]
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages(tmp_path, _stages(calls), config, force_from="zzz")


def test_a_failed_stage_reruns_next_time(tmp_path):
    calls: list[str] = []
    stages = _stages(calls)

    def boom(ctx):
        raise RuntimeError("killed")

    broken = [stages[0], Stage("b", boom, depends=("a",), config_sections=("b",)), stages[2]]
    with pytest.raises(RuntimeError):
        run_stages(tmp_path, broken, {"a": {}, "b": {}, "c": {}})
    calls.clear()
    run_stages(tmp_path, stages, {"a": {}, "b": {}, "c": {}})
    assert calls == ["b", "c"]


def test_concurrent_run_is_refused(tmp_path):
    with folder_lock(tmp_path), pytest.raises(FolderLockedError, match="another process"):
        run_stages(tmp_path, _stages([]), {"a": {}, "b": {}, "c": {}})
