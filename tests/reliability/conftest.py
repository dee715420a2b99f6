"""Fixtures of the reliability matrix (builders live in ``reliability_helpers``)."""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import write_random_checkpoint
from reliability_helpers import AFFINE, TINY_UNET, CliResult, Payload, write_table_cohort

from flowlet.models import UNetConfig


@pytest.fixture
def cli(capsys, caplog) -> Callable[..., CliResult]:
    """``cli(main, argv)`` runs a console entry point in-process; returns its exit code and everything it said."""

    def run(main: Callable[[list[str]], int], argv: Sequence[str]) -> CliResult:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
                if isinstance(exc.code, str):
                    print(exc.code)
            except Exception:  # an uncaught exception is a failure mode of its own: exit 1 with a traceback
                code = 1
                print(traceback.format_exc())
        out = capsys.readouterr()
        logs = "\n".join(r.getMessage() for r in caplog.records)
        return CliResult(int(code or 0), "\n".join([out.out, out.err, logs]))

    return run


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[int], None]:
    """``full_disk(after)``: the ``after + 1``-th atomic write (and every later one) fails with ENOSPC.

    The failure happens inside :func:`flowlet.data.io.atomic_path`'s block, after the temporary file was written,
    which is where a real full disk shows up (on flush/fsync).
    """
    import flowlet.data.io as io_module

    real = io_module._fsync

    def arm(after: int = 0) -> None:
        calls = {"n": 0}

        def failing(path: Path) -> None:
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(path)

        monkeypatch.setattr(io_module, "_fsync", failing)

    return arm


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight FlowLet checkpoint on 8³ images, ages 10-90, exported at 8³ with a 4 mm affine."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    write_random_checkpoint(
        path,
        UNetConfig(**TINY_UNET),
        model_input_size=(8, 8, 8),
        save_size=(8, 8, 8),
        affine=AFFINE,
        age_range=(10.0, 90.0),
        purpose="reliability tests",
    )
    return path


@pytest.fixture
def hostile_checkpoint(tmp_path) -> Callable[[Path], tuple[Path, Path]]:
    """``hostile_checkpoint(path)`` writes a torch file whose unpickling would create a marker file."""

    def make(path: Path) -> tuple[Path, Path]:
        marker = tmp_path / "payload-ran.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "flowlet-checkpoint", "state_dict": {}, "evil": Payload(marker)}, path)
        return path, marker

    return make


@pytest.fixture(scope="session")
def bap_checkpoint(tmp_path_factory) -> Path:
    """A brain-age checkpoint from one epoch of ``bap-train`` on the tiny table cohort."""
    from pipelines import bap_train

    root = tmp_path_factory.mktemp("bap")
    table = write_table_cohort(root)
    argv = ["--real", str(table), "--config", "demo", "--out", str(root / "run"), "--epochs", "1",
            "--set", "model.options.channels=[4, 8]", "--set", "eval.n_boot=10", "--set", "train.num_threads=1",
            "--no-progress"]  # fmt: skip
    assert bap_train.main(argv) == 0
    return root / "run" / "best.pt"
