"""Which training scans an epoch visits: a fresh subset, weighted draws with replacement, per-scan loss weights.

The samplers shard their draws across ``world`` processes (each process gets the same count), and are seeded by
``seed + epoch``, so a run and its resumed continuation see the same batches.
"""

from __future__ import annotations

import numpy as np
import torch

from bap.data import AgeDataset

__all__ = ["EpochSubsetSampler", "LossWeightedDataset", "WeightedEpochSampler"]


class EpochSubsetSampler(torch.utils.data.Sampler):
    """Each epoch, a fresh random subset of ``per_epoch`` indices out of ``n`` (seeded by ``seed + epoch``),
    split across ``world`` processes (every process gets the same count; the subset is trimmed to a multiple).

    With ``per_epoch`` = the number of real training scans, an epoch has the same number of optimiser steps
    whatever the synthetic ratio.
    """

    def __init__(self, n: int, per_epoch: int, *, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 < per_epoch <= n:
            raise ValueError(f"per_epoch must be in 1..{n}, got {per_epoch}")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_process = per_epoch // world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = torch.randperm(self.n, generator=g)[: self.per_process * self.world]
        return iter(chosen[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_process


class WeightedEpochSampler(torch.utils.data.Sampler):
    """Each epoch, ``per_epoch`` draws with replacement, scan ``i`` with probability ``weights[i] / sum(weights)``
    (seeded by ``seed + epoch``), split across ``world`` processes like :class:`EpochSubsetSampler`.

    The ``k``-th repeat of scan ``i`` within an epoch is yielded as the index ``i + k * n``; :class:`AgeDataset`
    reads scan ``i`` and seeds its random flip and shift with the full index, so repeated draws of a scan are
    augmented differently (and reproducibly).
    """

    def __init__(
        self, weights: np.ndarray, per_epoch: int, *, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0 or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError(
                "draw weights must be a non-empty vector of non-negative numbers with a positive sum"
            )
        if per_epoch < 1:
            raise ValueError(f"per_epoch must be >= 1, got {per_epoch}")
        self.probabilities = torch.from_numpy(weights / weights.sum())
        self.n, self.seed, self.rank, self.world = weights.size, seed, rank, world
        self.per_process = max(per_epoch // world, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> np.ndarray:
        """Scan indices (``0..n-1``) of this epoch's draws, all processes together."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = torch.multinomial(
            self.probabilities, self.per_process * self.world, replacement=True, generator=g
        )
        return chosen.numpy()

    def __iter__(self):
        chosen = self.draws()
        seen: dict[int, int] = {}
        virtual = []
        for i in chosen.tolist():
            k = seen.get(i, 0)
            seen[i] = k + 1
            virtual.append(i + k * self.n)
        return iter(virtual[self.rank :: self.world])

    def __len__(self) -> int:
        return self.per_process


class LossWeightedDataset(torch.utils.data.Dataset):
    """A dataset whose items also carry a per-scan loss weight: ``(x, age, weight)``."""

    def __init__(self, dataset: AgeDataset, weights: np.ndarray) -> None:
        self.dataset = dataset
        self.weights = np.asarray(weights, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, age = self.dataset[i]
        return x, age, torch.tensor(self.weights[i % len(self.weights)])
