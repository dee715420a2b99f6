"""The CUDA agreement checks of ``test_cuda.py``, run on the CPU so that they are proven without a GPU.

The same code runs with the CPU as the candidate device (exact agreement), with CPU bf16 autocast (coarser
rounding than TF32 or CUDA bf16 products: it has to stay within the tolerances) and with a changed network or
initial weights (it has to exceed them: the checks can fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agreement import (
    TOLERANCE,
    codec_errors,
    fixture_bundle,
    official_fixture_errors,
    perturbed,
    relative_error,
    sampling_error,
    train_steps,
    training_errors,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sampling_check_is_exact_on_the_cpu_tolerates_bf16_and_catches_a_changed_network():
    bundle = fixture_bundle()
    assert sampling_error(bundle, "cpu") <= 1e-6
    bf16 = sampling_error(bundle, "cpu", "bf16")
    assert 0 < bf16 <= TOLERANCE["bf16"]
    assert sampling_error(bundle, "cpu", candidate=perturbed(bundle)) > TOLERANCE["bf16"]


def test_training_check_is_exact_on_the_cpu_tolerates_bf16_and_catches_other_weights():
    assert training_errors("cpu") == (0.0, 0.0)
    loss_error, update_error = training_errors("cpu", "bf16")
    assert 0 < update_error <= TOLERANCE["bf16"] and loss_error <= TOLERANCE["bf16"]
    other = train_steps("cpu", seed=1)
    assert relative_error(other.update, train_steps("cpu").update) > TOLERANCE["bf16"]


def test_official_fixture_check_on_the_cpu():
    errors = official_fixture_errors("cpu")
    assert max(errors.values()) <= 1e-5, errors


def test_codec_check_on_the_cpu():
    errors = codec_errors("cpu")
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the gpu tests run instead")
def test_gpu_tests_are_collected_and_skipped_without_cuda():
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "tests/gpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "needs a CUDA device" in done.stdout
    skipped = int(done.stdout.rsplit(" skipped", 1)[0].split()[-1])
    assert skipped >= 5, done.stdout
