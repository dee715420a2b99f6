"""The set-up of a brain-age run: checks, seeding, then model, objective, optimiser, schedule and training loader.

Everything a run's epochs use is built here, in the order that fixes the random streams (seed, then the network's
initialisation, then the data order), so a run and its resumed continuation are the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from bap.checkpoint import build_network, load_init_weights
from bap.config import BapConfig
from bap.data import SOURCE, AgeDataset, PreparedData
from bap.objective import AgeObjective, build_optimizer, build_scheduler, choose
from bap.runstate import run_metadata
from bap.samplers import EpochSubsetSampler, LossWeightedDataset, WeightedEpochSampler
from flowlet.data import keys
from flowlet.data.runtime import DistContext, seed_everything

logger = logging.getLogger(__name__)

__all__ = ["TrainingSetup", "setup_training"]


@dataclass(frozen=True)
class TrainingSetup:
    """Everything the epochs of a run use, built by :func:`setup_training`.

    Attributes:
        model: the network (on the run's device).
        objective: model + loss (:class:`~bap.objective.AgeObjective`, DDP-wrapped with several processes).
        optimizer, scheduler: from ``train.optimizer`` and ``train.schedule``.
        dataset: the training scans (with loss weights when given).
        sampler: which scans each epoch visits (``set_epoch`` before every epoch).
        loader: the training batches.
        metadata: what every checkpoint of the run shares (:func:`bap.runstate.run_metadata`).
        val_images, val_ages: the real validation scans ``(N, X, Y, Z)`` and their ages ``(N,)``.
        select_on_val: the validation MAE selects the model and stops early (else the last epoch is kept).
        dist: rank, world size and device of this process.
    """

    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataset: Any
    sampler: Any
    loader: DataLoader
    metadata: dict[str, Any]
    val_images: np.ndarray
    val_ages: np.ndarray
    select_on_val: bool
    dist: DistContext


def _check_validation(cfg: BapConfig, n_val_scans: int, allow_no_validation: bool) -> None:
    if n_val_scans:
        return
    where = (
        f"data.split_column {cfg.data.split_column!r} has no 'val' rows"
        if cfg.data.split_column
        else f"data.split_fractions = {list(cfg.data.split_fractions)} gives validation no subjects"
    )
    if not allow_no_validation:
        raise ValueError(
            f"no real validation scans: {where}. The validation MAE selects the model and fits the bias "
            "correction, and nothing stands in for it; give the split a validation share, or call "
            "bap.train.train(..., allow_no_validation=True) to keep the last epoch without validation"
        )
    if cfg.train.schedule == "plateau":
        raise ValueError(
            f"config train.schedule = 'plateau' steps on the validation MAE, but {where}; choose another schedule"
        )
    logger.warning("no validation split (%s): the last of %d epochs is kept", where, cfg.train.epochs)


def _check_weights(n_train: int, **weights: np.ndarray | None) -> None:
    for name, values in weights.items():
        if values is not None and np.shape(values) != (n_train,):
            raise ValueError(
                f"{name}: expected {n_train} values (one per training scan), got {np.shape(values)}"
            )


def _validation_can_select(cfg: BapConfig, n_val: int) -> bool:
    if n_val == 0:
        return False  # no validation split (allowed explicitly): the last epoch is kept
    if n_val >= cfg.train.min_val_subjects:
        return True
    logger.warning(
        "only %d real validation subjects (< train.min_val_subjects = %d): their MAE is too noisy to select a "
        "model, so early stopping is off and the last of %d epochs is kept",
        n_val,
        cfg.train.min_val_subjects,
        cfg.train.epochs,
    )
    return False


def _build_network(
    cfg: BapConfig, metadata: dict[str, Any], device: torch.device, *, init: bool
) -> nn.Module:
    model = build_network(cfg.model.name, metadata["model_kwargs"]).to(device)
    if init and cfg.train.init:
        loaded = load_init_weights(
            model, cfg.train.init, model_name=cfg.model.name, skip_head_mismatch=cfg.train.init_skip_head
        )
        logger.info(
            "initial weights from %s: %d tensors loaded, output layer re-initialised: %s",
            cfg.train.init,
            len(loaded["loaded"]),
            loaded["skipped_head"] or "no",
        )
    return model


def _epoch_sampler(
    cfg: BapConfig, dataset: Any, n_real: int, run: DistContext, draw_weights: np.ndarray | None
) -> Any:
    seed, rank, world = cfg.train.seed, run.rank, run.world_size
    if draw_weights is not None:  # oversampling: weighted draws replace the train.epoch_size rule
        return WeightedEpochSampler(draw_weights, n_real, seed=seed, rank=rank, world=world)
    samplers = {
        "all": lambda: DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=world > 1
        ),
        "real": lambda: EpochSubsetSampler(len(dataset), n_real, seed=seed, rank=rank, world=world),
    }
    return choose(samplers, cfg.train.epoch_size, "train.epoch_size")()


def _training_loader(
    cfg: BapConfig,
    data: PreparedData,
    run: DistContext,
    draw_weights: np.ndarray | None,
    loss_weights: np.ndarray | None,
) -> tuple[Any, Any, DataLoader]:
    train_idx = data.indices("train")
    ages = data.table[keys.AGE].to_numpy(np.float32)
    dataset: Any = AgeDataset(
        data.images[train_idx],
        ages[train_idx],
        augment=cfg.data.augment,
        shift=cfg.data.shift_voxels,
        seed=cfg.train.seed,
    )
    if loss_weights is not None:
        dataset = LossWeightedDataset(dataset, loss_weights)
    n_real = int((data.table[SOURCE].to_numpy()[train_idx] == "real").sum())
    sampler = _epoch_sampler(cfg, dataset, n_real, run, draw_weights)
    drop_last = len(dataset) // run.world_size > cfg.train.batch_size
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=drop_last)
    return dataset, sampler, loader


def setup_training(
    cfg: BapConfig,
    data: PreparedData,
    run: DistContext,
    *,
    init: bool = True,
    allow_no_validation: bool = False,
    draw_weights: np.ndarray | None = None,
    loss_weights: np.ndarray | None = None,
) -> TrainingSetup:
    """Seed, then build the model, objective, optimiser, schedule and training loader of a run.

    Args:
        cfg: the configuration.
        data: the prepared splits.
        run: this process's place in the job (:func:`flowlet.data.runtime.init_distributed`).
        init: load ``train.init`` weights (not when the run resumes from its own ``last.pt``).
        allow_no_validation, draw_weights, loss_weights: see :func:`train`.

    Raises:
        ValueError: no validation split (unless allowed), or weights of the wrong length.
    """
    val_idx = data.indices("val", real_only=True)
    _check_validation(cfg, val_idx.size, allow_no_validation)
    _check_weights(data.indices("train").size, draw_weights=draw_weights, loss_weights=loss_weights)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed)
    metadata = run_metadata(cfg, data)
    model = _build_network(cfg, metadata, run.device, init=init)
    select_on_val = _validation_can_select(cfg, data.table.iloc[val_idx][keys.SUBJECT_ID].nunique())
    objective: nn.Module = AgeObjective(model, cfg.train.loss)
    if run.world_size > 1:
        index = run.device.index
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[index] if index is not None else None
        )
    optimizer = build_optimizer(cfg.train, objective.parameters())
    scheduler = build_scheduler(cfg.train, optimizer)
    dataset, sampler, loader = _training_loader(cfg, data, run, draw_weights, loss_weights)
    return TrainingSetup(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=dataset,
        sampler=sampler,
        loader=loader,
        metadata=metadata,
        val_images=data.images[val_idx],
        val_ages=data.table[keys.AGE].to_numpy(np.float32)[val_idx],
        select_on_val=select_on_val,
        dist=run,
    )
