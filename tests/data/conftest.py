"""Tiny image and cohort builders shared by the data tests (every image is a few voxels)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

ANISO_AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 10.0], [0.0, 1.5, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)


def write_raw_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write with plain nibabel (bypassing the validated writer) so that bad images can be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def aniso_affine() -> np.ndarray:
    """An anisotropic, x-flipped affine (2 x 1.5 x 3 mm)."""
    return ANISO_AFFINE.copy()


@pytest.fixture
def raw_nifti() -> Callable[..., Path]:
    """``raw_nifti(path, data, affine=None)``: plain nibabel writer, for making invalid images."""
    return write_raw_nifti


@pytest.fixture
def make_nifti() -> Callable[..., Path]:
    """``make_nifti(path, shape=(4, 5, 6), value=None)`` writes a small valid image and returns its path."""

    def _make(path: Path, shape: tuple[int, ...] = (4, 5, 6), value: float | None = None) -> Path:
        data = (
            np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
            if value is None
            else np.full(shape, value)
        )
        return write_raw_nifti(Path(path), data.astype(np.float32), ANISO_AFFINE)

    return _make


@pytest.fixture
def bids_folder(tmp_path: Path, make_nifti: Callable[..., Path]) -> Path:
    """A BIDS folder: sub-01 with two sessions (ages in sessions.tsv), sub-02 and sub-03 without sessions."""
    root = tmp_path / "bids"
    make_nifti(root / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz")
    make_nifti(root / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_T1w.nii.gz")
    make_nifti(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    make_nifti(root / "sub-03" / "anat" / "sub-03_T1w.nii")
    pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03"],
            "age": ["60", "65.3", "23"],
            "sex": ["male", "F", "n/a"],
            "site": ["A", "B", "A"],
            "diagnosis": ["CN", "AD", "CN"],
        }
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    pd.DataFrame({"session_id": ["ses-01", "ses-02"], "age": [60.5, 62.25]}).to_csv(
        root / "sub-01" / "sub-01_sessions.tsv", sep="\t", index=False
    )
    return root
