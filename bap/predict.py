"""Predict brain age for any cohort with a saved checkpoint (its own normalisation and bias correction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bap.checkpoint import build_from_checkpoint
from bap.data import apply_normalisation, load_arrays
from bap.metrics import BiasCorrection
from bap.train import predict_images
from flowlet.data import keys

__all__ = ["predict_cohort"]


def _training_split(subjects: pd.Series, split_info: dict[str, Any]) -> np.ndarray:
    where = {sid: name for name in ("train", "val", "test") for sid in split_info.get(name, [])}
    return np.array([where.get(str(s), "external") for s in subjects], dtype=object)


def predict_cohort(
    payload: dict[str, Any],
    table: pd.DataFrame,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Predict ages for every scan of a cohort table.

    Args:
        payload: a checkpoint from :func:`bap.checkpoint.load_checkpoint`.
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
    expected = tuple(payload.get("image_shape") or images.shape[1:])
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"cohort images have shape {tuple(images.shape[1:])}; the model was trained on {expected}"
        )
    model = build_from_checkpoint(payload).to(device)
    pred = predict_images(
        model, apply_normalisation(images, payload["norm"]), batch_size=batch_size, device=device
    )
    correction = payload.get("bias_correction")
    out = table[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]].copy().reset_index(drop=True)
    out["pred"] = pred
    out["pred_corrected"] = BiasCorrection(**correction).apply(pred) if correction else pred
    out[keys.SPLIT] = _training_split(out[keys.SUBJECT_ID], payload.get("split", {}))
    return out
