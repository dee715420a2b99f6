"""Builders for the reliability matrix: 8³ images, BIDS folders, cohort tables, a tiny FlowLet checkpoint.

Every bad input is one small file next to good ones, so a case fails only for the reason it names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from flowlet.data.nifti import save_volume

SHAPE = (8, 8, 8)
AFFINE = np.diag([-4.0, 4.0, 4.0, 1.0])
AGES = (22.5, 31.0, 38.2, 47.9, 55.1, 63.4, 71.0, 78.6)
TINY_UNET = dict(
    model_channels=8,
    channel_mult=(1, 2),
    attention_resolutions=(2,),
    num_heads=2,
    norm_num_groups=4,
    condition_embedding_dim=16,
)


def good_image(index: int) -> np.ndarray:
    """A bright ball whose dark core grows with ``index`` (so images differ), plus seeded noise."""
    rng = np.random.default_rng(index)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius < 3.6, 100.0, 5.0)
    image[radius < 0.8 + 0.3 * index] = 30.0
    return (image + rng.normal(0, 3.0, SHAPE)).astype(np.float32)


def write_raw(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Plain nibabel writer (no validation), so that invalid images can be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _truncated(path: Path) -> Path:
    save_volume(path, good_image(0), AFFINE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes())
    return path


def _with_voxel(value: float) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        data = good_image(0)
        data[3, 4, 5] = value
        return write_raw(path, data)

    return write


def _singular_affine(path: Path) -> Path:
    img = nib.Nifti1Image(good_image(0), AFFINE)
    img.set_sform(np.diag([4.0, 4.0, 0.0, 1.0]), code=2)  # a slice thickness of 0: no voxel-to-world inverse
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _nan_affine(path: Path) -> Path:
    img = nib.Nifti1Image(good_image(0), AFFINE)
    bad = AFFINE.copy()
    bad[0, 3] = np.nan
    img.set_sform(bad, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@dataclass(frozen=True)
class BadImage:
    """One bad image: how to write it, the file suffix it carries, and words the error must contain."""

    write: Callable[[Path], Path]
    suffix: str
    expected: tuple[str, ...]


#: The bad-image half of the matrix: case -> writer and the words the message must contain.
BAD_IMAGES: dict[str, BadImage] = {
    "truncated_gz": BadImage(_truncated, ".nii.gz", ("cannot read", "truncated")),
    "random_bytes_nii": BadImage(_random_bytes, ".nii", ("cannot read", "not a NIfTI")),
    "image_2d": BadImage(lambda p: write_raw(p, good_image(0)[:, :, 0]), ".nii.gz", ("expected a 3D image", "2D")),
    "image_4d": BadImage(
        lambda p: write_raw(p, np.stack([good_image(0)] * 2, -1)), ".nii.gz", ("expected a 3D image", "4D")
    ),
    "nan_voxel": BadImage(_with_voxel(np.nan), ".nii.gz", ("NaN or Inf", "expected finite")),
    "inf_voxel": BadImage(_with_voxel(np.inf), ".nii.gz", ("NaN or Inf", "expected finite")),
    "singular_affine": BadImage(_singular_affine, ".nii.gz", ("affine is not invertible",)),
    "nan_affine": BadImage(_nan_affine, ".nii.gz", ("affine contains NaN",)),
    "all_zero": BadImage(lambda p: write_raw(p, np.zeros(SHAPE, np.float32)), ".nii.gz", ("constant",)),
}  # fmt: skip


def write_bids(root: Path, ages: Sequence[float] = AGES, *, participants: str | None = None) -> Path:
    """A BIDS folder ``sub-NN/anat/sub-NN_T1w.nii.gz`` + ``participants.tsv`` (or the given TSV text)."""
    rows = ["participant_id\tage\tsex\tsite"]
    for i, age in enumerate(ages):
        sid = f"sub-{i:02d}"
        save_volume(root / sid / "anat" / f"{sid}_T1w.nii.gz", good_image(i), AFFINE)
        rows.append(f"{sid}\t{age}\t{'MF'[i % 2]}\tsite{i % 2}")
    (root / "participants.tsv").write_text(
        participants if participants is not None else "\n".join(rows) + "\n"
    )
    return root


def write_table_cohort(root: Path, ages: Sequence[float] = AGES, *, bad: str | None = None) -> Path:
    """``cohort.csv`` (subject_id, path, age, sex, site) whose first image is replaced by ``BAD_IMAGES[bad]``."""
    rows = []
    for i, age in enumerate(ages):
        path = root / f"s{i:02d}_T1w.nii.gz"
        if bad is not None and i == 0:
            path = BAD_IMAGES[bad].write(root / f"s00_bad_T1w{BAD_IMAGES[bad].suffix}")
        else:
            save_volume(path, good_image(i), AFFINE)
        rows.append(
            {"subject_id": f"s{i:02d}", "path": path.name, "age": age, "sex": "MF"[i % 2], "site": "a"}
        )
    table = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


@dataclass
class CliResult:
    code: int
    text: str


def leftovers(folder: Path) -> list[str]:
    """Files under ``folder`` a failed run must not leave: anything but an (empty-of-data) lock file."""
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".lock")
    )


def temp_files(folder: Path) -> list[str]:
    """Temporary files of :func:`flowlet.data.io.atomic_path` (``.name.XXXX.tmp...``) left anywhere below."""
    return sorted(str(p) for p in folder.rglob(".*.tmp*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every non-hidden file (the comparable result of a run)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


class Payload:
    """Unpickling this object runs ``exec`` (what a hostile checkpoint does); the marker proves whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _participants(rows: Sequence[str], header: str = "participant_id\tage\tsex\tsite") -> str:
    return "\n".join([header, *rows]) + "\n"


