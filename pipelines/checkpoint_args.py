"""The checkpoint flags of the generating commands, and the bundle they name.

``flowlet-generate`` keeps the official scripts' spelling (``--checkpoint_path``, ``--config_path``, ...);
``flowlet-augment`` spells its flags with dashes. Both accept the same references (a file or folder, ``demo``, a
released variant, ``hf://...``) and load them the same way, with the hub's provenance in the bundle.
"""

from __future__ import annotations

import argparse
from typing import Any

#: The provenance fields of a hub reference (``flowlet.hub.ResolvedCheckpoint.provenance``).
HUB_FIELDS = ("hub_repo", "hub_file", "hub_revision", "hub_commit")

_REFERENCE_HELP = (
    "toolkit checkpoint or official slim .pth (or its folder), 'demo' (the shipped 4 mm demo model), a released "
    "variant (rfm-91-base, rfm-91-large, rfm-182-base, rfm-182-large) or hf://owner/repo/path.pth"
)


def add_checkpoint_arguments(p: argparse.ArgumentParser, *, official_spelling: bool) -> None:
    """The checkpoint reference, hub revision and cache, and the official sidecar files.

    Args:
        p: the parser.
        official_spelling: ``--checkpoint_path``, ``--config_path``, ``--condition_ranges_path`` (and both
            ``--cache-dir`` and ``--cache_dir``), as the official ``generate.py``; else ``--checkpoint``,
            ``--config-path``, ``--condition-ranges-path`` and ``--cache-dir``.
    """
    sep = "_" if official_spelling else "-"
    p.add_argument(
        "--checkpoint_path" if official_spelling else "--checkpoint", required=True, help=_REFERENCE_HELP
    )
    p.add_argument("--revision", help="hub branch, tag or commit of a released variant / hf:// checkpoint")
    p.add_argument(
        *(("--cache-dir", "--cache_dir") if official_spelling else ("--cache-dir",)),
        help="Hugging Face cache folder (default: HF_HUB_CACHE, else HF_HOME/hub)",
    )
    p.add_argument(f"--config{sep}path", help="official config.json (default: next to the checkpoint)")
    p.add_argument(
        f"--condition{sep}ranges{sep}path",
        help="official condition_ranges.json (default: next to the checkpoint)",
    )


def load_checkpoint(
    reference: str,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    config_path: str | None = None,
    condition_ranges_path: str | None = None,
):
    """Resolve ``reference`` to local files and load its :class:`~flowlet.checkpoint.Bundle`.

    The bundle's ``provenance`` holds the file and its sha256 and, for a hub reference, :data:`HUB_FIELDS`.
    Sidecar paths given here win over those fetched with hub weights.
    """
    from flowlet.checkpoint import load_bundle
    from flowlet.hub import resolve_reference

    ref = resolve_reference(reference, revision=revision, cache_dir=cache_dir)
    bundle = load_bundle(
        ref.checkpoint,
        config_path=config_path or ref.config_path,
        condition_ranges_path=condition_ranges_path or ref.condition_ranges_path,
    )
    bundle.provenance |= ref.provenance
    return bundle


def hub_provenance(bundle) -> dict[str, Any]:
    """The hub fields of ``bundle.provenance`` (empty for a local file)."""
    return {k: bundle.provenance[k] for k in HUB_FIELDS if k in bundle.provenance}
