"""Packaged YAML configurations (``configs/<family>/<name>.yaml``), readable after a regular install."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_path(family: str, name: str) -> Path:
    """Return the path of a packaged config, e.g. ``config_path("study", "demo")``.

    Raises:
        FileNotFoundError: naming the families and configs that exist.
    """
    root = Path(str(files(__package__)))
    path = root / family / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.yaml"))
        raise FileNotFoundError(f"no packaged config '{family}/{name}'; available: {available}")
    return path
