"""Brain-age data: subject-level splits, synthetic mixing, training-only normalisation, in-memory arrays.

Rules this module enforces (and :func:`check_no_leakage` verifies):

* the real cohort is split by subject (all sessions of a subject land in one split);
* synthetic scans only ever enter the training split; validation and test are real only;
* intensity normalisation uses nothing but the scan itself (``brain_zscore``, the default: mean and SD inside
  the scan's brain mask), or statistics fitted on the training split only (``minmax``: real + synthetic training
  scans); either way the settings are returned, saved with the model and reused unchanged for prediction.

Images are read once into plain float32 arrays (optionally cached on disk as ``.npy``, read without pickle).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bap.config import DataConfig
from flowlet.data import keys
from flowlet.data.io import atomic_path
from flowlet.data.preprocessing import otsu_threshold, zscore

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCE",
    "AgeDataset",
    "PreparedData",
    "apply_normalisation",
    "assign_splits",
    "brain_zscore",
    "check_no_leakage",
    "fit_normalisation",
    "load_arrays",
    "prepare_data",
    "scan_brain_mask",
    "select_synthetic",
]

#: Column telling real from synthetic rows.
SOURCE = "source"
SPLITS = ("train", "val", "test")


def assign_splits(real: pd.DataFrame, cfg: DataConfig, test: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return the real rows (and the test cohort's rows) with ``split`` and ``source = "real"`` columns.

    Args:
        real: cohort table (:data:`keys.COHORT_COLUMNS`).
        cfg: ``split_fractions``, ``split_seed``, ``age_bin_width``, ``stratify_site``, ``split_column``.
        test: an external test cohort; the real cohort is then split into train/val only.

    Raises:
        ValueError: a bad split column (unknown values, a subject in two splits) or a test cohort that shares
            subjects with the real cohort.
    """
    real = real.copy()
    if cfg.split_column is not None:
        real[keys.SPLIT] = _split_from_column(real, cfg.split_column)
    else:
        from flowlet.data.splits import split_subjects

        fractions = dict(zip(SPLITS, cfg.split_fractions))
        if test is not None:
            total = fractions["train"] + fractions["val"]
            fractions = {"train": fractions["train"] / total, "val": fractions["val"] / total}
        real[keys.SPLIT] = split_subjects(
            real,
            fractions,
            seed=cfg.split_seed,
            age_bin_width=cfg.age_bin_width,
            stratify_site=cfg.stratify_site,
        ).to_numpy()
    real[SOURCE] = "real"
    if test is None:
        return real.reset_index(drop=True)
    shared = sorted(set(real[keys.SUBJECT_ID]) & set(test[keys.SUBJECT_ID]))
    if shared:
        raise ValueError(
            f"test cohort shares {len(shared)} subject(s) with the training cohort, e.g. {shared[:5]}"
        )
    test = test.copy()
    test[keys.SPLIT] = "test"
    test[SOURCE] = "real"
    return pd.concat([real.loc[real[keys.SPLIT] != "test"], test], ignore_index=True)


def _split_from_column(real: pd.DataFrame, column: str) -> np.ndarray:
    if column not in real.columns:
        raise ValueError(f"split column '{column}' not in the cohort table; columns: {list(real.columns)}")
    values = real[column].astype(str).str.strip().str.lower().replace({"validation": "val", "valid": "val"})
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise ValueError(f"split column '{column}' has values {bad}; expected {list(SPLITS)}")
    per_subject = pd.Series(values.to_numpy()).groupby(real[keys.SUBJECT_ID].to_numpy()).nunique()
    if (per_subject > 1).any():
        raise ValueError(
            f"split column '{column}' puts subject(s) {list(per_subject[per_subject > 1].index[:5])} "
            "in more than one split"
        )
    return values.to_numpy()


