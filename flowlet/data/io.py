"""Atomic file writing: a reader never sees a half-written file under its final name.

Every writer in the toolkit goes through :func:`atomic_path`: the data are written to a temporary file in the
same folder, flushed to disk, then renamed over the destination (``os.replace`` is atomic on POSIX and Windows
within one file system). If writing fails, the temporary file is removed and any previous file stays intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Args:
        path: final destination. Its parent folder is created if needed.
        suffix: suffix of the temporary file (defaults to the destination's full suffix, e.g. ``.nii.gz``,
            so that libraries which choose a format from the name still work).

    Example:
        >>> with atomic_path("out/table.tsv") as tmp:  # doctest: +SKIP
        ...     frame.to_csv(tmp, sep="\\t")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for observer in tuple(_WRITE_OBSERVERS):
        observer(path)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            # A failed write (full disk, quota, I/O error) names the file the user asked for, not the temp file;
            # the previous file under that name is untouched.
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


#: Called with each destination before its file is put in place (see :mod:`flowlet.data.outputs`).
_WRITE_OBSERVERS: list[Callable[[Path], None]] = []


def add_write_observer(observer: Callable[[Path], None]) -> None:
    """Have ``observer(destination)`` called by every :func:`atomic_path` from now on (before the rename)."""
    _WRITE_OBSERVERS.append(observer)


def remove_write_observer(observer: Callable[[Path], None]) -> None:
    with contextlib.suppress(ValueError):
        _WRITE_OBSERVERS.remove(observer)


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not safe to toggle from threads


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


#: First characters that make a spreadsheet read a cell as a formula (or shift it into one: tab, carriage return).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe_text(value: Any) -> Any:
    """``"=cmd()"`` -> ``"'=cmd()"``: a text cell that a spreadsheet would run as a formula gets a leading ``'``.

    Plain numbers written as text (``"-3.5"``) and non-text values are returned unchanged.
    :func:`undo_spreadsheet_safe_text` is the inverse, applied by the toolkit's table reader.

    Example:
        >>> spreadsheet_safe_text("=HYPERLINK(1)"), spreadsheet_safe_text("-2"), spreadsheet_safe_text("sub-01")
        ("'=HYPERLINK(1)", '-2', 'sub-01')
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def undo_spreadsheet_safe_text(value: Any) -> Any:
    """Inverse of :func:`spreadsheet_safe_text`: ``"'=x"`` -> ``"=x"``; other text unchanged."""
    if isinstance(value, str) and value[:1] == "'" and value[1:].startswith(FORMULA_PREFIXES):
        return value[1:]
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells pass through :func:`spreadsheet_safe_text` (numbers untouched)."""
    text_columns = [
        c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype)
    ]
    if not text_columns:
        return frame
    frame = frame.copy()
    for column in text_columns:
        frame[column] = frame[column].map(spreadsheet_safe_text)
    return frame


def write_table_atomic(path: str | os.PathLike, frame: pd.DataFrame, *, sep: str | None = None) -> Path:
    """Write a DataFrame as TSV (``.tsv``) or CSV (other suffixes) atomically, without the index.

    Floats are written with up to 10 significant digits so that files are reproducible byte for byte. Text
    cells that a spreadsheet would run as formulas are neutralised (:func:`spreadsheet_safe`).
    """
    path = Path(path)
    if sep is None:
        sep = "\t" if path.suffix == ".tsv" else ","
    frame = spreadsheet_safe(frame)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False, float_format="%.10g", lineterminator="\n")
    return path


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Join ``relative`` onto ``root`` and refuse any result outside ``root``.

    Used for every output path built from user-controlled text (subject ids, file names in tables), so that
    ``../`` or an absolute path cannot make a file land outside the output folder.

    Raises:
        ValueError: naming the offending path.
    """
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise ValueError(f"path '{relative}' would leave the output folder '{root_path}'")
    return candidate


class FolderLockedError(RuntimeError):
    """Another process holds the lock on an output folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the duration of the block.

    Two processes pointed at the same output folder would interleave their writes; the second one is refused with
    a clear error instead. The lock is an ``fcntl.flock`` on ``folder/.lock``, released automatically if the
    process dies, so a killed run never leaves a stale lock behind.

    Raises:
        FolderLockedError: naming the folder and the process that holds it.
    """
    import fcntl  # POSIX only; imported here so the module still imports elsewhere

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / name
    handle = open(lock_path, "a+")  # noqa: SIM115 - closed in the finally block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise FolderLockedError(
                f"{folder}: another process (pid {holder}) is writing to this folder; wait for it or use another folder"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield folder
    finally:
        handle.close()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed writer left under ``folder``.

    Only names of the exact form :func:`atomic_path` creates (``.<final name>.<8 random characters>.tmp<suffix>``)
    are removed. Call it only while holding :func:`folder_lock` on ``folder`` for every writer of the folder: then
    no live process owns such a file, and a file under its final name is never touched.

    Returns:
        The removed paths.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        if path.is_file() and _TEMP_NAME.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


# atomic_path's prefix ".<final name>.", then tempfile.mkstemp's 8 random characters, then ".tmp<suffix>"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint, input and cohort provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
