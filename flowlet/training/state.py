"""Resumable training state: one ``torch.save`` file readable with ``weights_only=True``.

Everything stored is a tensor, a number, a string or a container of those, so resuming never unpickles code.
Random-number-generator states of Python, NumPy and torch (CPU and CUDA) are converted to tensors and lists.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlet.data.io import atomic_path

__all__ = ["STATE_FORMAT", "capture_rng", "load_train_state", "restore_rng", "save_train_state"]

STATE_FORMAT = "flowlet-train-state/1"


def capture_rng() -> dict[str, Any]:
    """Current RNG states of ``random``, NumPy and torch (CPU and every CUDA device)."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state is what we save)
    return {
        "python": {"version": version, "words": list(words), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["words"]), py["gauss"]))
    nps = state["numpy"]
    legacy = (nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"])
    np.random.set_state(legacy)  # noqa: NPY002 (restoring the global legacy state is the point)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the training state atomically (a reader never sees half a file)."""
    payload = {"format": STATE_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_train_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by :func:`save_train_state` (``weights_only=True``).

    Raises:
        ValueError: the file is not a FlowLet training state (names the file and what was found).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: cannot be read as a FlowLet training state (a torch.save file of tensors and plain "
            f"values; delete it to start afresh): {reason}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path}: not a FlowLet training state (format {found!r}; expected {STATE_FORMAT!r})"
        )
    return state