def _good_rows(ages: Sequence[float] = AGES) -> list[str]:
    return [f"sub-{i:02d}\t{age}\t{'MF'[i % 2]}\tsite{i % 2}" for i, age in enumerate(ages)]


def _with_age(value: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        rows = _good_rows()
        rows[3] = f"sub-03\t{value}\tF\tsite1"
        return write_bids(root, participants=_participants(rows))

    return build


def _no_participants(root: Path) -> Path:
    write_bids(root)
    (root / "participants.tsv").unlink()
    return root


def _empty_table(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cohort.csv").write_text("subject_id,path,age,sex,site\n")
    return root / "cohort.csv"


def _missing_image(root: Path) -> Path:
    table = write_table_cohort(root)
    (root / "s02_T1w.nii.gz").unlink()
    return table


@dataclass(frozen=True)
class BadTable:
    """One bad cohort source: a builder returning the path to pass, and words the error must contain."""

    build: Callable[[Path], Path]
    expected: tuple[str, ...]


#: The cohort-table half of the matrix.
BAD_TABLES: dict[str, BadTable] = {
    "missing_age_column": BadTable(
        lambda r: write_bids(r, participants=_participants([x.rsplit("\t", 3)[0] + "\tF\ta" for x in _good_rows()],
                                                           "participant_id\tsex\tsite")),
        ("participants.tsv", "missing age column", "'age'"),
    ),
    "misnamed_id_column": BadTable(
        lambda r: write_bids(r, participants=_participants(_good_rows(), "subject\tage\tsex\tsite")),
        ("participants.tsv", "missing participant id column", "participant_id"),
    ),
    "non_numeric_age": BadTable(_with_age("forty"), ("participants.tsv", "'age'", "'forty' is not a number")),
    "nan_age": BadTable(_with_age("NaN"), ("participants.tsv", "'age'", "'NaN' is not a number")),
    "negative_age": BadTable(_with_age("-3"), ("participants.tsv", "'age'", "-3 is outside [0, 120]")),
    "absurd_age_250": BadTable(_with_age("250"), ("participants.tsv", "'age'", "250 is outside [0, 120]")),
    "duplicate_ids": BadTable(
        lambda r: write_bids(r, participants=_participants([*_good_rows(), "sub-02\t50\tF\tsite0"])),
        ("participants.tsv", "repeats participants", "'02'", "expected one row each"),
    ),
    "image_without_participant": BadTable(
        lambda r: write_bids(r, participants=_participants(_good_rows()[:-1])),
        ("participants.tsv", "have no participants row", "sub-07_T1w.nii.gz"),
    ),
    "no_participants_file": BadTable(_no_participants, ("no participants.tsv", "expected participant_id and age")),
    "empty_cohort": BadTable(_empty_table, ("cohort.csv", "the cohort is empty")),
    "missing_image_file": BadTable(_missing_image, ("cohort.csv", "image files not found", "s02_T1w.nii.gz")),
}  # fmt: skip
