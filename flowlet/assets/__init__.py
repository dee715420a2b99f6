"""Files shipped with the toolkit: the trained 4 mm demo checkpoint (see docs/demo-checkpoint.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEMO_CHECKPOINT = "demo-4mm.pt"


def demo_checkpoint_path() -> Path:
    """Path of the packaged demo checkpoint.

    Raises:
        FileNotFoundError: if the installation lacks it (e.g. a source tree without the asset).
    """
    path = Path(str(files(__package__))) / DEMO_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"the demo checkpoint {path} is missing from this installation")
    return path
