"""One epoch of brain-age training, one validation pass and the model-selection rule, as separate functions.

:func:`train_epoch` runs the optimiser over a loader once; :func:`validate` gives the validation MAE of the current
weights; :func:`end_epoch` turns the two into the epoch's ``metrics.csv`` row, steps the learning-rate schedule and
updates the :class:`~bap.runstate.RunState`. :func:`bap.train.train` strings them together and writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bap import metrics
from bap.objective import step_scheduler
from bap.predict import predict_images
from bap.runstate import RunState, selection_score
from flowlet.data.runtime import autocast_context

__all__ = ["EpochStats", "end_epoch", "train_epoch", "validate"]


@dataclass(frozen=True)
class EpochStats:
    """What one pass over the training loader measured.

    Attributes:
        train_loss: mean batch loss.
        train_mae: mean absolute error (years) of the training predictions, augmentation and all.
        lr: the learning rate the epoch ran with.
    """

    train_loss: float
    train_mae: float
    lr: float


def train_epoch(
    objective: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    bf16: bool = False,
    desc: str = "",
    progress: bool = False,
) -> EpochStats:
    """One optimiser step per batch of ``loader`` (``(x, age)`` or ``(x, age, weight)``), in training mode.

    Args:
        objective: :class:`~bap.objective.AgeObjective` (or its DDP wrapper): ``(x, age, weight) -> (loss, pred)``.
        loader: the epoch's batches (its sampler already set to the epoch).
        optimizer: steps after every batch.
        device: where the batches go.
        bf16: bf16 autocast of the forward pass on CUDA.
        desc, progress: the progress bar's label, and whether to show it.
    """
    objective.train()
    losses, errors = [], []
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        x, age = batch[0].to(device), batch[1].to(device)
        weight = batch[2].to(device) if len(batch) > 2 else None
        with autocast_context(device, bf16):
            loss, pred = objective(x, age, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        errors.append(torch.abs(pred.detach().float() - age).cpu())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return EpochStats(
        train_loss=float(np.mean(losses)),
        train_mae=float(torch.cat(errors).mean()),
        lr=optimizer.param_groups[0]["lr"],
    )


def validate(
    model: nn.Module,
    images: np.ndarray,
    ages: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> float:
    """Validation MAE (years) of ``model`` on normalised ``images`` ``(N, X, Y, Z)`` with true ``ages`` ``(N,)``.

    With no validation images it returns NaN: there is nothing to measure, and no other number stands in for it
    (:func:`bap.train.train` refuses such a run unless ``allow_no_validation`` is set).
    """
    if len(images) == 0:
        return math.nan
    pred = predict_images(model, images, batch_size=batch_size, device=device, bf16=bf16)
    return metrics.mae(ages, pred)


def end_epoch(
    state: RunState,
    epoch: int,
    stats: EpochStats,
    val_mae: float,
    *,
    scheduler: Any,
    select_on_val: bool,
    val_smoothing: int,
    min_delta: float,
    seconds: float,
) -> tuple[dict[str, Any], bool]:
    """Close epoch ``epoch`` (0-based): step the schedule, decide whether the model improved, update ``state``.

    The selection score is the median validation MAE of the last ``val_smoothing`` epochs; an epoch improves on
    the best only by more than ``min_delta``. Without ``select_on_val`` every epoch counts as improved, so the
    last one is kept.

    Returns:
        The epoch's ``metrics.csv`` row, and whether it became the best epoch.
    """
    row = {
        "epoch": epoch + 1,
        "train_loss": stats.train_loss,
        "train_mae": stats.train_mae,
        "val_mae": val_mae,
        "lr": stats.lr,
        "seconds": seconds,
    }
    score = selection_score([*state.val_maes(), val_mae], val_smoothing)
    step_scheduler(scheduler, score)
    improved = not select_on_val or score < state.best_score - max(min_delta, 1e-9)
    state.record(row, score=score, improved=improved)
    return row, improved
