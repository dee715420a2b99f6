"""Reading the sources of a cohort into raw tables: plain tables, the official catalog, BIDS and OpenBHB folders.

:mod:`flowlet.data.cohort` turns the ``(table, extra)`` pairs returned here into a validated
:class:`~flowlet.data.cohort.Cohort`. This module defines the single subject-key rule
(:func:`normalize_subject_id`) and reports every bad value with the file, the row or subject, the column and what
was expected.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.io import undo_spreadsheet_safe_text

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_AGE_YEARS",
    "CohortError",
    "normalize_session_id",
    "normalize_sex",
    "normalize_subject_id",
    "read_cohort_table",
    "read_participants_folder",
    "read_table",
]

#: Ages above this many years are treated as a data-entry error.
MAX_AGE_YEARS = 120.0
_AGE_NAMES = ("age", "Age", "AGE")
_SUBJECT_NAMES = (keys.SUBJECT_ID, "participant_id")
_SESSION_NAMES = (keys.SESSION_ID, "session")
_PARTICIPANT_FILES = ("participants.tsv", "participants.csv")
_SEX_CODES = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
_MISSING = {"", "n/a", "na", "nan", "none", "null"}


class CohortError(ValueError):
    """A cohort source cannot be used; the message names the file, the row/subject, the column and the problem."""


def _as_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def normalize_subject_id(value: Any) -> str:
    """The one subject key rule: stripped text without a leading ``sub-`` (``"sub-01"`` and ``"01"`` → ``"01"``)."""
    text = _as_text(value)
    return text[4:] if text.startswith("sub-") else text


def normalize_session_id(value: Any) -> str:
    """Session key: stripped text without a leading ``ses-``; empty or missing → ``n/a``."""
    text = _as_text(value)
    text = text[4:] if text.startswith("ses-") else text
    return keys.UNKNOWN if text.lower() in _MISSING else text


def normalize_sex(value: Any) -> str:
    """Map common spellings (``m``, ``Male``, ``FEMALE``, ...) to ``"M"``/``"F"``; anything else to ``n/a``."""
    return _SEX_CODES.get(_as_text(value).lower(), keys.UNKNOWN)


def read_table(path: Path) -> pd.DataFrame:
    """Read a ``.tsv`` (tab) or other (comma) table with every cell as text and stripped column names."""
    if not path.is_file():
        raise CohortError(f"{path}: file not found")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        # Everything as text: ids like "0001" must keep their zeros; ages are parsed with row-level errors.
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: cannot parse the table ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    # tables the toolkit wrote carry "'" before text starting with = + - @ (spreadsheet safety); ids read back intact
    return frame.apply(lambda column: column.map(undo_spreadsheet_safe_text))


def _pick(
    frame: pd.DataFrame, names: Sequence[str], path: Path, what: str, required: bool = True
) -> str | None:
    for name in names:
        if name in frame.columns:
            return name
    if required:
        raise CohortError(
            f"{path}: missing {what} column (expected one of {list(names)}); found columns "
            f"{list(frame.columns)}"
        )
    return None


def _parse_ages(values: pd.Series, labels: Sequence[str], path: Path, column: str) -> np.ndarray:
    """Float ages; every bad value is reported with its row label, the column and the accepted range."""
    numbers = pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    problems = []
    for label, raw, age in zip(labels, values, numbers):
        if not np.isfinite(age):
            problems.append(f"{label}: {raw!r} is not a number")
        elif age < 0 or age > MAX_AGE_YEARS:
            problems.append(f"{label}: {age:g} is outside [0, {MAX_AGE_YEARS:g}] years")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise CohortError(
            f"{path}: column '{column}' must hold ages in years (0 to {MAX_AGE_YEARS:g}): {shown}"
        )
    return numbers


def _text_column(frame: pd.DataFrame, name: str | None) -> pd.Series:
    if name is None:
        return pd.Series([keys.UNKNOWN] * len(frame), index=frame.index, dtype=object)
    return frame[name].map(lambda v: keys.UNKNOWN if str(v).strip().lower() in _MISSING else str(v).strip())


def _apply_filter(frame: pd.DataFrame, path: Path, column: str | None, value: Any) -> pd.DataFrame:
    """Keep rows whose ``column`` equals ``value``: numerically when both parse as numbers, else as text."""
    if column is None:
        return frame
    if column not in frame.columns:
        raise CohortError(f"{path}: filter column '{column}' not found; found columns {list(frame.columns)}")
    as_num = pd.to_numeric(frame[column], errors="coerce")
    try:
        target = float(value)
    except (TypeError, ValueError):
        target = None
    if target is not None and as_num.notna().all():
        keep = np.isclose(as_num.to_numpy(dtype=np.float64), target)
    else:
        keep = (frame[column].astype(str).str.strip() == str(value).strip()).to_numpy()
    logger.info("%s: filter %s == %r keeps %d of %d rows", path, column, value, int(keep.sum()), len(frame))
    return frame.loc[keep]  # the index keeps the original row numbers for error messages


def _absolute(raw: str, root: Path) -> str:
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    return os.path.normpath(os.path.abspath(candidate))


def read_cohort_table(
    path: Path,
    *,
    age_column: str | None = None,
    root: Path | None = None,
    filter_column: str | None = None,
    filter_value: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A plain table (``subject_id, path, age``) or the official catalog (``SubjectID, FilePath, Age``).

    Returns:
        ``(table, extra)``: the standard columns, and the source's other columns (same rows).
    """
    frame = _apply_filter(read_table(path), path, filter_column, filter_value)
    official = "FilePath" in frame.columns
    subj = _pick(frame, ("SubjectID", *_SUBJECT_NAMES) if official else _SUBJECT_NAMES, path, "subject id")
    path_col = _pick(frame, ("FilePath", keys.PATH) if official else (keys.PATH,), path, "image path")
    age_col = _pick(frame, (age_column,) if age_column else _AGE_NAMES, path, "age")
    sess = _pick(frame, _SESSION_NAMES, path, "session", required=False)
    sex = _pick(frame, (keys.SEX, "Sex", "gender"), path, "sex", required=False)
    site = _pick(frame, (keys.SITE, "Site"), path, "site", required=False)
    base = root if root is not None else path.parent
    # File line numbers: the header is line 1 and the index still counts rows of the unfiltered file.
    labels = [f"line {i + 2} (subject {frame.at[i, subj]!r})" for i in frame.index]
    table = pd.DataFrame(
        {
            keys.SUBJECT_ID: frame[subj].map(normalize_subject_id),
            keys.SESSION_ID: frame[sess].map(normalize_session_id) if sess else keys.UNKNOWN,
            keys.PATH: [_absolute(p, base) if str(p).strip() else "" for p in frame[path_col]],
            keys.AGE: _parse_ages(frame[age_col], labels, path, age_col),
            keys.SEX: frame[sex].map(normalize_sex) if sex else keys.UNKNOWN,
            keys.SITE: _text_column(frame, site),
        }
    )
    empty_paths = [labels[i] for i in np.flatnonzero(table[keys.PATH] == "")]
    if empty_paths:
        raise CohortError(
            f"{path}: column '{path_col}' is empty in {empty_paths[:5]}; expected an image path"
        )
    used = {c for c in (subj, path_col, age_col, sess, sex, site) if c}
    return table, frame.drop(columns=list(used))


