"""The output-folder contract: what every command may do to the folder (or file) it writes.

Rules, enforced by :func:`output_folder` (folders) and :func:`check_output_file` (single files):

1. An output is never an input: a folder that is, contains or lies inside one of the command's inputs (cohort
   folders and tables, checkpoints, configurations...; resolved, symbolic links followed) is refused before
   anything is created.
2. A command writes only into a folder it created or was allowed to use: a non-empty folder without this
   command's manifest (``.flowlet-manifest.json``) is refused unless ``--overwrite``. The manifest names the
   command and lists the files it wrote there (recorded by :func:`flowlet.data.io.atomic_path` before each file is
   put in place). ``--overwrite`` never deletes a file the manifest does not list.
3. A refused or failed run leaves nothing behind: a folder the run created is removed again when no file was
   completed in it, and a manifest it added to a folder the user had is taken away again. A run that completed
   files keeps them (resume state, earlier volumes) and lists them in the manifest. Files a run writes before its
   first result (a trainer's config and metrics before its first checkpoint) go through :func:`undo_on_failure`,
   so a failure before that result leaves them as they were.
4. One writer per folder: :func:`flowlet.data.io.folder_lock` is held for the whole run, so a concurrent run into
   the same folder is refused.

Only rank 0 of a ``torchrun`` job applies the contract; the other ranks write nothing themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flowlet.data import io

__all__ = [
    "MANIFEST",
    "OutputError",
    "OutputFolder",
    "check_output_file",
    "check_outside_inputs",
    "output_folder",
    "undo_on_failure",
]

#: Name of the manifest every command writes into its output folder.
MANIFEST = ".flowlet-manifest.json"


class OutputError(ValueError):
    """An output folder or file that the contract refuses (the message says why and what to do)."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_outside_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (existing paths; others are names).

    Raises:
        OutputError: naming the output and the input it collides with.
    """
    target = _resolved(out)
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).expanduser()
        if not source.exists():
            continue  # a packaged name ('demo', 'uniform'...), or a missing file reported by its reader
        source = source.resolve()
        if target == source:
            relation = "is"
        elif source.is_dir() and _inside(target, source):
            relation = "lies inside"
        elif _inside(source, target):
            relation = "contains"
        else:
            continue
        raise OutputError(
            f"output '{out}' {relation} the input '{item}'; write the results to a separate folder "
            "(an input is never overwritten)"
        )


def check_output_file(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, overwrite: bool = False
) -> Path:
    """The contract for a command whose output is one file (``bap-predict --out FILE``).

    Refuses a file that is an input or lies inside an input folder, a path that is a folder, and an existing file
    unless ``overwrite`` (the file is then replaced atomically, so a failed run keeps it).

    Raises:
        OutputError: naming the file.
    """
    path = Path(out)
    check_outside_inputs(path, inputs)
    if path.is_dir():
        raise OutputError(
            f"output '{out}' is a folder; give a file name such as {Path(out) / 'predictions.csv'}"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"output file '{out}' already exists; use --overwrite to replace it")
    return path


def _is_internal(path: Path) -> bool:
    """Lock files, the manifest and the temporary files of a killed writer: not the user's, not results."""
    name = path.name
    return name.startswith((".lock", MANIFEST, f".{MANIFEST}.")) or bool(io._TEMP_NAME.match(name))


