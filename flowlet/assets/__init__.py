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


def resolve_checkpoint(name: str | Path) -> Path:
    """``"demo"`` → the packaged demo checkpoint; anything else is a path that must exist.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    if str(name) == "demo":
        return demo_checkpoint_path()
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {name}: file not found")
    return path
