"""Cohort tables: one validated row per scan, read from BIDS folders, plain tables, the official catalog or OpenBHB.

A :class:`Cohort` holds a DataFrame with the columns :data:`flowlet.data.keys.COHORT_COLUMNS` (then any extra
columns the source had). :func:`load_cohort` recognises the source by its shape:

* a BIDS (or BIDS-derivatives) folder: ``participants.tsv`` + ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; ages per
  session from ``sub-*/sub-*_sessions.tsv`` when it has an age column, else from ``participants.tsv``;
* an OpenBHB-style folder: a participants file + quasi-raw arrays ``sub-<id>_preproc-quasiraw_T1w.npy``;
* a CSV/TSV with ``subject_id, path, age`` (+ ``session_id, sex, site``); relative paths resolve against the table;
* the official catalog ``SubjectID, FilePath, Age[, Condition]`` (spec §5).

Reading lives in :mod:`flowlet.data.cohort_sources`. Every problem raises :class:`CohortError` naming the file,
the row or subject, the column and what was expected.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.cohort_sources import (
    MAX_AGE_YEARS,
    CohortError,
    normalize_sex,
    normalize_subject_id,
    read_cohort_table,
    read_participants_folder,
    read_table,
)
from flowlet.data.grid import MNI_VOXEL_SIZES, mni_grid
from flowlet.data.io import sha256_file, write_table_atomic
from flowlet.data.nifti import NiftiError, Volume, check_voxel_array, load_volume, validate_affine

__all__ = [
    "MAX_AGE_YEARS",
    "Cohort",
    "CohortError",
    "load_cohort",
    "mni_affine_for_shape",
    "normalize_sex",
    "normalize_subject_id",
    "read_image",
    "save_cohort_table",
]

logger = logging.getLogger(__name__)


def mni_affine_for_shape(shape: Sequence[int]) -> np.ndarray:
    """MNI152 affine of an array of ``shape`` on the standard bounding box (1, 1.5, 2, 3 or 4 mm; x flipped).

    ``(91, 109, 91)`` gives ``[[-2,0,0,90],[0,2,0,-126],[0,0,2,-72],[0,0,0,1]]``.

    Raises:
        ValueError: the shape matches none of these grids.
    """
    shape_t = tuple(int(s) for s in shape)
    for size in MNI_VOXEL_SIZES:
        grid = mni_grid(size)
        if grid.shape == shape_t:
            return np.array(grid.affine)
    raise ValueError(f"shape {shape_t} is not a known MNI152 grid (voxel sizes {list(MNI_VOXEL_SIZES)} mm)")


def read_image(path: str | os.PathLike, *, affine: np.ndarray | None = None) -> Volume:
    """Read a scan of a cohort: NIfTI via :func:`flowlet.data.nifti.load_volume`, ``.npy`` arrays directly.

    A ``.npy`` array (OpenBHB quasi-raw, e.g. ``(1, 1, 91, 109, 91)``) is squeezed to 3D and given ``affine``, or
    the MNI152 affine of its shape (:func:`mni_affine_for_shape`). Arrays are read with ``allow_pickle=False``.

    Returns:
        A float32 :class:`Volume` ``(X, Y, Z)``.

    Raises:
        NiftiError: naming the file: missing, unreadable, not 3D, non-finite, constant (e.g. all zero: nothing
            to learn from, and intensity normalisation would divide by zero), or no affine known for its shape.
    """
    volume = _read_any(Path(path), affine)
    if volume.data.size and float(volume.data.min()) == float(volume.data.max()):
        raise NiftiError(
            f"{path}: the image is constant (every voxel = {float(volume.data.min()):g}); "
            "expected a brain MRI volume"
        )
    return volume


def _read_any(path: Path, affine: np.ndarray | None) -> Volume:
    if not path.name.endswith(".npy"):
        return load_volume(path)
    if not path.is_file():
        raise NiftiError(f"{path}: file not found")
    try:
        # memory-mapped: the shape and dtype are checked against the budget before any voxel is read
        data = np.load(path, allow_pickle=False, mmap_mode="r")
        check_voxel_array(data.shape, data.dtype, path)
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 3:
            raise NiftiError(
                f"{path}: expected a 3D array (optionally with leading axes of length 1), got {data.shape}"
            )
        data = np.array(data, dtype=np.float32)
    except PermissionError as exc:
        raise NiftiError(f"{path}: cannot read the array: permission denied ({exc.strerror})") from exc
    except NiftiError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise NiftiError(f"{path}: cannot read the array ({type(exc).__name__}: {exc})") from exc
    if not np.all(np.isfinite(data)):
        raise NiftiError(f"{path}: array has NaN or Inf values; expected finite intensities")
    if affine is None:
        try:
            affine = mni_affine_for_shape(data.shape)
        except ValueError as exc:
            raise NiftiError(f"{path}: {exc}; pass affine= explicitly") from exc
    return Volume(data=data, affine=validate_affine(affine, source=str(path)), path=path)


@dataclass(frozen=True)
class Cohort:
    """A validated cohort: one row per scan.

    Attributes:
        table: columns :data:`keys.COHORT_COLUMNS` (``subject_id`` str, ``session_id`` str, ``path`` absolute str,
            ``age`` float years, ``sex`` ``M``/``F``/``n/a``, ``site`` str), then the source's extra columns.
        source: the folder or file the cohort was read from.
    """

    table: pd.DataFrame
    source: Path

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ages(self) -> np.ndarray:
        """``(N,)`` float64 ages in years, in row order."""
        return self.table[keys.AGE].to_numpy(dtype=np.float64)

    def records(self) -> list[dict[str, Any]]:
        """One dict per scan with the :data:`keys.COHORT_COLUMNS` keys (and extra columns)."""
        return self.table.to_dict(orient="records")

    def subjects(self) -> list[str]:
        """Unique subject ids in order of first appearance."""
        return list(dict.fromkeys(self.table[keys.SUBJECT_ID]))

    def subset(self, mask_or_ids: np.ndarray | pd.Series | Iterable[str]) -> Cohort:
        """Rows selected by a boolean mask (length N) or by subject ids (with or without ``sub-``)."""
        if isinstance(mask_or_ids, str):
            mask_or_ids = [mask_or_ids]
        values = np.asarray(
            list(mask_or_ids) if not isinstance(mask_or_ids, np.ndarray | pd.Series) else mask_or_ids
        )
        if values.dtype == bool:
            if values.shape != (len(self),):
                raise CohortError(f"{self.source}: mask has shape {values.shape}; expected ({len(self)},)")
            mask = values
        else:
            wanted = {normalize_subject_id(v) for v in values}
            unknown = sorted(wanted - set(self.table[keys.SUBJECT_ID]))
            if unknown:
                raise CohortError(f"{self.source}: unknown subject ids {unknown[:5]}")
            mask = self.table[keys.SUBJECT_ID].isin(wanted).to_numpy()
        return Cohort(table=self.table.loc[mask].reset_index(drop=True), source=self.source)

    def summary(self) -> dict[str, Any]:
        """Counts and age statistics: scans, subjects, sessions, age min/mean/max, counts per sex and site."""
        ages = self.ages
        return {
            "n_scans": len(self),
            "n_subjects": len(self.subjects()),
            "age_min": float(ages.min()),
            "age_mean": float(ages.mean()),
            "age_max": float(ages.max()),
            "sex_counts": {
                str(k): int(v) for k, v in self.table[keys.SEX].value_counts().sort_index().items()
            },
            "site_counts": {
                str(k): int(v) for k, v in self.table[keys.SITE].value_counts().sort_index().items()
            },
        }


def save_cohort_table(cohort: Cohort, path: str | os.PathLike) -> Path:
    """Write the cohort table as TSV (atomically; ``.csv`` gives CSV)."""
    return write_table_atomic(path, cohort.table)


def _finish(table: pd.DataFrame, extra: pd.DataFrame, source: Path, check_files: bool) -> Cohort:
    """Order columns, add extras, and check emptiness, duplicates and files."""
    if table.empty:
        raise CohortError(f"{source}: the cohort is empty (no scan with an image and an age)")
    table = table.loc[:, list(keys.COHORT_COLUMNS)].reset_index(drop=True)
    extra = extra.reset_index(drop=True).drop(columns=[c for c in extra.columns if c in table.columns])
    table = pd.concat([table, extra], axis=1)
    empty_ids = table.index[table[keys.SUBJECT_ID] == ""].tolist()
    if empty_ids:
        raise CohortError(
            f"{source}: column '{keys.SUBJECT_ID}' is empty in rows {empty_ids[:5]}; expected an id"
        )
    dup = table.duplicated(list(keys.SCAN_KEYS), keep=False)
    if dup.any():
        pairs = sorted({(s, e) for s, e in table.loc[dup, list(keys.SCAN_KEYS)].itertuples(index=False)})
        raise CohortError(
            f"{source}: duplicate (subject_id, session_id) {pairs[:5]}; expected one scan per "
            "subject and session (add a session column or narrow the image pattern)"
        )
    if check_files:
        missing = [p for p in table[keys.PATH] if not Path(p).is_file()]
        if missing:
            raise CohortError(
                f"{source}: column '{keys.PATH}': {len(missing)} image files not found, e.g. {missing[:5]}"
            )
    _refuse_duplicate_images(table, source, hash_contents=check_files)
    table[keys.AGE] = table[keys.AGE].astype(np.float64)
    return Cohort(table=table, source=source)


def _scan_label(row: pd.Series) -> str:
    session = row[keys.SESSION_ID]
    return f"'{row[keys.SUBJECT_ID]}'" + ("" if session == keys.UNKNOWN else f" session '{session}'")


def _content_digest(path: str, size: int, *, full: bool) -> str:
    """SHA-256 of the whole file, or (``full=False``) of 16 blocks of 4 KiB spread over it: a cheap first pass."""
    if full:
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for offset in np.linspace(0, max(size - 4096, 0), 16).astype(np.int64):
            handle.seek(int(offset))
            digest.update(handle.read(4096))
    return digest.hexdigest()


def _same_content(paths: dict[int, str]) -> dict[str, list[int]]:
    """Rows whose files hold identical bytes: equal size, then equal sampled blocks, then equal full SHA-256."""
    candidates: dict[tuple, list[int]] = {}
    for index, path in paths.items():
        candidates.setdefault((os.path.getsize(path),), []).append(index)
    for stage in ("sampled", "full"):
        refined: dict[tuple, list[int]] = {}
        for key, rows in candidates.items():
            if len(rows) > 1:
                for index in rows:
                    digest = _content_digest(paths[index], key[0], full=stage == "full")
                    refined.setdefault((key[0], digest), []).append(index)
        candidates = refined
    return {f"content sha256 {key[1]}": rows for key, rows in candidates.items()}


def _file_identity(path: str) -> tuple:
    """(device, inode) of an existing file, so that hard links count as one file; else the resolved path."""
    try:
        stat = os.stat(path)
    except OSError:
        return (path,)
    return (stat.st_dev, stat.st_ino)


def _refuse_duplicate_images(table: pd.DataFrame, source: Path, *, hash_contents: bool) -> None:
    """One image under several ids would count one brain as several and could put it in train and test.

    Two rows naming the same file (paths resolved, symlinks followed) are refused. Distinct files with the
    same bytes (with ``hash_contents``; only files of equal size are read) are flagged with a warning naming both
    scans: copies are legitimate in some layouts, and the decision needs a person.

    Raises:
        CohortError: naming both ids and the file.
    """
    resolved = table[keys.PATH].map(os.path.realpath)
    same_file: dict[tuple, list[int]] = {}
    for index, path in resolved.items():
        same_file.setdefault(_file_identity(path), []).append(index)
    for rows in same_file.values():
        if len(rows) > 1:
            path = resolved[rows[0]]
            raise CohortError(
                f"{source}: column '{keys.PATH}': one image file is listed under {len(rows)} scans "
                f"({_scan_label(table.loc[rows[0]])} and {_scan_label(table.loc[rows[1]])}: {path}); expected one "
                "image per subject and session, so that no brain is counted twice or split across train and test"
            )
    if not hash_contents:
        return
    existing = {i: p for i, p in resolved.items() if os.path.isfile(p)}
    for digest, rows in _same_content(existing).items():
        if len(rows) > 1:
            logger.warning(
                "%s: %d scans hold byte-identical images (%s and %s: %s and %s, %s); check that they are "
                "not one brain under several ids",
                source, len(rows), _scan_label(table.loc[rows[0]]), _scan_label(table.loc[rows[1]]),
                table.loc[rows[0], keys.PATH], table.loc[rows[1], keys.PATH], digest,
            )  # fmt: skip


def load_cohort(
    source: str | os.PathLike,
    *,
    check_files: bool = True,
    age_column: str | None = None,
    root: str | os.PathLike | None = None,
    filter_column: str | None = None,
    filter_value: Any = None,
    image_pattern: str | None = None,
) -> Cohort:
    """Read and validate a cohort from a BIDS / OpenBHB folder, a participants file, a table or the official catalog.

    Args:
        source: a folder (BIDS, BIDS derivatives, OpenBHB) or a ``.tsv``/``.csv`` file. A participants file
            (``participant_id`` and no path column) is treated like its folder.
        check_files: require every image file to exist.
        age_column: name of the age column (default: ``age``, ``Age`` or ``AGE``).
        root: folder that relative table paths resolve against (default: the table's folder), or where the
            images of a participants file live.
        filter_column: keep only rows whose value in this column equals ``filter_value`` (the official
            ``csv_filter_col``/``csv_filter_value``; numeric comparison when both are numbers).
        filter_value: see ``filter_column``.
        image_pattern: file-name glob of the images in a folder (default ``*_T1w.nii*`` under ``anat/``, or
            ``sub-*_T1w.npy`` for arrays).

    Returns:
        The validated :class:`Cohort`.

    Raises:
        CohortError: naming the file, row/subject, column and what was expected.

    Example:
        >>> cohort = load_cohort("data/bids")  # doctest: +SKIP
        >>> cohort.table[["subject_id", "age"]].head()  # doctest: +SKIP
    """
    path = Path(source).expanduser().absolute()
    root_path = Path(root).expanduser().absolute() if root is not None else None
    options = {"age_column": age_column, "filter_column": filter_column, "filter_value": filter_value}
    if path.is_dir():
        table, extra = read_participants_folder(path, root=root_path, image_pattern=image_pattern, **options)
    elif not path.is_file():
        raise CohortError(f"{path}: no such file or folder")
    elif _is_participants_file(read_table(path).columns):
        table, extra = read_participants_folder(
            root_path or path.parent, path, image_pattern=image_pattern, **options
        )
    else:
        table, extra = read_cohort_table(path, root=root_path, **options)
    return _finish(table, extra, path, check_files)


def _is_participants_file(columns: Sequence[str]) -> bool:
    return "participant_id" in columns and keys.PATH not in columns and "FilePath" not in columns