def _find_participants(folder: Path) -> Path:
    """``participants.tsv`` in the folder, else (for ``<dataset>/derivatives/<pipeline>``) in the raw dataset root."""
    candidates = [folder]
    if "derivatives" in folder.parts:
        candidates.append(
            Path(*folder.parts[: len(folder.parts) - folder.parts[::-1].index("derivatives") - 1])
        )
    for base in candidates:
        for name in _PARTICIPANT_FILES:
            if (base / name).is_file():
                return base / name
    raise CohortError(
        f"{folder}: no participants.tsv or participants.csv found (looked in "
        f"{[str(c) for c in candidates]}); expected participant_id and age columns"
    )


def _find_images(folder: Path, pattern: str | None) -> list[tuple[str, str, Path]]:
    """``(subject_id, session_id, path)`` of BIDS ``anat`` images, else of ``sub-*`` arrays anywhere below."""
    found = []
    for sub_dir in sorted(p for p in folder.glob("sub-*") if p.is_dir()):
        subject = normalize_subject_id(sub_dir.name)
        anat_dirs = [(keys.UNKNOWN, sub_dir / "anat")]
        anat_dirs += [(normalize_session_id(s.name), s / "anat") for s in sorted(sub_dir.glob("ses-*"))]
        for session, anat in anat_dirs:
            for image in sorted(anat.glob(pattern or "*_T1w.nii*")):
                if image.name.endswith((".nii", ".nii.gz")) or pattern:
                    found.append((subject, session, image))
    if found:
        return found
    for image in sorted(folder.rglob(pattern or "sub-*_T1w.npy")):
        subject = re.search(r"sub-([^_/]+)", image.name)
        session = re.search(r"_ses-([^_/]+)", image.name)
        if subject:
            found.append((subject.group(1), session.group(1) if session else keys.UNKNOWN, image))
    return found


