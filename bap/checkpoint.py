"""Brain-age checkpoints: plain dicts of tensors and numbers, written atomically, read with ``weights_only=True``.

A model checkpoint (``best.pt``) holds everything needed to predict on a new cohort without the training data:

``{"format", "model_name", "model_kwargs", "state_dict", "config", "norm", "split", "epoch", "val_mae",
"bias_correction", "image_shape"}``

A resume checkpoint (``last.pt``) adds ``optimizer``, ``scheduler``, ``rng``, ``best_val_mae``, ``best_epoch``,
``bad_epochs`` and ``history``.

:func:`load_checkpoint` checks the fields once, when the file is read; :func:`build_from_checkpoint` builds the
network of a payload read that way, and :func:`load_model` does both and keeps the network with its payload.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bap.models import HEADS, build_model
from bap.sfcn import convert_peng_state_dict
from flowlet.data.io import atomic_path
from flowlet.data.state_dict import state_mismatch

__all__ = [
    "FORMAT",
    "BrainAgeModel",
    "build_from_checkpoint",
    "build_network",
    "check_model_fields",
    "get_rng_state",
    "load_checkpoint",
    "load_init_weights",
    "load_model",
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


def _torch_load(path: Path, what: str, *, missing: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a missing or unreadable file is a ValueError naming it."""
    if not path.is_file():
        raise ValueError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no unpickling of arbitrary objects).

    Raises:
        ValueError: naming the file when it is missing, unreadable or not a brain-age checkpoint.
    """
    path = Path(path)
    payload = _torch_load(path, "checkpoint", missing="checkpoint not found")
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


def build_network(model_name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """The freshly initialised network that a run's (or a checkpoint's) ``model_name`` and ``model_kwargs`` name."""
    return build_model(
        model_name,
        age_mean=model_kwargs["age_mean"],
        age_std=model_kwargs["age_std"],
        age_range=model_kwargs["age_range"],
        options=model_kwargs["options"],
    )


def build_from_checkpoint(payload: dict[str, Any], *, source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (eval mode, CPU).

    Args:
        payload: a checkpoint from :func:`load_checkpoint`, whose fields that function has checked.
        source: the file, for messages.

    Raises:
        ValueError: naming ``source`` and the missing, unexpected or mis-shaped weights (or the bad options).
    """
    kwargs = payload["model_kwargs"]
    try:
        model = build_network(payload["model_name"], kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{source}: cannot rebuild model '{payload['model_name']}' from 'model_kwargs' ({exc})"
        ) from exc
    mismatch = state_mismatch(model.state_dict(), payload["state_dict"])
    if not mismatch.fits:
        raise ValueError(
            f"{source}: the weights do not fit model '{payload['model_name']}': {'; '.join(mismatch.lines(3))}"
        )
    model.load_state_dict(payload["state_dict"])
    return model.eval()


@dataclass(frozen=True)
class BrainAgeModel:
    """A checkpoint's network, built once, with what prediction needs besides it.

    Attributes:
        model: the network (eval mode).
        payload: the checkpoint (``norm``, ``bias_correction``, ``image_shape``, ``split`` ...).
        source: where it was read from, for messages.
    """

    model: nn.Module
    payload: dict[str, Any]
    source: str

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """The ``(X, Y, Z)`` grid the model was trained on (None in checkpoints that predate the field)."""
        shape = self.payload.get("image_shape")
        return tuple(int(s) for s in shape) if shape else None


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> BrainAgeModel:
    """Read a checkpoint, check its fields and build its network, each once.

    Raises:
        ValueError: naming the file (see :func:`load_checkpoint` and :func:`build_from_checkpoint`).
    """
    payload = load_checkpoint(path)
    model = build_from_checkpoint(payload, source=path).to(device)
    return BrainAgeModel(model=model, payload=payload, source=str(path))


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


#: Buffers that describe the training cohort (age mean/SD, SFCN bin centres), never taken from other weights.
_COHORT_BUFFERS = ("age_mean", "age_std", "bin_centers")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    missing = "initial weights not found (download the file first; nothing is fetched)"
    payload = _torch_load(path, "initial weights", missing=missing)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # a bap-train checkpoint or a training-script dict
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return convert_peng_state_dict(payload)


def load_init_weights(
    model: nn.Module, path: str | Path, *, model_name: str, skip_head_mismatch: bool = False
) -> dict[str, list[str]]:
    """Start ``model`` from pretrained weights, checking every key and shape first.

    Reads a ``bap-train`` checkpoint, a plain state dict, or the public SFCN weights of Peng et al. 2021
    (``module.``-prefixed keys of ``nn.DataParallel``, their layer names; see :func:`bap.sfcn.convert_peng_state_dict`)
    with ``torch.load(weights_only=True)``. Cohort buffers (age mean and SD, SFCN bin centres) stay the model's own.

    Args:
        model: the freshly built model (its architecture and options must match the weights).
        path: the weights file.
        model_name: the registered model name (selects the output layer, :data:`bap.models.HEADS`).
        skip_head_mismatch: leave the output layer at its initialisation when its shapes differ (e.g. SFCN with
            other age bins than the UK Biobank model's 40); any other mismatch is still an error.

    Returns:
        ``{"loaded": [...], "skipped_head": [...]}`` key lists.

    Raises:
        ValueError: naming the file and the first missing, unexpected or wrongly shaped keys.
    """
    path = Path(path)
    weights = _read_weights(path)
    own = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in _COHORT_BUFFERS}
    weights = {k: v for k, v in weights.items() if k.rsplit(".", 1)[-1] not in _COHORT_BUFFERS}
    head = HEADS.get(model_name, "\0")
    mismatch = state_mismatch(own, weights, found_label="file")
    skipped = sorted(k for k, _, _ in mismatch.shapes if skip_head_mismatch and k.startswith(head))
    mismatch = mismatch.without_shapes(skipped)
    if not mismatch.fits:
        hint = (
            " (the output layer: pass --init-skip-head to re-initialise it)"
            if any(k.startswith(head) for k, _, _ in mismatch.shapes)
            else ""
        )
        raise ValueError(
            f"{path}: initial weights do not fit model '{model_name}': {'; '.join(mismatch.lines(3))}{hint}"
        )
    loaded = [k for k in own if k not in skipped]
    model.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    return {"loaded": loaded, "skipped_head": skipped}
