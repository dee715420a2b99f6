"""The data of one training run: the cohort split by subject, its datasets, the age balance and the step loader."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from flowlet.data.cohort import Cohort, load_cohort, read_image
from flowlet.data.runtime import DistContext
from flowlet.training.config import TrainConfig
from flowlet.training.data import (
    AgeBalance,
    CohortSplit,
    StepBatchSampler,
    WaveletDataset,
    age_balanced_weights,
    compute_condition_ranges,
    split_cohort,
)

__all__ = ["RunData", "prepare_run_data", "step_loader"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunData:
    """What a run trains and validates on.

    Attributes:
        condition_ranges: ``{name: (min, max)}`` of the whole cohort (the network sees conditions scaled to [0, 1]).
        split: the subject-level train/val split.
        train_set: augmented training volumes.
        val_set: validation volumes, not augmented.
        steps_per_epoch: optimiser steps that draw as many scans as the training split holds.
        affine: ``(4, 4)`` affine of the first training image (written into the sampling checkpoint).
        age_balance: inverse-frequency weights per age bin (None: draw epoch permutations).
    """

    condition_ranges: dict[str, tuple[float, float]]
    split: CohortSplit
    train_set: WaveletDataset
    val_set: WaveletDataset
    steps_per_epoch: int
    affine: np.ndarray
    age_balance: AgeBalance | None


def prepare_run_data(config: TrainConfig, cohort: Cohort | None = None) -> RunData:
    """Load (unless given) and split the cohort of ``config.data``, and build the datasets."""
    cfg = config
    if cohort is None:
        if cfg.data.source is None:
            raise ValueError("data.source is not set; pass --set data.source=<cohort folder or table>")
        cohort = load_cohort(cfg.data.source)
    names = cfg.model.condition_names
    condition_ranges = compute_condition_ranges(cohort.table, names, cfg.data.condition_columns)
    split = split_cohort(
        cohort, cfg.data.val_fraction, seed=cfg.data.split_seed, age_bin_width=cfg.data.age_bin_width
    )
    train_set = WaveletDataset(split.train.table, cfg.data, names, condition_ranges, augment=True)
    val_set = WaveletDataset(split.val.table, cfg.data, names, condition_ranges, augment=False)
    steps_per_epoch = len(train_set) // cfg.training.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training scans are fewer than training.batch_size {cfg.training.batch_size}"
        )
    affine = read_image(train_set.paths[0]).affine
    age_balance = None
    if cfg.data.age_balanced:
        age_balance = age_balanced_weights(
            split.train.table[cfg.data.condition_columns[0]].to_numpy(), cfg.data.age_balance_bin_width
        )
        _log_age_balance(age_balance, len(train_set))
    logger.info(
        "training on %d scans (%d subjects), validating on %d scans (%d subjects)",
        len(split.train),
        len(split.train.subjects()),
        len(split.val),
        len(split.val.subjects()),
    )
    return RunData(
        condition_ranges=condition_ranges,
        split=split,
        train_set=train_set,
        val_set=val_set,
        steps_per_epoch=steps_per_epoch,
        affine=affine,
        age_balance=age_balance,
    )


def _log_age_balance(age_balance: AgeBalance, n_train: int) -> None:
    for row in age_balance.table.itertuples():
        logger.info(
            "age-balanced sampling: bin %s, %d scans, %.1f draws per epoch (%.2f per scan; unbalanced %.1f)",
            row.bin, row.n_scans, row.draws_per_epoch, row.draws_per_scan, row.natural_probability * n_train,
        )  # fmt: skip


def step_loader(
    data: RunData,
    config: TrainConfig,
    *,
    start_step: int,
    total_steps: int,
    dist: DistContext,
    device: torch.device,
) -> DataLoader:
    """This process's batches of the steps ``start_step .. total_steps - 1`` (see :class:`StepBatchSampler`)."""
    sampler = StepBatchSampler(
        len(data.train_set),
        config.training.batch_size,
        seed=config.training.seed,
        start_step=start_step,
        total_steps=total_steps,
        rank=dist.rank,
        world_size=dist.world_size,
        weights=None if data.age_balance is None else data.age_balance.weights,
    )
    return DataLoader(
        data.train_set,
        batch_sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