def _session_ages(
    sub_dir: Path, subject: str, age_column: str | None
) -> tuple[dict[str, str], Path | None, str]:
    """Ages per session from ``sub-X/sub-X_sessions.tsv`` if that file has an age column."""
    sessions_file = sub_dir / f"sub-{subject}_sessions.tsv"
    if not sessions_file.is_file():
        return {}, None, ""
    frame = read_table(sessions_file)
    age_col = _pick(frame, (age_column,) if age_column else _AGE_NAMES, sessions_file, "age", required=False)
    if age_col is None:
        return {}, None, ""
    ses_col = _pick(frame, (keys.SESSION_ID,), sessions_file, "session")
    ages = {normalize_session_id(s): a for s, a in zip(frame[ses_col], frame[age_col]) if str(a).strip()}
    return ages, sessions_file, age_col


def read_participants_folder(
    folder: Path,
    participants: Path | None = None,
    *,
    root: Path | None = None,
    image_pattern: str | None = None,
    age_column: str | None = None,
    filter_column: str | None = None,
    filter_value: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """BIDS / BIDS-derivatives / OpenBHB: a participants table joined to the images found on disk.

    Args:
        folder: dataset folder (where ``participants.tsv`` and, unless ``root`` is given, the images are).
        participants: the participants file, if not ``folder/participants.tsv``.
        root: folder holding the images, if not ``folder``.
        image_pattern: glob of the image names (default ``*_T1w.nii*`` in ``anat/``, else ``sub-*_T1w.npy``).
        age_column: age column name (default ``age``/``Age``/``AGE``).
        filter_column: keep participants whose value in this column equals ``filter_value``.
        filter_value: see ``filter_column``.

    Returns:
        ``(table, extra)``: one row per image with the standard columns, and the participants' other columns.
    """
    participants = participants or _find_participants(folder)
    full = read_table(participants)
    subj = _pick(full, ("participant_id", keys.SUBJECT_ID), participants, "participant id")
    full.index = full[subj].map(normalize_subject_id)
    frame = _apply_filter(full, participants, filter_column, filter_value)
    frame.index = frame[subj].map(normalize_subject_id)
    if frame.index.duplicated().any():
        dup = sorted(set(frame.index[frame.index.duplicated()]))
        raise CohortError(
            f"{participants}: column '{subj}' repeats participants {dup[:5]}; expected one row each"
        )
    images = _find_images(root or folder, image_pattern)
    if not images:
        raise CohortError(
            f"{root or folder}: no images found; expected sub-*/[ses-*/]anat/*_T1w.nii[.gz] "
            "or sub-*_T1w.npy arrays"
        )
    orphans = sorted({str(p) for s, _, p in images if s not in full.index})
    if orphans:
        raise CohortError(
            f"{participants}: {len(orphans)} images have no participants row (so no age), e.g. "
            f"{orphans[:5]}; expected a '{subj}' row for each subject"
        )
    images = [item for item in images if item[0] in frame.index]  # the filter drops subjects, not errors
    unused = sorted(set(frame.index) - {s for s, _, _ in images})
    if unused:
        logger.warning(
            "%s: %d participants have no image and are left out: %s", participants, len(unused), unused[:5]
        )
    age_names = (age_column,) if age_column else _AGE_NAMES
    age_col = _pick(frame, age_names, participants, "age", required=False)
    rows, groups, session_cache = [], {}, {}
    for subject, session, image in images:
        if subject not in session_cache:
            session_cache[subject] = _session_ages((root or folder) / f"sub-{subject}", subject, age_column)
        ses_ages, ses_file, ses_col = session_cache[subject]
        if session in ses_ages:
            origin, raw = (ses_file, ses_col), ses_ages[session]
        else:
            if age_col is None:
                raise CohortError(
                    f"{participants}: missing age column (expected one of {list(age_names)}) for "
                    f"subject {subject!r} session {session!r}, and no age in a sub-*_sessions.tsv; "
                    f"found columns {list(frame.columns)}"
                )
            origin, raw = (participants, age_col), frame.at[subject, age_col]
        groups.setdefault(origin, []).append((len(rows), f"subject {subject!r} session {session!r}", raw))
        rows.append({keys.SUBJECT_ID: subject, keys.SESSION_ID: session, keys.PATH: str(image)})
    ages = np.empty(len(rows))
    for (file, column), items in groups.items():
        ages[[i for i, _, _ in items]] = _parse_ages(
            pd.Series([r for _, _, r in items]), [lab for _, lab, _ in items], file, column
        )
    table = pd.DataFrame(rows)
    people = frame.loc[table[keys.SUBJECT_ID]]
    sex = _pick(frame, (keys.SEX, "Sex", "gender"), participants, "sex", required=False)
    site = _pick(frame, (keys.SITE, "Site"), participants, "site", required=False)
    table[keys.AGE] = ages
    table[keys.SEX] = people[sex].map(normalize_sex).to_numpy() if sex else keys.UNKNOWN
    table[keys.SITE] = _text_column(people, site).to_numpy()
    extra = people.drop(columns=[c for c in (subj, age_col, sex, site) if c])
    return table, extra
