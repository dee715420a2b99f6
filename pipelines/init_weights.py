"""``bap-train --init PATH_OR_URL``: pretrained weights from a local file or a URL, fetched once into a cache.

A URL (``https://``, ``http://`` or ``file://``) is downloaded with :func:`torch.hub.download_url_to_file` (a
temporary file renamed into place, so an interrupted download leaves nothing behind) into
``<cache>/<first 16 hex of sha256(url)>/<file name>`` and reused from there on later runs. The cache is
``--init-cache``, else ``$FLOWLET_CACHE/weights``, else ``~/.cache/flowlet/weights``. ``--init-sha256`` pins the
file's content: a download or a cached copy with another hash is refused (a cached copy is then deleted).
The file is read later with ``torch.load(weights_only=True)`` like a local one; nothing in it is executed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from flowlet.data.io import sha256_file

__all__ = ["URL_SCHEMES", "add_init_arguments", "cache_folder", "init_file", "is_url", "resolve_init"]

#: Schemes read as URLs; anything else is a local path.
URL_SCHEMES = ("https", "http", "file")

_SHA256 = re.compile(r"[0-9a-f]{64}")

logger = logging.getLogger(__name__)


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    """``--init``, ``--init-sha256`` and ``--init-cache``."""
    p.add_argument(
        "--init",
        metavar="PATH_OR_URL",
        help="start from these weights: a bap-train checkpoint, a state dict or the public SFCN file "
        "(module.-prefixed keys); a local file or an https/http/file URL, downloaded once into the cache",
    )
    p.add_argument(
        "--init-sha256",
        metavar="HEX",
        help="with --init, the expected SHA-256 of the weights file (a file with another hash is refused)",
    )
    p.add_argument(
        "--init-cache",
        metavar="DIR",
        help="with an --init URL, the download cache (default $FLOWLET_CACHE/weights or ~/.cache/flowlet/weights)",
    )


def init_file(args: argparse.Namespace) -> str | None:
    """``--init`` as a local file (a URL is fetched into the cache; ``--init-sha256`` checked)."""
    value = getattr(args, "init", None)
    if value is None:
        if getattr(args, "init_sha256", None) or getattr(args, "init_cache", None):
            raise ValueError("--init-sha256 and --init-cache need --init")
        return None
    path = resolve_init(value, sha256=args.init_sha256, cache_dir=args.init_cache)
    if is_url(value):
        logger.info("--init %s: using the cached file %s", value, path)
    return str(path)


def is_url(value: str) -> bool:
    """Whether ``value`` names a URL of :data:`URL_SCHEMES` (``C:\\x`` and plain paths are not URLs)."""
    return urlparse(value).scheme.lower() in URL_SCHEMES


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weight cache: ``cache_dir``, else ``$FLOWLET_CACHE/weights``, else ``~/.cache/flowlet/weights``."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("FLOWLET_CACHE")
    return Path(root) / "weights" if root else Path.home() / ".cache" / "flowlet" / "weights"


def resolve_init(
    value: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The local file behind ``--init``: the path itself, or the cached download of a URL.

    Args:
        value: a local path or a URL.
        sha256: the expected SHA-256 of the file (64 hex digits), checked for local files too.
        cache_dir: the cache folder (see the module docstring).
        progress: show the download's progress bar.

    Raises:
        ValueError: a malformed ``sha256``, a URL without a file name, a missing local file, a file whose hash
            differs, or a download that failed (the message names the URL and the reason).
    """
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"--init-sha256: expected 64 hexadecimal digits, got {sha256!r}")
    if not is_url(value):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--init: no such file {str(path)!r}")
        _check_hash(path, sha256, value)
        return path
    name = Path(unquote(urlparse(value).path)).name
    if not name:
        raise ValueError(f"--init: the URL {value!r} names no file (expected .../<name>.pt or similar)")
    target = cache_folder(cache_dir) / hashlib.sha256(value.encode()).hexdigest()[:16] / name
    if target.is_file():
        try:
            _check_hash(target, sha256, value)
            return target
        except ValueError:
            target.unlink()  # a stale or corrupt cached copy; fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch.hub

    try:
        torch.hub.download_url_to_file(value, str(target), progress=progress)
    except OSError as err:  # URLError and HTTPError are OSErrors
        if not any(target.parent.iterdir()):
            target.parent.rmdir()  # nothing was fetched: leave no empty folder in the cache
        raise ValueError(
            f"--init: could not download {value!r}: {err}. Download the file by other means and pass its path."
        ) from err
    try:
        _check_hash(target, sha256, value)
    except ValueError:
        target.unlink()
        raise
    return target


def _check_hash(path: Path, expected: str | None, source: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"--init {source!r}: SHA-256 {actual} differs from --init-sha256 {expected}")
