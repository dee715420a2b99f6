"""Training data: cohort scans → normalised, padded volumes → optional augmentation → Haar bands.

The deterministic part (read, :func:`~flowlet.data.preprocessing.robust_normalize`,
:func:`~flowlet.data.preprocessing.centre_pad`) is computed once per scan and kept in memory, and optionally on
disk as a plain float32 ``.npy`` array (never a pickle). The random part (MONAI rotation, intensity scaling,
Gaussian noise; spec §5) is seeded per (run seed, epoch, scan), so the data of a step do not depend on worker
processes, on the number of training processes, or on whether the run was resumed.

Batches are drawn by :class:`StepBatchSampler`: epoch ``e`` is a permutation seeded by ``(seed, e)``, step ``s``
takes the next ``batch_size`` scans of it (the last incomplete batch is dropped, as in the official loader), and
process ``r`` of ``W`` takes the ``r``-th contiguous share of that global batch. With ``data.age_balanced`` the
global batch of step ``s`` is instead drawn with replacement, seeded by ``(seed, s)``, with inverse-frequency weights
per age bin (:func:`age_balanced_weights`): every non-empty bin is drawn equally often, so the rare ages are seen as
often as the common ones (each of their scans more often).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from flowlet.data import keys
from flowlet.data.bins import bin_counts, bin_label, inverse_frequency_weights
from flowlet.data.cohort import Cohort, read_image
from flowlet.data.io import atomic_path
from flowlet.data.preprocessing import centre_pad, robust_normalize
from flowlet.training.config import AugmentConfig, DataConfig
from flowlet.wavelets import dwt3d

__all__ = [
    "AgeBalance",
    "CohortSplit",
    "StepBatchSampler",
    "WaveletDataset",
    "age_balanced_weights",
    "build_augmentation",
    "compute_condition_ranges",
    "normalize_condition",
    "preprocess_volume",
    "split_cohort",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- conditions
def compute_condition_ranges(
    table: pd.DataFrame, names: Sequence[str], columns: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Min and max of each condition column over the whole cohort (official: train + val).

    Args:
        table: cohort table.
        names: model condition names, e.g. ``("Age",)``.
        columns: the matching table columns, e.g. ``("age",)``.

    Returns:
        ``{name: (min, max)}``.
    """
    ranges = {}
    for name, column in zip(names, columns):
        if column not in table.columns:
            raise KeyError(
                f"condition '{name}' needs the cohort column '{column}'; found {list(table.columns)}"
            )
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"cohort column '{column}' (condition '{name}') has missing or non-numeric values"
            )
        ranges[name] = (float(values.min()), float(values.max()))
    return ranges