def _content(folder: Path) -> list[Path]:
    """Everything under ``folder`` except the internal files (folders count only when they hold something)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if not p.is_dir() and not _is_internal(p)]


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


@dataclass
class OutputFolder:
    """An output folder under the contract (see :func:`output_folder`).

    Attributes:
        path: the folder.
        command: the command that writes it.
        created: whether this run created the folder.
        own: whether the folder is new or holds this command's earlier results (false: a foreign folder that
            ``--overwrite`` admitted; the command must then delete nothing of it).
        previous: the files the manifest listed before this run (relative paths); empty for a new folder.
        written: the files this run put in place so far (relative paths).
    """

    path: Path
    command: str
    created: bool = False
    own: bool = False
    previous: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    _had_manifest: bool = False
    _removed: set[str] = field(default_factory=set)
    _dirty: bool = False
    _saved_at: float = 0.0
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def note(self, destination: Path) -> None:
        """Record ``destination`` (called by ``atomic_path`` before the file is put in place)."""
        try:
            relative = destination.resolve().relative_to(self._root)
        except ValueError:
            return
        name = relative.as_posix()
        if name == MANIFEST:
            return
        with self._mutex:
            if name in self.written:
                return
            self.written.add(name)
            self._dirty = True
            # The first file of a folder is listed before it exists, so a killed run's folder is recognised;
            # later saves are spaced out (a run of thousands of volumes would otherwise rewrite it each time).
            if name not in self.previous and (
                not (self.path / MANIFEST).exists() or time.monotonic() - self._saved_at > 2.0
            ):
                self._save()

    def remove_previous(self) -> list[Path]:
        """Delete the files of the earlier run that this run did not write again (manifest-listed files only)."""
        removed = []
        for name in sorted(self.previous - self.written):
            path = self.path / name
            if _inside(path.resolve(), self._root) and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        for folder in sorted({p.parent for p in removed}, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                while _inside(folder, self.path) and folder != self.path:
                    folder.rmdir()  # only empty folders; stops at the first one that still holds something
                    folder = folder.parent
        with self._mutex:
            names = {p.relative_to(self.path).as_posix() for p in removed}
            self.previous -= names
            self._removed |= names
            self._dirty = True
        return removed

    @property
    def _root(self) -> Path:
        return self.path.resolve()

    def _save(self) -> None:
        on_disk = _read_manifest(self.path)  # shards of one augmentation share the folder and its manifest
        listed = (
            set(on_disk["files"]) if on_disk is not None and on_disk.get("command") == self.command else set()
        )
        files = sorted((self.previous | self.written | listed) - self._removed - {MANIFEST})
        data = {"command": self.command, "files": files}
        # Plain write + rename (no fsync): the manifest is bookkeeping, not a result.
        tmp = self.path / f".{MANIFEST}.{os.getpid()}.part"
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)
        self._saved_at = time.monotonic()
        self._dirty = False

    def _completed_any(self) -> bool:
        """Whether a file this run wrote is in the folder (walked only when the run failed)."""
        return any(p.relative_to(self.path).as_posix() in self.written for p in _content(self.path))

    def _finish(self, ok: bool) -> None:
        if ok or self.previous or self._completed_any():
            if self._dirty or ok:
                with contextlib.suppress(OSError):
                    self._save()
            return
        # Nothing was completed: leave the folder as it was before the run (a folder this run created holds
        # only what this run made, under its lock, e.g. a log file).
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif not self._had_manifest:
            (self.path / MANIFEST).unlink(missing_ok=True)


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike,
    *,
    command: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    reuse: bool = True,
    reuse_hint: str = "",
    lock: str | None = ".lock",
    legacy: Callable[[Path], bool] | None = None,
) -> Iterator[OutputFolder]:
    """Apply the output-folder contract to ``path`` for the duration of the block.

    Args:
        path: the output folder (created when absent).
        command: the command's name, recorded in the manifest; a folder written by another command is foreign.
        inputs: the command's input paths (folders or files; names that do not exist are skipped).
        overwrite: the user's ``--overwrite``: a non-empty folder without this command's manifest may be written
            (same-named files are replaced; no other file is deleted).
        reuse: whether this command may write again into a folder it wrote before without ``--overwrite``
            (resume, rerun, stage caching). When false such a folder is refused with ``reuse_hint``.
        reuse_hint: what to say when an earlier result is refused (e.g. ``use --resume to continue it``).
        lock: name of the lock file (``None``: the caller locks, e.g. one lock per shard).
        legacy: ``legacy(folder)`` is true for a folder this command wrote before it kept a manifest (e.g. it holds
            the command's resume state); such a folder counts as its own and gets a manifest.

    Yields:
        :class:`OutputFolder`; ``previous`` and ``written`` tell the command what was there and what it wrote.

    Raises:
        OutputError: the output collides with an input, is a file, or is a non-empty folder it may not write.
        FolderLockedError: another process writes to the folder.
    """
    folder = Path(path)
    if int(os.environ.get("RANK", "0") or 0) > 0:  # torchrun: rank 0 owns the folder
        yield OutputFolder(folder, command)
        return
    check_outside_inputs(folder, inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder '{folder}' is a file; give a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    state = OutputFolder(folder, command, created=created)
    new_lock = bool(lock) and not (folder / str(lock)).exists()
    try:
        with io.folder_lock(folder, name=lock) if lock else contextlib.nullcontext(folder):
            try:
                _admit(state, overwrite=overwrite, reuse=reuse, reuse_hint=reuse_hint, legacy=legacy)
            except OutputError:
                if new_lock:  # a refused folder is left exactly as it was
                    (folder / str(lock)).unlink(missing_ok=True)
                raise
            io.add_write_observer(state.note)
            try:
                yield state
            except BaseException:
                state._finish(ok=False)
                raise
            else:
                state._finish(ok=True)
            finally:
                io.remove_write_observer(state.note)
    except io.FolderLockedError:
        raise  # the folder belongs to the running writer; nothing of ours to remove
    except BaseException:
        if created and not _content(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _admit(
    state: OutputFolder,
    *,
    overwrite: bool,
    reuse: bool,
    reuse_hint: str,
    legacy: Callable[[Path], bool] | None,
) -> None:
    """Decide whether the run may write into ``state.path`` (under its lock)."""
    folder = state.path
    manifest = _read_manifest(folder)
    content = _content(folder)
    own = manifest is not None and manifest.get("command") == state.command
    state._had_manifest = manifest is not None
    if own:
        state.previous = {str(f) for f in manifest["files"]}
    elif manifest is None and content and legacy is not None and legacy(folder):
        own = (
            True  # written by this command before manifests existed; it lists no file, so nothing is deleted
        )
    state.own = own or not content
    if not content:
        return
    if own and (reuse or overwrite):
        return
    if own:
        raise OutputError(
            f"output folder '{folder}' holds an earlier {state.command} run; {reuse_hint or 'use --overwrite'}"
        )
    if overwrite:
        return
    writer = f", written by {manifest.get('command')}" if manifest is not None else ""
    example = ", ".join(sorted(str(p.relative_to(folder)) for p in content)[:3])
    raise OutputError(
        f"output folder '{folder}' is not empty; use --overwrite to write into it (files of the same name are "
        f"replaced, no other file is deleted) or choose a new folder. It was not created by {state.command}"
        f"{writer} and holds {example}{', ...' if len(content) > 3 else ''}"
    )


@contextlib.contextmanager
def undo_on_failure(folder: str | os.PathLike, names: Iterable[str]) -> Iterator[Callable[[], None]]:
    """Rule 3 for the files a run writes before it has a result: call the yielded ``keep()`` once it has one.

    If the block raises before ``keep()``, each of ``folder / name`` is left as it was before the block (an earlier
    file put back byte for byte, a new one removed), and ``folder`` itself is removed when the block created it.
    The earlier files wait under hidden temporary names (``remove_stale_temporaries`` clears them after a kill).

    Example:
        >>> with undo_on_failure(run_dir, ["config.yaml"]) as keep:  # doctest: +SKIP
        ...     write_text_atomic(run_dir / "config.yaml", text)
        ...     save_checkpoint(...)
        ...     keep()
    """
    folder = Path(folder)
    created = not folder.exists()
    paths = [folder / name for name in names]
    earlier = {}
    for path in paths:
        if path.is_file():
            fd, backup = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp-earlier", dir=path.parent)
            os.close(fd)
            shutil.copy2(path, backup)
            earlier[path] = Path(backup)
    kept = False

    def keep() -> None:
        nonlocal kept
        kept = True

    try:
        yield keep
    except BaseException:
        if not kept:
            for path in paths:
                if path in earlier:
                    os.replace(earlier[path], path)
                else:
                    path.unlink(missing_ok=True)
            if created:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        for backup in earlier.values():
            backup.unlink(missing_ok=True)
