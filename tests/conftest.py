"""Test-wide settings.

The tests use tiny tensors, for which one thread is fastest; more threads only add synchronisation, and on a busy
2-core machine OpenMP's spinning threads can slow a tiny convolution down a hundredfold. Subprocesses started by
tests inherit the environment variables.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
