"""Tiny brain-age cohorts on disk: each scan is a 12×14×12 NIfTI whose inner dark ball grows with age."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from bap_helpers import phantom_scan

from flowlet.data.nifti import save_volume

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])

# One thread: the test machine is shared, and oversubscribed threads are slower than one.
torch.set_num_threads(1)


def write_cohort(
    root: Path,
    n_subjects: int,
    *,
    prefix: str = "s",
    seed: int = 0,
    two_sessions: int = 0,
    scale: float = 100.0,
) -> Path:
    """Write ``n_subjects`` scans (+ a second session for the first ``two_sessions``) and a cohort CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        age = float(rng.uniform(20, 80))
        for ses in range(2 if i < two_sessions else 1):
            sub, ses_id = f"{prefix}{i:03d}", f"{ses + 1}"
            path = save_volume(
                root / f"sub-{sub}_ses-{ses_id}_T1w.nii.gz", phantom_scan(age + 2 * ses, rng, scale), AFFINE
            )
            rows.append(
                {
                    "subject_id": sub,
                    "session_id": ses_id,
                    "path": path.name,
                    "age": round(age + 2 * ses, 2),
                    "sex": "F" if i % 2 else "M",
                    "site": f"site{i % 2}",
                }
            )
    table = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


@pytest.fixture(scope="session")
def tiny_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real subjects (the first 6 with two sessions), two sites."""
    return write_cohort(tmp_path_factory.mktemp("real"), 40, two_sessions=6)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic scans, ids deliberately overlapping the real ids' numbering but with another prefix."""
    return write_cohort(tmp_path_factory.mktemp("synthetic"), 40, prefix="g", seed=1)
