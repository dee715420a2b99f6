"""How every command ends: one line and an exit status, never a traceback for a user's error or a fault.

* a user error (bad input, refused output folder, locked folder, unreadable file): ``PROG: error: MESSAGE`` on
  stderr, exit status 2;
* a full disk (or quota, I/O error) while writing: ``PROG: error: [Errno 28] cannot write FILE: ...``, exit status 2;
  the file's previous version is intact (:func:`flowlet.data.io.atomic_path`);
* Ctrl-C: ``PROG: interrupted; HINT``, exit status 130 (128 + SIGINT, what shells report); every file completed
  before the interrupt stays, so the hint says how to continue.

Bugs still raise with their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "run_cli"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: What a rerun does after Ctrl-C, for commands that do not say otherwise.
RESUME_HINT = "rerun the same command to continue"


def run_cli(
    prog: str,
    body: Callable[[], int | None],
    *,
    interrupted: str = RESUME_HINT,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command's ``body`` and turn the known failures into one line and an exit status.

    Args:
        prog: the command name, first word of every message.
        body: the command (returns its exit status; ``None`` is 0).
        interrupted: what to tell the user after Ctrl-C.
        errors: more exception types that are user errors (``ValueError``, ``OSError``, ``FolderLockedError``
            are always).

    Returns:
        The exit status.
    """
    from flowlet.data.io import FolderLockedError

    known = (ValueError, OSError, FolderLockedError, *errors)
    try:
        code = body()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except known as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0 if code is None else int(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