def select_synthetic(
    pool: pd.DataFrame,
    n: int,
    *,
    strategy: str = "uniform",
    real_train_ages: np.ndarray | None = None,
    bin_width: float = 10.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Choose ``n`` synthetic scans from ``pool``.

    ``uniform`` takes the first ``n`` of a seeded permutation, so a smaller ratio's set is a subset of a larger
    one's. ``balanced`` fills age bins (of ``bin_width``) where the real training set is thinnest first.

    Raises:
        ValueError: the pool holds fewer than ``n`` scans, or an unknown strategy.
    """
    if n > len(pool):
        raise ValueError(
            f"synthetic ratio needs {n} synthetic scans but the synthetic cohort has {len(pool)}"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    if strategy == "uniform":
        chosen = order[:n]
    elif strategy == "balanced":
        chosen = _balanced(pool[keys.AGE].to_numpy(float)[order], n, real_train_ages, bin_width, order)
    else:
        raise ValueError(f"unknown synthetic strategy '{strategy}'; choose from ['balanced', 'uniform']")
    return pool.iloc[np.sort(chosen)].reset_index(drop=True)


def _balanced(
    ages: np.ndarray, n: int, real_ages: np.ndarray | None, width: float, order: np.ndarray
) -> np.ndarray:
    syn_bins = np.floor(ages / width).astype(int)
    real_bins = np.floor(np.asarray(real_ages if real_ages is not None else [], float) / width).astype(int)
    counts = {int(b): int(np.sum(real_bins == b)) for b in np.unique(syn_bins)}
    queues = {b: list(order[syn_bins == b]) for b in counts}
    chosen: list[int] = []
    while len(chosen) < n:
        # Water filling: always add to the open bin with the fewest scans so far (ties: lowest age).
        b = min((b for b in counts if queues[b]), key=lambda b: (counts[b], b))
        chosen.append(int(queues[b].pop(0)))
        counts[b] += 1
    return np.asarray(chosen, dtype=int)


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise ``ValueError`` if a real subject is in two splits or a synthetic scan is outside training."""
    syn = table[table[SOURCE] != "real"]
    if (syn[keys.SPLIT] != "train").any():
        raise ValueError("synthetic scans found outside the training split")
    real = table[table[SOURCE] == "real"]
    per_subject = real.groupby(keys.SUBJECT_ID)[keys.SPLIT].nunique()
    if (per_subject > 1).any():
        raise ValueError(
            f"subject(s) {list(per_subject[per_subject > 1].index[:5])} appear in more than one split"
        )


def _cache_name(path: str) -> str:
    stat = os.stat(path)
    token = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(token.encode()).hexdigest()[:32] + ".npy"


def _read_one(path: str, cache_dir: Path | None) -> np.ndarray:
    from flowlet.data.cohort import read_image

    if cache_dir is None:
        return read_image(path).data
    cached = cache_dir / _cache_name(path)
    if cached.is_file():
        return np.load(cached, allow_pickle=False)
    data = np.ascontiguousarray(read_image(path).data, dtype=np.float32)
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data, allow_pickle=False)
    return data