def normalize_condition(value: float | np.ndarray, low: float, high: float) -> np.ndarray:
    """Official min-max normalisation ``clip((v - min) / (max - min), 0, 1)``; 0.5 for a degenerate range."""
    value = np.asarray(value, dtype=np.float64)
    if high - low <= 1e-8:
        return np.full(value.shape, 0.5)
    return np.clip((value - low) / (high - low), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class CohortSplit:
    """Subject-level split of a cohort: no subject has scans on both sides."""

    train: Cohort
    val: Cohort


def split_cohort(
    cohort: Cohort, val_fraction: float, *, seed: int, age_bin_width: float = 5.0
) -> CohortSplit:
    """Split by subject, stratified by age (and site), with :func:`flowlet.data.splits.train_val_split`.

    ``val_fraction = 0`` puts every scan in training (no validation).
    """
    if val_fraction == 0.0:
        empty = cohort.subset(np.zeros(len(cohort), dtype=bool))
        return CohortSplit(train=cohort, val=empty)
    from flowlet.data.splits import train_val_split

    split = train_val_split(cohort.table, val_fraction, seed=seed, age_bin_width=age_bin_width).to_numpy()
    train, val = cohort.subset(split == "train"), cohort.subset(split == "val")
    if len(train) == 0:
        raise ValueError(f"{cohort.source}: the split left no training scans ({len(cohort)} scans in total)")
    return CohortSplit(train=train, val=val)


# ------------------------------------------------------------------------------------------- preprocessing
def _cache_key(path: str, cfg: DataConfig) -> str:
    stat = os.stat(path)
    text = "|".join(
        str(v)
        for v in (
            os.path.abspath(path),
            stat.st_size,
            stat.st_mtime_ns,
            cfg.normalize_lower,
            cfg.normalize_upper,
            tuple(cfg.image_size),
            cfg.pad_mode,
        )
    )
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def preprocess_volume(path: str | os.PathLike, cfg: DataConfig) -> np.ndarray:
    """Read one scan, robust-normalise it to ``[-1, 1]`` and centre-pad it to ``cfg.image_size``.

    With ``cfg.cache_dir`` set, the result is stored as ``<cache_dir>/<key>.npy`` (key = path, size, mtime and
    the preprocessing settings) and read back on later calls.

    Returns:
        float32 ``(D, H, W)`` array of shape ``cfg.image_size``.
    """
    path = str(path)
    cache_file = None
    if cfg.cache_dir is not None:
        cache_file = Path(cfg.cache_dir) / f"{_cache_key(path, cfg)}.npy"
        if cache_file.is_file():
            return np.load(cache_file, allow_pickle=False)
    volume = read_image(path)
    normalised = robust_normalize(volume.data, cfg.normalize_lower, cfg.normalize_upper)
    try:
        array = centre_pad(normalised, cfg.image_size, mode=cfg.pad_mode).array.astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (data.image_size = {list(cfg.image_size)})") from exc
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            np.save(tmp, array, allow_pickle=False)
    return array


def build_augmentation(cfg: AugmentConfig):
    """MONAI random transforms of the official recipe (rotation ±5°, intensity scale ±20 %, Gaussian noise).

    Returns:
        A :class:`monai.transforms.Compose` acting on ``(1, D, H, W)`` arrays, or None when disabled.
    """
    if not cfg.enabled:
        return None
    from monai.transforms import Compose, RandGaussianNoise, RandRotate, RandScaleIntensity

    angle = float(np.deg2rad(cfg.rotate_degrees))
    transforms = []
    if cfg.rotate_prob > 0:
        transforms.append(
            RandRotate(
                range_x=angle,
                range_y=angle,
                range_z=angle,
                prob=cfg.rotate_prob,
                keep_size=True,
                mode="bilinear",
                padding_mode="border",
            )
        )
    if cfg.scale_intensity_prob > 0:
        transforms.append(
            RandScaleIntensity(factors=cfg.scale_intensity_factor, prob=cfg.scale_intensity_prob)
        )
    if cfg.noise_prob > 0:
        transforms.append(RandGaussianNoise(prob=cfg.noise_prob, std=cfg.noise_std))
    return Compose(transforms) if transforms else None


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the random augmentation of scan ``index`` in ``epoch`` (independent of workers and ranks)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class WaveletDataset(Dataset):
    """Cohort scans as Haar bands plus normalised conditions.

    Items are indexed by ``i`` (no augmentation) or by ``(i, augmentation_seed)``.

    Args:
        table: cohort table (one row per scan).
        cfg: data settings.
        condition_names: model condition names (``("Age",)``).
        condition_ranges: ``{name: (min, max)}`` for the min-max normalisation.
        augment: apply the random augmentation of ``cfg.augment`` to ``(i, seed)`` items.

    Each item is ``{"image": (8, D/2, H/2, W/2) float32, "conditions": {name: (1,) float32}, "index": int}``.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        cfg: DataConfig,
        condition_names: Sequence[str],
        condition_ranges: Mapping[str, tuple[float, float]],
        *,
        augment: bool = False,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.cfg = cfg
        self.paths = self.table[keys.PATH].astype(str).tolist()
        self.conditions = {}
        for name, column in zip(condition_names, cfg.condition_columns):
            low, high = condition_ranges[name]
            raw = pd.to_numeric(self.table[column], errors="coerce").to_numpy(dtype=np.float64)
            self.conditions[name] = normalize_condition(raw, low, high).astype(np.float32)
        self.augment = build_augmentation(cfg.augment) if augment else None
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def volume(self, index: int) -> np.ndarray:
        """Preprocessed (not augmented) ``(D, H, W)`` volume of scan ``index``, cached in memory."""
        if index not in self._cache:
            self._cache[index] = preprocess_volume(self.paths[index], self.cfg)
        return self._cache[index]

    def _augmented(self, index: int, seed: int) -> np.ndarray:
        x = self.volume(index)[None]
        if self.augment is None:
            return x
        self.augment.set_random_state(seed=seed)
        out = self.augment(x)
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        return np.asarray(out, dtype=np.float32)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (key, None) if isinstance(key, int | np.integer) else (int(key[0]), int(key[1]))
        x = self.volume(index)[None] if seed is None else self._augmented(index, seed)
        bands = dwt3d(torch.from_numpy(np.ascontiguousarray(x))[None])[0]
        conditions = {n: torch.tensor([v[index]], dtype=torch.float32) for n, v in self.conditions.items()}
        return {keys.IMAGE: bands, "conditions": conditions, "index": index}


@dataclass(frozen=True)
class AgeBalance:
    """Inverse-frequency sampling weights per age bin.

    Attributes:
        weights: ``(N,)`` draw probability of every scan (sums to 1).
        table: one row per non-empty bin: ``bin``, ``age_min``, ``age_max``, ``n_scans``, ``probability`` (of a
            draw falling in the bin), ``natural_probability`` (without balancing), ``draws_per_epoch`` (expected
            draws of the bin in ``N`` draws) and ``draws_per_scan`` (of each of its scans per ``N`` draws).
    """

    weights: np.ndarray
    table: pd.DataFrame


def age_balanced_weights(ages: Sequence[float] | np.ndarray, bin_width: float) -> AgeBalance:
    """Weights that draw every non-empty ``bin_width``-year age bin (``[k·w, (k+1)·w)``) equally often.

    Example:
        >>> age_balanced_weights([20, 22, 24, 71], 10).table["probability"].tolist()
        [0.5, 0.5]
    """
    ages = np.asarray(ages, dtype=np.float64)
    if ages.size == 0 or not np.all(np.isfinite(ages)):
        raise ValueError("age-balanced sampling needs a finite age for every training scan")
    if not bin_width > 0:
        raise ValueError(f"data.age_balance_bin_width must be > 0, got {bin_width}")
    bins, counts = np.unique(bin_counts(ages, bin_width)[0], return_counts=True)
    weights = inverse_frequency_weights(ages, bin_width, total=1.0)
    table = pd.DataFrame(
        {
            "bin": [bin_label(b * bin_width, (b + 1) * bin_width) for b in bins],
            "age_min": bins * bin_width,
            "age_max": (bins + 1) * bin_width,
            "n_scans": counts,
            "probability": 1.0 / len(bins),
            "natural_probability": counts / ages.size,
            "draws_per_epoch": ages.size / len(bins),
            "draws_per_scan": ages.size / (len(bins) * counts),
        }
    )
    return AgeBalance(weights=weights / weights.sum(), table=table)


class StepBatchSampler(Sampler):
    """Yields this process's share of each global batch, from a given step on (exact resume, DDP-invariant).

    Args:
        num_items: training scans.
        global_batch: batch size summed over processes (divisible by ``world_size``).
        seed: run seed (epoch permutations and augmentation seeds derive from it).
        start_step: first optimiser step to produce.
        total_steps: last step (exclusive).
        rank, world_size: this process's position.
        weights: ``(num_items,)`` draw probabilities (e.g. :func:`age_balanced_weights`): each global batch is then
            drawn with replacement, seeded by ``(seed, step)``, instead of walking epoch permutations.

    Yields:
        Lists of ``(index, augmentation_seed)`` of length ``global_batch // world_size``.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        *,
        seed: int,
        start_step: int,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
    ) -> None:
        if weights is not None and len(weights) != num_items:
            raise ValueError(f"{len(weights)} sampling weights for {num_items} training scans")
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if global_batch % world_size:
            raise ValueError(f"training.batch_size {global_batch} is not divisible by {world_size} processes")
        if num_items < global_batch:
            raise ValueError(f"{num_items} training scans are fewer than training.batch_size {global_batch}")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.local_batch = rank, global_batch // world_size
        self.steps_per_epoch = num_items // global_batch

    def global_batch_at(self, step: int) -> list[tuple[int, int]]:
        """All ``(index, seed)`` pairs of the global batch of ``step``."""
        if self.weights is not None:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, step, 0xBA1]).generate_state(1)[0])
            )
            chosen = torch.multinomial(
                self.weights, self.global_batch, replacement=True, generator=g
            ).tolist()
            # a scan drawn twice in one batch gets two different augmentations
            return [
                (i, augmentation_seed(self.seed, step, i * self.global_batch + k))
                for k, i in enumerate(chosen)
            ]
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(
            self.num_items, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
        )
        chosen = order[position * self.global_batch : (position + 1) * self.global_batch].tolist()
        return [(i, augmentation_seed(self.seed, epoch, i)) for i in chosen]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            batch = self.global_batch_at(step)
            yield batch[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)
