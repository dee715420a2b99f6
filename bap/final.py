"""The end of a brain-age run: the selected model's predictions on every scan, the bias-correction decision, and
``predictions.csv``, ``test_metrics.csv`` and ``summary.json``.

Bias correction is fitted on the real validation scans and used only when :func:`bap.metrics.decide_bias_correction`
trusts it; the summary says which, and every split reports the MAE with and without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bap import metrics
from bap.checkpoint import load_model, save_checkpoint
from bap.config import BapConfig
from bap.data import SOURCE, PreparedData
from bap.predict import predict_images
from bap.runstate import RunState
from flowlet.data import keys
from flowlet.data.io import write_json_atomic, write_table_atomic

logger = logging.getLogger(__name__)

__all__ = ["final_predictions", "finish_run", "run_summary"]


def final_predictions(
    model: torch.nn.Module,
    data: PreparedData,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> tuple[pd.DataFrame, metrics.BiasDecision | None]:
    """The model's prediction for every scan of ``data``, with the bias-correction decision of its real
    validation scans (None with fewer than two).

    Returns:
        ``subject_id, session_id, age, pred, pred_corrected, split, source`` (one row per scan, ``data.table``
        order), and the decision.
    """
    table = data.table
    pred = predict_images(model, data.images, batch_size=batch_size, device=device, bf16=bf16)
    frame = table[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]].copy()
    frame["pred"] = pred
    val = (table[keys.SPLIT] == "val").to_numpy() & (table[SOURCE] == "real").to_numpy()
    decision = _bias_decision(frame[keys.AGE].to_numpy(float)[val], pred[val])
    correction = decision.correction if decision else None
    frame["pred_corrected"] = correction.apply(pred) if correction else pred
    frame[keys.SPLIT] = table[keys.SPLIT].to_numpy()
    frame[SOURCE] = table[SOURCE].to_numpy()
    return frame, decision


def run_summary(
    state: RunState, frame: pd.DataFrame, decision: metrics.BiasDecision | None, *, selected_on_val: bool
) -> dict[str, Any]:
    """``summary.json``: the selected epoch, how it was selected, the bias correction and metrics per split."""
    correction = decision.correction if decision else None
    summary = {
        "best_epoch": state.best_epoch,
        "best_val_mae": state.best_val_mae
        if math.isfinite(state.best_val_mae)
        else None,  # null: no validation
        "epochs_run": state.epoch,
        "selection": "smoothed validation MAE" if selected_on_val else "last epoch",
        "bias_correction": correction.to_dict() if correction else None,
        "bias_correction_check": decision.to_dict() if decision else None,
        "splits": _split_metrics(frame, decision.fitted if decision else None),
    }
    _warn_if_correction_hurts(summary)
    return summary


def finish_run(
    cfg: BapConfig,
    data: PreparedData,
    run_dir: Path,
    state: RunState,
    device: torch.device,
    *,
    selected_on_val: bool = True,
    write: bool = True,
    extend_summary: Callable[[pd.DataFrame, dict[str, Any]], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict every scan with ``run_dir/best.pt`` and, when ``write`` (rank 0), store the bias correction in it and
    write ``predictions.csv``, ``test_metrics.csv`` and ``summary.json``.

    ``extend_summary(predictions, summary)`` runs with ``write``, before ``summary.json`` is written (once): it may
    add entries to the summary and write its own files into ``run_dir``.

    Returns:
        The predictions table and the summary.
    """
    best = load_model(run_dir / "best.pt", device=device)
    frame, decision = final_predictions(
        best.model, data, batch_size=cfg.train.eval_batch_size, device=device, bf16=cfg.train.bf16
    )
    summary = run_summary(state, frame, decision, selected_on_val=selected_on_val)
    if write:
        save_checkpoint(run_dir / "best.pt", {**best.payload, "bias_correction": summary["bias_correction"]})
        write_table_atomic(run_dir / "predictions.csv", frame)
        _write_test_metrics(cfg, frame, run_dir)
        if extend_summary is not None:
            extend_summary(frame, summary)
        write_json_atomic(run_dir / "summary.json", summary)
    return frame, summary


def _write_test_metrics(cfg: BapConfig, frame: pd.DataFrame, run_dir: Path) -> None:
    test = frame[(frame[keys.SPLIT] == "test")]
    if len(test):
        table_bins = metrics.per_bin_table(
            test[keys.AGE],
            np.abs(test["pred"] - test[keys.AGE]),
            gap=test["pred"] - test[keys.AGE],
            groups=test[keys.SUBJECT_ID].to_numpy(),
            bin_width=cfg.eval.bin_width,
            n_boot=cfg.eval.n_boot,
            seed=cfg.eval.seed,
        )
        write_table_atomic(run_dir / "test_metrics.csv", table_bins)


def _bias_decision(age: np.ndarray, pred: np.ndarray) -> metrics.BiasDecision | None:
    if age.size < 2:
        return None
    decision = metrics.decide_bias_correction(age, pred)
    if decision.correction is None:
        logger.warning("bias correction not used: %s", decision.reason)
    else:
        logger.info(
            "bias correction used: slope %.3f, intercept %.2f (%d validation subjects)",
            decision.correction.slope,
            decision.correction.intercept,
            decision.n,
        )
    return decision


def _warn_if_correction_hurts(summary: dict[str, Any]) -> None:
    test = summary["splits"].get("test")
    if summary["bias_correction"] and test and test["mae_corrected"] > test["mae"]:
        logger.warning(
            "bias correction raised the test MAE from %.2f to %.2f; both are in summary.json",
            test["mae"],
            test["mae_corrected"],
        )


def _split_metrics(frame: pd.DataFrame, fitted: metrics.BiasCorrection | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    real = frame[frame[SOURCE] == "real"]
    for split, rows in real.groupby(keys.SPLIT):
        if len(rows) < 2:
            continue
        out[str(split)] = metrics.regression_summary(rows[keys.AGE], rows["pred"])
        corrected = metrics.regression_summary(rows[keys.AGE], rows["pred_corrected"])
        out[str(split)].update({f"{k}_corrected": v for k, v in corrected.items() if k != "n"})
        if fitted is not None and fitted.slope > 0:
            # What the fitted correction would give, used or not: the cost of the decision is visible.
            out[str(split)]["mae_if_corrected"] = metrics.mae(rows[keys.AGE], fitted.apply(rows["pred"]))
    return out
