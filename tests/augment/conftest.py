"""A tiny cohort and a tiny random-weight checkpoint, so augmentation runs end to end in seconds."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoint_helpers import write_random_checkpoint

from flowlet.data.nifti import save_volume
from flowlet.models import UNetConfig

TINY_AFFINE = np.diag([-8.0, 8.0, 8.0, 1.0])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    config = UNetConfig(
        model_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(2,),
        num_heads=2,
        norm_num_groups=4,
        condition_embedding_dim=16,
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    write_random_checkpoint(
        path,
        config,
        model_input_size=(8, 8, 8),
        save_size=(7, 8, 6),
        affine=TINY_AFFINE,
        age_range=(10.0, 90.0),
    )
    return str(path)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.uniform(20, 40, 14), rng.uniform(40, 80, 4)])
    rows = ["participant_id\tage\tsex\tsite"]
    for i, age in enumerate(ages):
        sid = f"sub-{i:03d}"
        save_volume(root / sid / "anat" / f"{sid}_T1w.nii.gz", rng.random((7, 8, 6)), TINY_AFFINE)
        rows.append(f"{sid}\t{age:.2f}\tF\tA")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return str(root)
