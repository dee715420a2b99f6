"""The shared run-time set-up (seeds, process group, device, autocast) and the state-dict mismatch listing."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch

from flowlet.data.runtime import (
    autocast_context,
    autocast_dtype,
    init_distributed,
    seed_everything,
    select_device,
)
from flowlet.data.state_dict import state_mismatch


def _draws():
    return random.random(), np.random.rand(), torch.rand(3)  # noqa: NPY002 (the global generator is the point)


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    seed_everything(7)
    a = _draws()
    seed_everything(7)
    b = _draws()
    seed_everything(8)
    c = _draws()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert a[0] != c[0] and not torch.equal(a[2], c[2])
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert select_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    expected = torch.device("cuda", 2) if torch.cuda.is_available() else torch.device("cpu")
    assert select_device("auto", local_rank=2) == expected


def test_a_plain_launch_is_rank_0_of_1_without_a_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    run = init_distributed("cpu")
    assert (run.rank, run.world_size, run.local_rank, run.initialized, run.is_main) == (0, 1, 0, False, True)
    assert run.device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'; expected an integer"):
        init_distributed("cpu")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [(None, None), (False, None), ("fp32", None), (True, torch.bfloat16), ("bf16", torch.bfloat16),
     ("float16", torch.float16), (torch.float16, torch.float16)],
)  # fmt: skip
def test_autocast_dtype_names(precision, dtype):
    assert autocast_dtype(precision) == dtype


def test_autocast_dtype_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown autocast precision 'fp8'; choose from"):
        autocast_dtype("fp8")


def test_autocast_context_is_cuda_only_unless_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert isinstance(autocast_context("cpu", "bf16"), contextlib.nullcontext)
    with autocast_context("cpu", "bf16"):
        assert (a @ b).dtype == torch.float32  # sampling and brain-age keep CPU work exact
    with autocast_context("cpu", "bf16", cuda_only=False):
        assert (a @ b).dtype == torch.bfloat16  # the generator's trainer with training.precision bf16
    with autocast_context("cpu", None, cuda_only=False):
        assert (a @ b).dtype == torch.float32


def test_state_mismatch_lists_missing_unexpected_and_mis_shaped_keys():
    expected = {f"w{i}": torch.zeros(2, 3) for i in range(10)}
    found = {
        **{f"w{i}": torch.zeros(2, 3) for i in range(1, 9)},
        "w9": torch.zeros(3, 3),
        "extra": torch.zeros(1),
    }
    m = state_mismatch(expected, found)
    assert not m.fits
    assert (m.missing, m.unexpected, m.shapes) == (("w0",), ("extra",), (("w9", (3, 3), (2, 3)),))
    assert m.lines() == [
        "1 missing keys: ['w0']",
        "1 unexpected keys: ['extra']",
        "1 shape mismatches: ['w9: checkpoint (3, 3) vs model (2, 3)']",
    ]
    assert state_mismatch({"a": (1,)}, {"a": torch.zeros(1)}).fits  # key -> shape works as well
    forgiven = m.without_shapes(["w9"])
    assert forgiven.shapes == () and forgiven.missing == ("w0",)
    many = state_mismatch(expected, {}, found_label="file")
    assert many.lines(shown=3) == ["10 missing keys: ['w0', 'w1', 'w2'] (+7 more)"]
