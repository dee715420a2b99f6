"""Checkpoint references: released variant names and ``hf://`` paths, fetched and cached with ``huggingface_hub``.

A reference given to ``--checkpoint`` / ``--checkpoint_path`` is resolved in this order:

1. ``demo``: the packaged 4 mm demo checkpoint;
2. an existing local file, used as is;
3. an existing local folder holding one ``.pth``/``.pt`` file (a variant downloaded by hand), with its
   ``config.json`` and ``condition_ranges.json`` next to it;
4. ``hf://owner/repo[@revision]/path/to/file.pth``: that file of a Hugging Face model repository;
5. a released variant name (:data:`VARIANTS`): ``<variant>/<file>`` of :data:`HUB_REPO`, as on the model card.

Hub files are downloaded with :func:`huggingface_hub.hf_hub_download` into the Hugging Face cache (``cache_dir``,
else ``HF_HUB_CACHE`` / ``HF_HOME``), at ``revision`` (default :data:`DEFAULT_REVISION`). The sidecars
``config.json`` and ``condition_ranges.json`` of the same folder are fetched with the weights; a missing
``config.json`` leaves the config embedded in a slim ``.pth`` to be used. With ``HF_HUB_OFFLINE=1`` nothing is
downloaded and only cached files are used.

``huggingface_hub`` is an optional dependency (``pip install flowlet-toolkit[hub]``), imported only when a hub
reference is resolved.

Errors tell apart the two reasons a hub file can be unavailable:

* **not published**: the hub answered and the file (or repository, or revision) is not there. The released
  variants are announced as coming soon, so this is what users see until the weights are uploaded;
* **offline and not cached**: no answer from the hub (``HF_HUB_OFFLINE=1`` or no connection) and no copy in the
  cache.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from flowlet.official import CheckpointError

__all__ = [
    "DEFAULT_REVISION",
    "HUB_REPO",
    "SIDECARS",
    "VARIANTS",
    "HubError",
    "ResolvedCheckpoint",
    "hub_offline",
    "is_hub_reference",
    "parse_hf_url",
    "resolve_reference",
]

log = logging.getLogger(__name__)

HUB_REPO = "danesed/FlowLet"
# The revision the variant names resolve to. The weights are announced but not uploaded yet, so there is no
# release commit to pin: "main" until they are, then the release commit's 40-digit hash (so that a later upload
# cannot change what a name means). An explicit revision always wins.
DEFAULT_REVISION = "main"
#: Released variant -> its weights file inside the folder of the same name (model card, "Models").
VARIANTS: dict[str, str] = {
    "rfm-91-base": "flowlet_rfm_91_base.pth",
    "rfm-91-large": "flowlet_rfm_91_large.pth",
    "rfm-182-base": "flowlet_rfm_182_base.pth",
    "rfm-182-large": "flowlet_rfm_182_large.pth",
}
SIDECARS = ("config.json", "condition_ranges.json")
_CHECKPOINT_SUFFIXES = (".pth", ".pt")
_INSTALL_HINT = "install the optional dependency: pip install 'flowlet-toolkit[hub]'"


class HubError(CheckpointError):
    """A hub reference cannot be resolved: not published, offline and not cached, or no ``huggingface_hub``."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A reference turned into local files.

    Attributes:
        checkpoint: the weights file.
        config_path: ``config.json`` fetched with hub weights (None: next to the file, or the embedded config).
        condition_ranges_path: ``condition_ranges.json`` fetched with hub weights (None: next to the file).
        reference: what the user wrote.
        provenance: ``{"hub_repo", "hub_file", "hub_revision", "hub_commit"}`` for hub references, else empty.
    """

    checkpoint: Path
    config_path: Path | None = None
    condition_ranges_path: Path | None = None
    reference: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for cached files only (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}


def is_hub_reference(reference: str | os.PathLike) -> bool:
    """``hf://...`` or a released variant name (a local path of the same name is not checked here)."""
    text = str(reference)
    return text.startswith("hf://") or text in VARIANTS


