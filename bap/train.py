"""Brain-age training: early stopping on the real validation MAE, exact resume, DDP, bf16 on CUDA.

Model selection and early stopping use the median validation MAE of the last ``train.val_smoothing`` epochs and
count only drops larger than ``train.min_delta``; with fewer than ``train.min_val_subjects`` real validation
subjects the validation MAE is too noisy to choose with, so the run logs a warning, trains every epoch and keeps
the last. Bias correction is fitted on the validation set and used only when :func:`bap.metrics.decide_bias_correction`
trusts it; ``summary.json`` says which, and every split reports the MAE with and without it.

**No validation split.** A run whose split has no real validation scans (``data.split_fractions`` with a zero
validation share, or a ``data.split_column`` without ``val`` rows) is refused with an error naming those fields:
nothing else may stand in for the validation MAE (the training loss measures augmented training scans, not
generalisation). :func:`train` with ``allow_no_validation=True`` is the explicit mode for such a run: every epoch is
kept in turn and the last one is the model, ``val_mae`` is NaN in ``metrics.csv`` (``best_val_mae`` null in
``summary.json``), no bias correction is fitted, and the ``plateau`` schedule, which steps on the validation MAE,
is refused.

The pieces are separate and tested alone: :func:`bap.run_setup.setup_training` builds model, optimiser, schedule and loader
(:mod:`bap.objective`, :mod:`bap.samplers`); :func:`bap.loop.train_epoch`, :func:`bap.loop.validate` and
:func:`bap.loop.end_epoch` run and close an epoch on a typed :class:`bap.runstate.RunState`;
:func:`bap.runstate.model_payload` and :func:`bap.runstate.resume_payload` build the checkpoints;
:func:`bap.final.finish_run` predicts with the selected model and writes the results.

Run folder layout (only rank 0 writes)::

    config.yaml        resolved configuration
    metrics.csv        one row per epoch (train loss/MAE, validation MAE, learning rate, seconds)
    best.pt            best-validation model (+ normalisation, split, bias correction)
    last.pt            resume state (weights, optimiser, scheduler, epoch, RNG states, history)
    predictions.csv    subject_id, session_id, age, pred, pred_corrected, split, source
    summary.json       metrics per split, bias correction, best epoch

Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the environment (NCCL on CUDA, gloo
on CPU) and a ``DistributedSampler`` shards the training set; every rank evaluates the full validation set, so
early-stopping decisions agree without communication.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.distributed as dist
import yaml

from bap.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from bap.config import BapConfig, config_to_dict
from bap.data import PreparedData
from bap.final import finish_run
from bap.loop import end_epoch, train_epoch, validate
from bap.objective import AgeObjective
from bap.predict import predict_images
from bap.run_setup import TrainingSetup, setup_training
from bap.runstate import RunState, model_payload, resume_payload, selection_score
from bap.samplers import EpochSubsetSampler, WeightedEpochSampler
from flowlet.data.io import write_table_atomic, write_text_atomic
from flowlet.data.runtime import init_distributed, seed_everything

logger = logging.getLogger(__name__)

# AgeObjective, the samplers, predict_images, seed_everything and selection_score live in the modules above and are
# re-exported here, where callers have always found them.
__all__ = [
    "AgeObjective",
    "EpochSubsetSampler",
    "TrainResult",
    "TrainingSetup",
    "WeightedEpochSampler",
    "predict_images",
    "seed_everything",
    "selection_score",
    "setup_training",
    "train",
]


@dataclass(frozen=True)
class TrainResult:
    """What a finished run returns (all of it is also on disk in ``run_dir``)."""

    run_dir: Path
    best_epoch: int
    best_val_mae: float
    predictions: pd.DataFrame
    summary: dict[str, Any]


def _resume(setup: TrainingSetup, path: Path) -> RunState:
    saved = load_checkpoint(path)
    setup.model.load_state_dict(saved["state_dict"])
    setup.optimizer.load_state_dict(saved["optimizer"])
    setup.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    state = RunState.from_dict(saved)
    logger.info("resumed %s at epoch %d", path, state.epoch)
    return state


def _save_epoch(
    cfg: BapConfig, setup: TrainingSetup, state: RunState, run_dir: Path, *, improved: bool
) -> None:
    """Rank 0: ``best.pt`` when the epoch improved, ``epoch-XXXX.pt`` every ``train.save_every``, ``last.pt`` and
    ``metrics.csv`` always."""
    weights = {k: v.detach().cpu() for k, v in setup.model.state_dict().items()}
    epoch, val_mae = state.epoch, state.history[-1]["val_mae"]
    if improved:
        save_checkpoint(
            run_dir / "best.pt", model_payload(setup.metadata, weights, epoch=epoch, val_mae=val_mae)
        )
    if cfg.train.save_every and epoch % cfg.train.save_every == 0:
        save_checkpoint(
            run_dir / f"epoch-{epoch:04d}.pt",
            model_payload(setup.metadata, weights, epoch=epoch, val_mae=val_mae),
        )
    save_checkpoint(
        run_dir / "last.pt", resume_payload(setup.metadata, weights, state, setup.optimizer, setup.scheduler)
    )
    write_table_atomic(run_dir / "metrics.csv", pd.DataFrame(state.history))


def _run_epoch(cfg: BapConfig, setup: TrainingSetup, state: RunState, epoch: int, *, progress: bool) -> bool:
    """Train, validate and close epoch ``epoch`` (0-based); returns whether it became the best epoch."""
    start = time.perf_counter()
    setup.sampler.set_epoch(epoch)
    setup.dataset.set_epoch(epoch)
    device = setup.dist.device
    stats = train_epoch(
        setup.objective,
        setup.loader,
        setup.optimizer,
        device,
        bf16=cfg.train.bf16,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        progress=progress and setup.dist.is_main,
    )
    val_mae = validate(
        setup.model,
        setup.val_images,
        setup.val_ages,
        batch_size=cfg.train.eval_batch_size,
        device=device,
        bf16=cfg.train.bf16,
    )
    row, improved = end_epoch(
        state,
        epoch,
        stats,
        val_mae,
        scheduler=setup.scheduler,
        select_on_val=setup.select_on_val,
        val_smoothing=cfg.train.val_smoothing,
        min_delta=cfg.train.min_delta,
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "epoch %d: train loss %.4f, val MAE %.3f%s",
        epoch + 1,
        row["train_loss"],
        val_mae,
        " (best)" if improved else "",
    )
    return improved


def train(
    cfg: BapConfig,
    data: PreparedData,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    draw_weights: np.ndarray | None = None,
    loss_weights: np.ndarray | None = None,
    allow_no_validation: bool = False,
    extend_summary: Callable[[pd.DataFrame, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one brain-age model and evaluate it.

    Args:
        cfg: the configuration.
        data: splits, normalised images and normalisation statistics (:func:`bap.data.prepare_data`).
        run_dir: output folder (created).
        resume: continue from ``run_dir/last.pt`` if it exists (bit-for-bit on the same machine).
        progress: show a progress bar per epoch.
        stop_after_epochs: run at most this many epochs in this call (for time-limited jobs; continue later with
            ``resume=True``). The schedule still follows ``cfg.train.epochs``.
        draw_weights: one non-negative weight per training scan (in ``data.indices("train")`` order): each
            epoch draws as many scans as there are real training scans, with replacement, scan ``i`` with
            probability proportional to its weight (oversampling; see :class:`WeightedEpochSampler`).
        loss_weights: one weight per training scan multiplying its loss (re-weighting).
        allow_no_validation: train a split without real validation scans, keeping the last epoch (see the module
            docstring); without it such a split is an error.
        extend_summary: ``(predictions, summary)`` hook run on the main process before ``summary.json`` is written
            (see :func:`bap.final.finish_run`).

    Returns:
        :class:`TrainResult`; the predictions use the best-validation checkpoint.

    Raises:
        ValueError: no validation split (unless allowed), weights of the wrong length, unusable initial weights.
    """
    run_dir = Path(run_dir)
    run = init_distributed("auto")
    last_path = run_dir / "last.pt"
    resuming = resume and last_path.is_file()
    setup = setup_training(
        cfg,
        data,
        run,
        init=not resuming,
        allow_no_validation=allow_no_validation,
        draw_weights=draw_weights,
        loss_weights=loss_weights,
    )
    state = _resume(setup, last_path) if resuming else RunState()
    if run.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    end = (
        cfg.train.epochs
        if stop_after_epochs is None
        else min(cfg.train.epochs, state.epoch + stop_after_epochs)
    )
    for epoch in range(state.epoch, end):
        if setup.select_on_val and cfg.train.patience and state.bad_epochs >= cfg.train.patience:
            break
        improved = _run_epoch(cfg, setup, state, epoch, progress=progress)
        if run.is_main:
            _save_epoch(cfg, setup, state, run_dir, improved=improved)
    if run.world_size > 1:
        dist.barrier()
    frame, summary = finish_run(
        cfg,
        data,
        run_dir,
        state,
        run.device,
        selected_on_val=setup.select_on_val,
        write=run.is_main,
        extend_summary=extend_summary,
    )
    return TrainResult(run_dir, state.best_epoch, state.best_val_mae, frame, summary)