def load_arrays(
    paths: list[str], *, cache_dir: str | Path | None = None, memo: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Read images into one ``(N, X, Y, Z)`` float32 array.

    Args:
        paths: image files (anything :func:`flowlet.data.cohort.read_image` reads).
        cache_dir: optional on-disk cache of plain ``.npy`` arrays keyed by path, size and mtime.
        memo: optional in-memory dict reused across calls (e.g. by a comparison that trains many models).

    Raises:
        ValueError: images of different shapes (naming the first mismatching file).
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    arrays = []
    for path in paths:
        if memo is not None and path in memo:
            data = memo[path]
        else:
            data = np.asarray(_read_one(str(path), cache), dtype=np.float32)
            if memo is not None:
                memo[path] = data
        if arrays and data.shape != arrays[0].shape:
            raise ValueError(
                f"{path}: image shape {data.shape} differs from {arrays[0].shape} of {paths[0]}; "
                "all scans must share one grid"
            )
        arrays.append(data)
    if not arrays:
        raise ValueError("no images to load")
    return np.stack(arrays)


def scan_brain_mask(image: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Boolean brain mask of one ``(X, Y, Z)`` scan from its own voxels.

    ``nonzero``: voxels that differ from 0 (skull-stripped or template-space scans). ``otsu``: voxels above Otsu's
    threshold (head scans with noisy background). ``auto``: ``nonzero`` when at least 5 % and at most 95 % of the
    voxels are non-zero, else ``otsu``. Both masks are unchanged when the scan is multiplied by a positive gain.
    """
    x = np.asarray(image)
    nonzero = x != 0
    if kind == "nonzero" or (kind == "auto" and 0.05 <= nonzero.mean() <= 0.95):
        mask = nonzero
    elif kind in ("otsu", "auto"):
        mask = x > otsu_threshold(x.ravel())
    else:
        raise ValueError(f"unknown brain mask '{kind}'; choose from ['auto', 'nonzero', 'otsu']")
    return mask if mask.sum() >= 2 else np.ones_like(nonzero)


def brain_zscore(image: np.ndarray, mask_kind: str = "auto") -> np.ndarray:
    """``(x - mean) / sd`` of one ``(X, Y, Z)`` scan, mean and SD taken over its brain mask only.

    This is :func:`flowlet.data.preprocessing.zscore` with the mask of :func:`scan_brain_mask`: the same affine map
    is applied to every voxel, so the background keeps one constant value, and a brain of one constant intensity
    is only centred. Only this scan's voxels are used: nothing is fitted across scans, so a test scan cannot leak
    into training statistics, and a per-scan gain (uncalibrated scanners) cancels.
    """
    x = np.asarray(image, dtype=np.float64)
    return zscore(x, mask=scan_brain_mask(x, mask_kind))


def fit_normalisation(train_images: np.ndarray, cfg: DataConfig) -> dict[str, Any]:
    """Normalisation settings; for ``minmax``, statistics of the training images ``(N, X, Y, Z)`` only.

    Returns:
        ``{"kind", "low", "high", "brain_mask"}`` (plain floats and strings, saved in checkpoints).
    """
    stats: dict[str, Any] = {"kind": cfg.normalisation, "low": 0.0, "high": 1.0}
    if cfg.normalisation == "brain_zscore":
        stats["brain_mask"] = cfg.brain_mask
    if cfg.normalisation == "minmax":
        flat = train_images.reshape(train_images.shape[0], -1)
        low = float(np.percentile(flat.min(axis=1), cfg.low_percentile))
        high = float(np.percentile(flat.max(axis=1), cfg.high_percentile))
        if not high > low:
            raise ValueError(f"min-max normalisation: high {high} <= low {low}; training images are constant")
        stats.update(low=low, high=high)
    return stats


def apply_normalisation(images: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Normalise ``(N, X, Y, Z)`` (or one ``(X, Y, Z)``) images with settings from :func:`fit_normalisation`."""
    kind = stats["kind"]
    x = np.asarray(images, dtype=np.float32)
    if kind in ("brain_zscore", "zscore"):  # per scan: inside its brain mask, or over the whole volume
        mask_kind = stats.get("brain_mask", "auto")

        def one(scan: np.ndarray) -> np.ndarray:
            return brain_zscore(scan, mask_kind) if kind == "brain_zscore" else zscore(scan)

        if x.ndim == 3:
            return one(x)
        return np.stack([one(scan) for scan in x]) if len(x) else x
    if kind == "minmax":
        return np.clip((x - stats["low"]) / (stats["high"] - stats["low"]), 0.0, 1.0).astype(np.float32)
    if kind == "none":
        return x
    raise ValueError(
        f"unknown normalisation '{kind}'; choose from ['brain_zscore', 'minmax', 'none', 'zscore']"
    )


@dataclass(frozen=True)
class PreparedData:
    """Everything a training run reads.

    Attributes:
        table: one row per scan used (cohort columns + ``split`` + ``source``), aligned with ``images``.
        images: ``(N, X, Y, Z)`` normalised float32 images.
        norm: normalisation statistics fitted on the training rows.
    """

    table: pd.DataFrame
    images: np.ndarray
    norm: dict[str, Any]

    def indices(self, split: str, *, real_only: bool = False) -> np.ndarray:
        mask = self.table[keys.SPLIT].to_numpy() == split
        if real_only:
            mask &= self.table[SOURCE].to_numpy() == "real"
        return np.flatnonzero(mask)


def prepare_data(
    real: pd.DataFrame,
    cfg: DataConfig,
    *,
    synthetic: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    memo: dict[str, np.ndarray] | None = None,
) -> PreparedData:
    """Split, mix in synthetic training scans, load and normalise (statistics from the training split only)."""
    table = assign_splits(real, cfg, test)
    n_real_train = int((table[keys.SPLIT] == "train").sum())
    n_syn = round(cfg.synthetic_ratio * n_real_train)
    if n_syn > 0:
        if synthetic is None:
            raise ValueError(f"synthetic_ratio {cfg.synthetic_ratio} > 0 but no synthetic cohort was given")
        train_ages = table.loc[table[keys.SPLIT] == "train", keys.AGE].to_numpy(float)
        chosen = select_synthetic(
            synthetic,
            n_syn,
            strategy=cfg.synthetic_strategy,
            real_train_ages=train_ages,
            bin_width=cfg.synthetic_bin_width,
            seed=cfg.split_seed,
        ).copy()
        chosen[keys.SPLIT] = "train"
        chosen[SOURCE] = "synthetic"
        table = pd.concat([table, chosen], ignore_index=True)
    check_no_leakage(table)
    raw = load_arrays(table[keys.PATH].astype(str).tolist(), cache_dir=cfg.cache_dir, memo=memo)
    train_rows = np.flatnonzero(table[keys.SPLIT].to_numpy() == "train")
    norm = fit_normalisation(raw[train_rows], cfg)
    logger.info("data: %s", table.groupby([keys.SPLIT, SOURCE]).size().to_dict())
    return PreparedData(table=table, images=apply_normalisation(raw, norm), norm=norm)


class AgeDataset(Dataset):
    """``(1, X, Y, Z)`` image tensors with their ages; optional flip/shift augmentation.

    Augmentation is drawn from ``(seed, epoch, index)``, so it is identical whatever the number of workers or
    processes, and after a resume. An index ``i >= len(self)`` reads scan ``i % len(self)`` with its own draw (a
    sampler that repeats a scan within an epoch passes ``i + k * len(self)`` for its ``k``-th repeat).
    """

    def __init__(
        self, images: np.ndarray, ages: np.ndarray, *, augment: bool = False, shift: int = 2, seed: int = 0
    ) -> None:
        self.images = images
        self.ages = np.asarray(ages, dtype=np.float32)
        self.augment = augment
        self.shift = shift
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ages)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(i) % len(self.ages)
        x = self.images[j]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            if rng.random() < 0.5:
                x = x[::-1]  # axis 0 is left-right in RAS/LAS-ordered volumes
            shifts = rng.integers(-self.shift, self.shift + 1, size=3)
            x = np.roll(x, tuple(int(s) for s in shifts), axis=(0, 1, 2))
        return torch.from_numpy(np.ascontiguousarray(x)[None]), torch.tensor(self.ages[j])
