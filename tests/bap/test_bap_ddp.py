"""Two CPU processes under torchrun (gloo): training runs, only rank 0 writes, ranks agree."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from bap_helpers import tiny_run_sets

from bap.checkpoint import load_checkpoint


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_real, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29531",
        "-m",
        "pipelines.bap_train",
        "--real",
        str(tiny_real),
        "--config",
        "demo",
        "--out",
        str(out),
        "--epochs",
        "2",
        *tiny_run_sets(20),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    history = pd.read_csv(out / "metrics.csv")
    assert history.epoch.tolist() == [1, 2]
    payload = load_checkpoint(out / "best.pt")
    assert payload["config"]["train"]["epochs"] == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
        "predictions.csv",
        "results.csv",
        "summary.json",
        "test_metrics.csv",
    ]
