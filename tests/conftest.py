"""Test-wide settings.

The tests use tiny tensors, for which one thread is fastest; more threads only add synchronisation, and on a busy
2-core machine OpenMP's spinning threads can slow a tiny convolution down a hundredfold. Subprocesses started by
tests inherit the environment variables.

Tests marked ``gpu`` are skipped, with the reason, where CUDA is not available (``pytest -m gpu`` selects them).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if (
            item.get_closest_marker("gpu") is not None
        ):  # not item.keywords: that holds the folder name tests/gpu
            item.add_marker(skip)