def parse_hf_url(url: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo[@rev]/path/file.pth`` -> ``(repo_id, filename, revision or None)``.

    Example:
        >>> parse_hf_url("hf://danesed/FlowLet@v1/rfm-91-base/flowlet_rfm_91_base.pth")
        ('danesed/FlowLet', 'rfm-91-base/flowlet_rfm_91_base.pth', 'v1')
    """
    parts = url.removeprefix("hf://").split("/")
    if not url.startswith("hf://") or len(parts) < 3 or not all(parts):
        raise HubError(f"{url!r}: expected hf://owner/repo[@revision]/path/to/file.pth")
    owner, repo = parts[0], parts[1]
    repo, _, revision = repo.partition("@")
    if not repo or (_ and not revision):
        raise HubError(f"{url!r}: expected hf://owner/repo[@revision]/path/to/file.pth")
    return f"{owner}/{repo}", "/".join(parts[2:]), revision or None


def _import_hub() -> tuple[ModuleType, ModuleType]:
    """``huggingface_hub`` and the module holding its errors (``errors`` since 0.24, ``utils`` before)."""
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise HubError(
            f"released weights are downloaded with huggingface_hub, which is missing: {_INSTALL_HINT}"
        ) from None
    for name in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            errors = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(errors, "LocalEntryNotFoundError"):
            return hub, errors
    raise HubError(f"this huggingface_hub is too old: {_INSTALL_HINT}")


def _cache_location(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


@dataclass(frozen=True)
class _Request:
    repo_id: str
    folder: str
    filename: str
    revision: str
    cache_dir: str | None
    variant: str | None

    @property
    def label(self) -> str:
        return self.variant or f"hf://{self.repo_id}/{self.folder}{self.filename}"


def _download(hub: ModuleType, request: _Request, name: str) -> str:
    return hub.hf_hub_download(
        repo_id=request.repo_id,
        filename=request.folder + name,
        revision=request.revision,
        cache_dir=request.cache_dir,
        local_files_only=hub_offline(),
    )


def _explain(errors: ModuleType, err: Exception, request: _Request, name: str) -> HubError:
    """The message for a failed download of ``name`` (the order matters: offline errors subclass not-found)."""
    where = f"{request.repo_id}/{request.folder}{name}"
    manual = "download the files by hand and pass the folder (or the .pth file) instead"
    if isinstance(err, errors.LocalEntryNotFoundError):
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
        return HubError(
            f"{request.label}: {reason} and {where} at revision {request.revision!r} is not in the cache "
            f"{_cache_location(request.cache_dir)}; connect once (unset HF_HUB_OFFLINE) to download it, "
            f"pass --cache-dir where it was cached, or {manual}"
        )
    gated = getattr(errors, "GatedRepoError", None)
    if gated is not None and isinstance(err, gated):
        return HubError(
            f"{request.label}: {request.repo_id} is gated: accept its conditions on the hub and log in "
            "(huggingface-cli login, or HF_TOKEN)"
        )
    if isinstance(err, errors.RevisionNotFoundError):
        return HubError(f"{request.label}: revision {request.revision!r} does not exist in {request.repo_id}")
    if isinstance(err, errors.EntryNotFoundError | errors.RepositoryNotFoundError):
        missing = "file" if isinstance(err, errors.EntryNotFoundError) else "repository (or it is private)"
        if request.variant is not None:
            return HubError(
                f"{request.variant}: announced as coming soon; not published at revision {request.revision!r} "
                f"of {request.repo_id} ({where}: no such {missing}). Try a later --revision once the model card "
                f"shows it released, or {manual}"
            )
        return HubError(
            f"{request.label}: not published at revision {request.revision!r}: no such {missing} ({where})"
        )
    raise err


def _fetch(
    hub: ModuleType, errors: ModuleType, request: _Request, name: str, *, required: bool
) -> Path | None:
    try:
        return Path(_download(hub, request, name))
    except errors.LocalEntryNotFoundError as err:
        if not required and _known_absent(hub, request, name):
            return None
        raise _explain(errors, err, request, name) from None
    except (errors.EntryNotFoundError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as err:
        if not required and isinstance(err, errors.EntryNotFoundError):
            return None
        raise _explain(errors, err, request, name) from None


def _known_absent(hub: ModuleType, request: _Request, name: str) -> bool:
    """Whether the cache remembers that ``name`` does not exist (the hub's "no-exist" marker), so offline runs
    do not need a sidecar that was never published."""
    found = hub.try_to_load_from_cache(
        request.repo_id, request.folder + name, cache_dir=request.cache_dir, revision=request.revision
    )
    return found is not None and not isinstance(found, str | os.PathLike)


def _commit_of(path: Path) -> str | None:
    """The snapshot folder of a cached file is its commit hash (``.../snapshots/<commit>/<file>``)."""
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            return parts[index + 1]
    return None


def _resolve_hub(request: _Request) -> ResolvedCheckpoint:
    hub, errors = _import_hub()
    weights = _fetch(hub, errors, request, request.filename, required=True)
    assert weights is not None
    config, ranges = (_fetch(hub, errors, request, name, required=False) for name in SIDECARS)
    if config is None:
        log.info("%s has no config.json: the config embedded in the checkpoint is used", request.label)
    return ResolvedCheckpoint(
        checkpoint=weights,
        config_path=config,
        condition_ranges_path=ranges,
        reference=request.label,
        provenance={
            "hub_repo": request.repo_id,
            "hub_file": request.folder + request.filename,
            "hub_revision": request.revision,
            "hub_commit": _commit_of(weights),
        },
    )


def _local_folder(folder: Path) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        names = [p.name for p in found]
        raise CheckpointError(
            f"checkpoint folder {folder}: expected exactly one .pth/.pt file, found {names or 'none'}; "
            "pass the file itself"
        )
    return found[0]


def resolve_reference(
    reference: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ResolvedCheckpoint:
    """Turn a checkpoint reference into local files (see the module docstring for the forms and their order).

    Args:
        reference: ``demo``, a file, a folder, ``hf://owner/repo[@rev]/path.pth`` or a name in :data:`VARIANTS`.
        revision: hub branch, tag or commit (default: the ``@rev`` of the URL, else :data:`DEFAULT_REVISION`).
        cache_dir: Hugging Face cache folder (default: ``HF_HUB_CACHE``, else ``HF_HOME/hub``).

    Raises:
        HubError: not published, offline and not cached, or ``huggingface_hub`` missing.
        CheckpointError: a folder without exactly one checkpoint file.
        FileNotFoundError: none of the forms matches.

    Example:
        >>> ref = resolve_reference("rfm-91-base", revision="main")  # doctest: +SKIP
        >>> load_bundle(ref.checkpoint, config_path=ref.config_path,
        ...             condition_ranges_path=ref.condition_ranges_path)  # doctest: +SKIP
    """
    text = str(reference)
    if text == "demo":
        from flowlet.assets import demo_checkpoint_path

        return ResolvedCheckpoint(demo_checkpoint_path(), reference=text)
    path = Path(text)
    if path.is_file():
        return ResolvedCheckpoint(path, reference=text)
    if path.is_dir():
        return ResolvedCheckpoint(_local_folder(path), reference=text)
    cache = None if cache_dir is None else str(cache_dir)
    if text.startswith("hf://"):
        repo_id, filename, url_revision = parse_hf_url(text)
        folder, _, name = filename.rpartition("/")
        rev = revision or url_revision or "main"
        return _resolve_hub(_Request(repo_id, folder + "/" if folder else "", name, rev, cache, None))
    if text in VARIANTS:
        request = _Request(HUB_REPO, f"{text}/", VARIANTS[text], revision or DEFAULT_REVISION, cache, text)
        return _resolve_hub(request)
    raise FileNotFoundError(
        f"checkpoint {text}: file not found (expected a file, a folder, 'demo', a released variant "
        f"{sorted(VARIANTS)} or hf://owner/repo/path/to/file.pth)"
    )
