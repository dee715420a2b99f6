"""Brain-age checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only=True``.

A model checkpoint (``best.pt``) holds everything needed to predict on a new cohort without the training data:

``{"format", "model_name", "model_kwargs", "state_dict", "config", "norm", "split", "epoch", "val_mae",
"bias_correction", "image_shape"}``

A resume checkpoint (``last.pt``) adds ``optimizer``, ``scheduler``, ``rng``, ``best_val_mae``, ``best_epoch``,
``bad_epochs`` and ``history``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bap.models import build_model
from flowlet.data.io import atomic_path

__all__ = [
    "FORMAT",
    "build_from_checkpoint",
    "check_model_fields",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "bap-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` a plain dict atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no unpickling of arbitrary objects).

    Raises:
        ValueError: naming the file when it is missing, unreadable or not a brain-age checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a brain-age checkpoint (expected format '{FORMAT}')")
    check_model_fields(payload, path)
    return payload


#: Fields a model checkpoint must hold, and what each must be.
MODEL_FIELDS: dict[str, type] = {"model_name": str, "model_kwargs": dict, "state_dict": dict, "norm": dict}
#: Keys of ``model_kwargs`` that :func:`build_from_checkpoint` passes on.
MODEL_KWARGS = ("age_mean", "age_std", "age_range", "options")


def check_model_fields(payload: dict[str, Any], source: str | Path) -> None:
    """Refuse a checkpoint that lacks a field :func:`build_from_checkpoint` or prediction needs.

    Raises:
        ValueError: naming the file and every missing or mistyped field.
    """
    problems = [
        f"'{key}' is missing" if key not in payload else f"'{key}' must be a {kind.__name__}"
        for key, kind in MODEL_FIELDS.items()
        if not isinstance(payload.get(key), kind)
    ]
    kwargs = payload.get("model_kwargs")
    if isinstance(kwargs, dict):
        problems += [f"'model_kwargs.{k}' is missing" for k in MODEL_KWARGS if k not in kwargs]
    state = payload.get("state_dict")
    if isinstance(state, dict):
        bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            problems.append(f"'state_dict' entries {bad[:5]} are not tensors")
    if problems:
        raise ValueError(f"{source}: not a usable brain-age checkpoint: {'; '.join(problems)}")


def build_from_checkpoint(payload: dict[str, Any], *, source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (eval mode, CPU).

    Raises:
        ValueError: naming ``source`` and the missing, unexpected or mis-shaped weights (or the bad options).
    """
    check_model_fields(payload, source)
    kwargs = payload["model_kwargs"]
    try:
        model = build_model(
            payload["model_name"],
            age_mean=kwargs["age_mean"],
            age_std=kwargs["age_std"],
            age_range=kwargs["age_range"],
            options=kwargs["options"],
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{source}: cannot rebuild model '{payload['model_name']}' from 'model_kwargs' ({exc})"
        ) from exc
    problems = _state_problems(model.state_dict(), payload["state_dict"])
    if problems:
        raise ValueError(
            f"{source}: the weights do not fit model '{payload['model_name']}': {'; '.join(problems)}"
        )
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def _state_problems(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> list[str]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            problems.append(f"{len(items)} {label}, e.g. {items[:3]}")
    return problems


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors and plain numbers."""
    # The legacy global NumPy generator is saved too, in case a transform or library draws from it.
    kind, keys_, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys_, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": [int(version), torch.tensor(py_state, dtype=torch.int64), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys_, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys_.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in py_state.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
