"""Brain-age predictions with a trained model: for in-memory volumes and for any cohort on disk.

The model's own intensity normalisation and bias correction travel in its checkpoint, so a prediction needs only
the checkpoint and the images.

Example:
    >>> from bap.checkpoint import load_model
    >>> bap_model = load_model("runs/bap-demo/best.pt")  # doctest: +SKIP
    >>> predict_arrays(bap_model, volumes).corrected  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bap.checkpoint import BrainAgeModel
from bap.data import apply_normalisation, load_arrays
from bap.metrics import BiasCorrection
from flowlet.data import keys
from flowlet.data.runtime import autocast_context

__all__ = ["AgePredictions", "predict_arrays", "predict_cohort", "predict_images"]


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> np.ndarray:
    """Predict ages for normalised images ``(N, X, Y, Z)`` -> ``(N,)`` float64 years (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])[:, None]).to(device)
        with autocast_context(device, bf16):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@dataclass(frozen=True)
class AgePredictions:
    """Predicted ages ``(N,)`` in years: as the network gives them and after the checkpoint's bias correction
    (the same values when the run decided against correcting)."""

    pred: np.ndarray
    corrected: np.ndarray


def predict_arrays(
    bap_model: BrainAgeModel,
    volumes: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    what: str = "the images",
) -> AgePredictions:
    """Predict ages for raw (un-normalised) volumes ``(N, X, Y, Z)`` on the model's grid.

    Args:
        bap_model: from :func:`bap.checkpoint.load_model`; its network must already be on ``device``.
        volumes: the images, as read from disk or generated.
        batch_size: images per forward pass.
        device: where the network runs.
        what: how error messages name the volumes.

    Raises:
        ValueError: the volumes' grid differs from the one the model was trained on.
    """
    expected = bap_model.image_shape
    if expected and tuple(volumes.shape[1:]) != expected:
        raise ValueError(
            f"{what} have shape {tuple(volumes.shape[1:])}; the model {bap_model.source} was trained on "
            f"images of shape {expected}"
        )
    payload = bap_model.payload
    pred = predict_images(
        bap_model.model, apply_normalisation(volumes, payload["norm"]), batch_size=batch_size, device=device
    )
    correction = payload.get("bias_correction")
    return AgePredictions(pred, BiasCorrection(**correction).apply(pred) if correction else pred)


def _training_split(subjects: pd.Series, split_info: dict[str, Any]) -> np.ndarray:
    where = {sid: name for name in ("train", "val", "test") for sid in split_info.get(name, [])}
    return np.array([where.get(str(s), "external") for s in subjects], dtype=object)


def predict_cohort(
    bap_model: BrainAgeModel,
    table: pd.DataFrame,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Predict ages for every scan of a cohort table.

    Args:
        bap_model: from :func:`bap.checkpoint.load_model`, on ``device``.
        table: cohort table (:data:`keys.COHORT_COLUMNS`).
        batch_size: images per forward pass.
        device: torch device.
        cache_dir: optional ``.npy`` cache folder.

    Returns:
        ``subject_id, session_id, age, pred, pred_corrected, split`` where ``split`` is the subject's split during
        training (``train``/``val``/``test``) or ``external``, so that accidental overlap is visible.

    Raises:
        ValueError: the cohort's image grid differs from the one the model was trained on.
    """
    images = load_arrays(table[keys.PATH].astype(str).tolist(), cache_dir=cache_dir)
    ages = predict_arrays(bap_model, images, batch_size=batch_size, device=device, what="cohort images")
    out = table[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]].copy().reset_index(drop=True)
    out["pred"] = ages.pred
    out["pred_corrected"] = ages.corrected
    out[keys.SPLIT] = _training_split(out[keys.SUBJECT_ID], bap_model.payload.get("split", {}))
    return out
