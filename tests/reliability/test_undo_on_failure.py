"""``flowlet.data.outputs.undo_on_failure``: files written before a run's first result are put back on failure."""

from __future__ import annotations

import pytest

from flowlet.data.io import write_text_atomic
from flowlet.data.outputs import undo_on_failure


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _run(folder, names, *, writes: dict[str, str], keep: bool, error: BaseException | None) -> None:
    """Write ``writes`` under the rule, call ``keep()`` if asked, then raise ``error`` (if any)."""
    with undo_on_failure(folder, names) as kept:
        for name, text in writes.items():
            write_text_atomic(folder / name, text)
        if keep:
            kept()
        if error is not None:
            raise error


def test_a_failure_before_keep_puts_earlier_files_back_and_removes_new_ones(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("earlier\n")
    (run / "user.txt").write_text("mine\n")
    writes = {"config.yaml": "new\n", "metrics.csv": "step\n1\n"}
    with pytest.raises(RuntimeError, match="boom"):
        _run(run, ["config.yaml", "metrics.csv"], writes=writes, keep=False, error=RuntimeError("boom"))
    assert _listing(run) == ["config.yaml", "user.txt"]  # no backup or temporary file left
    assert (run / "config.yaml").read_text() == "earlier\n"


def test_a_folder_the_block_created_is_removed_on_failure(tmp_path):
    run = tmp_path / "new"
    writes = {"config.yaml": "new\n", "events": "x"}
    with pytest.raises(KeyboardInterrupt):
        _run(run, ["config.yaml"], writes=writes, keep=False, error=KeyboardInterrupt())
    assert not run.exists()


@pytest.mark.parametrize("fail", [False, True])
def test_after_keep_or_success_the_new_files_stay(tmp_path, fail):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("earlier\n")
    error = RuntimeError("after the first result") if fail else None
    if fail:
        with pytest.raises(RuntimeError):
            _run(run, ["config.yaml"], writes={"config.yaml": "new\n"}, keep=True, error=error)
    else:
        _run(run, ["config.yaml"], writes={"config.yaml": "new\n"}, keep=False, error=None)
    assert _listing(run) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "new\n"
