"""Brain-age training configuration: frozen dataclasses, read from YAML with unknown keys refused.

A YAML file has up to four sections (``model``, ``data``, ``train``, ``eval``); every key maps onto a field below.
:func:`config_from_dict` refuses unknown sections and keys, naming them and the allowed ones, so that a typo never
silently falls back to a default. :func:`config_to_dict` gives the plain dict written next to every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowlet.data.config import build_section, to_plain

__all__ = [
    "BapConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "replace",
]


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train.

    Attributes:
        name: a registered model (``densenet121``, ``resnet``, ``sfcn``, ``small``).
        options: model-specific keyword arguments (e.g. ``{"channels": [8, 16, 32, 64]}``).
        standardise_target: regression head outputs ``mean + sd * z`` with training-age mean/SD; ``False``
            regresses raw years as the paper did.
        sfcn_margin_years: SFCN bins span the training ages widened by this margin on each side.
    """

    name: str = "small"
    options: dict[str, Any] = field(default_factory=dict)
    standardise_target: bool = True
    sfcn_margin_years: float = 5.0


@dataclass(frozen=True)
class DataConfig:
    """Splits, synthetic mixing and intensity normalisation.

    Attributes:
        split_fractions: ``(train, val, test)`` fractions of real subjects.
        split_seed: seed of the subject-level split (kept fixed across training seeds).
        age_bin_width: width (years) of the age bins used to stratify the split.
        stratify_site: also stratify by site.
        split_column: use this cohort column (values train/val/test) instead of a random split.
        synthetic_ratio: synthetic ÷ real training scans (0 = real only). The synthetic draw is seeded by
            ``split_seed``, so it is the same for every training seed and nested across ratios (``uniform``).
        synthetic_strategy: ``uniform`` (random subset) or ``balanced`` (fill the age bins where real training
            data are scarcest first).
        synthetic_bin_width: bin width (years) for ``balanced``.
        normalisation: ``brain_zscore`` (default: each scan on its own, ``(x - mean) / sd`` of its voxels inside
            a brain mask, so a scanner gain or offset cancels and no statistic crosses scans), ``minmax`` (5th pct
            of per-volume minima, 95th pct of maxima, fitted on the training split, then clipped to [0, 1], spec
            §9.2; the pre-0.2 default, which lets a network learn uncalibrated scanners), ``zscore`` (per volume
            over all voxels, spec §9.1) or ``none``.
        brain_mask: the mask of ``brain_zscore``: ``auto`` (the non-zero voxels when the scan has a zero
            background, as skull-stripped or template-space scans do, else an Otsu threshold), ``nonzero`` or
            ``otsu``.
        low_percentile, high_percentile: percentiles for ``minmax``.
        augment: random left-right flip and ±``shift_voxels`` integer shifts on training images.
        shift_voxels: maximum shift for augmentation.
        cache_dir: folder for an on-disk cache of plain ``.npy`` arrays (read with ``allow_pickle=False``).
    """

    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    age_bin_width: float = 5.0
    stratify_site: bool = True
    split_column: str | None = None
    synthetic_ratio: float = 0.0
    synthetic_strategy: str = "uniform"
    synthetic_bin_width: float = 10.0
    normalisation: str = "brain_zscore"
    brain_mask: str = "auto"
    low_percentile: float = 5.0
    high_percentile: float = 95.0
    augment: bool = False
    shift_voxels: int = 2
    cache_dir: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation.

    Attributes:
        loss: ``l1`` or ``sfcn_kl`` (SFCN only).
        optimizer: ``adamw`` or ``sgd``.
        lr, weight_decay, momentum: optimiser settings (momentum for SGD).
        schedule: ``cosine`` (to ``eta_min`` over ``epochs``), ``cosine_restarts`` (``t_0``, ``t_mult``),
            ``plateau`` (divide by 10 after ``plateau_patience`` epochs without a better smoothed validation MAE,
            down to ``eta_min``) or ``constant``.
        epochs: maximum epochs; patience: early-stopping patience on the smoothed validation MAE (0 = never
            stop).
        val_smoothing: the model is selected on the median validation MAE of the last this many epochs (1 = the
            raw MAE), so that one lucky epoch on a few subjects is not taken for progress, nor one unstable
            epoch (a spike of the evaluation-mode batch statistics) for a setback.
        min_delta: an epoch counts as better only if the smoothed MAE drops by more than this (years).
        min_val_subjects: with fewer real validation subjects, validation MAE is too noisy to select a model:
            early stopping is switched off, a warning is logged and the last epoch is kept.
        init: start from these weights (a ``bap-train`` checkpoint, a state dict, or the public UK Biobank SFCN
            file with ``module.`` keys); ``None`` = random initialisation.
        init_skip_head: with ``init``, leave the output layer at its random initialisation when its shape
            differs (e.g. other age bins); every other mismatch is still an error.
        batch_size, eval_batch_size: per-process batch sizes.
        seed: seeds initialisation, data order and augmentation.
        bf16: bf16 autocast when running on CUDA (ignored on CPU).
        num_threads: CPU threads for torch (0 = leave torch's default).
        save_every: also keep ``epoch-XXXX.pt`` every this many epochs (0 = never).
        epoch_size: ``all`` (every training scan, real and synthetic, once per epoch) or ``real`` (each epoch draws
            as many scans as there are *real* training scans from the whole training pool, a fresh random subset
            every epoch). ``real`` gives every synthetic ratio the same number of optimiser steps, so a comparison
            across ratios is not confounded by training length.
    """

    loss: str = "l1"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.0
    schedule: str = "cosine"
    eta_min: float = 1e-5
    t_0: int = 17
    t_mult: int = 2
    epochs: int = 30
    patience: int = 10
    batch_size: int = 8
    eval_batch_size: int = 16
    seed: int = 0
    bf16: bool = True
    num_threads: int = 0
    save_every: int = 0
    epoch_size: str = "all"
    plateau_patience: int = 5
    val_smoothing: int = 3
    min_delta: float = 0.05
    min_val_subjects: int = 20
    init: str | None = None
    init_skip_head: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation tables: age-bin width (years), bootstrap replicates and seed."""

    bin_width: float = 10.0
    n_boot: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class BapConfig:
    """The whole brain-age training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _validate(self)


_CHOICES = {
    ("train", "loss"): ("l1", "sfcn_kl"),
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "schedule"): ("cosine", "cosine_restarts", "plateau", "constant"),
    ("train", "epoch_size"): ("all", "real"),
    ("data", "normalisation"): ("brain_zscore", "minmax", "zscore", "none"),
    ("data", "brain_mask"): ("auto", "nonzero", "otsu"),
    ("data", "synthetic_strategy"): ("uniform", "balanced"),
}


#: Accepted range of each numeric setting: (low, high, low excluded).
_RANGES: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("model", "sfcn_margin_years"): (0, 120, False),
    ("data", "split_seed"): (0, 2**32 - 1, False),
    ("data", "age_bin_width"): (0, 120, True),
    ("data", "synthetic_ratio"): (0, 1000, False),
    ("data", "synthetic_bin_width"): (0, 120, True),
    ("data", "low_percentile"): (0, 100, False),
    ("data", "high_percentile"): (0, 100, False),
    ("data", "shift_voxels"): (0, 64, False),
    ("train", "lr"): (0, 10, True),
    ("train", "weight_decay"): (0, 10, False),
    ("train", "momentum"): (0, 1, False),
    ("train", "eta_min"): (0, 10, False),
    ("train", "t_0"): (1, 100_000, False),
    ("train", "t_mult"): (1, 100, False),
    ("train", "epochs"): (1, 100_000, False),
    ("train", "patience"): (0, 100_000, False),
    ("train", "batch_size"): (1, 4096, False),
    ("train", "eval_batch_size"): (1, 4096, False),
    ("train", "seed"): (0, 2**32 - 1, False),
    ("train", "num_threads"): (0, 1024, False),
    ("train", "save_every"): (0, 100_000, False),
    ("eval", "bin_width"): (0, 120, True),
    ("eval", "n_boot"): (1, 1_000_000, False),
    ("eval", "seed"): (0, 2**32 - 1, False),
}


def _validate(cfg: BapConfig) -> None:
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ValueError(f"config {section}.{key} = {value!r}; expected one of {list(allowed)}")
    for (section, key), (low, high, low_open) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if not (low < value if low_open else low <= value) or not value <= high:
            raise ValueError(
                f"config {section}.{key} = {value!r}; expected a number in {'(' if low_open else '['}{low:g}, {high:g}]"
            )
    fractions = cfg.data.split_fractions
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"config data.split_fractions = {list(fractions)}; expected 3 non-negative numbers summing to 1"
        )
    if cfg.train.loss == "sfcn_kl" and cfg.model.name != "sfcn":
        raise ValueError(f"config train.loss = 'sfcn_kl' needs model.name = 'sfcn', got {cfg.model.name!r}")
    if cfg.train.val_smoothing < 1:  # train.epochs and train.batch_size are bounded in _RANGES
        raise ValueError(f"config train.val_smoothing = {cfg.train.val_smoothing!r}; expected >= 1")


def config_from_dict(raw: dict[str, Any] | None) -> BapConfig:
    """Build a :class:`BapConfig` from a nested dict, refusing unknown sections and keys.

    Raises:
        ValueError: (:class:`flowlet.data.config.ConfigTypeError`) naming the section or dotted key.
    """
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"config must be a mapping of sections, got {type(raw).__name__}")
    return build_section(BapConfig, raw, "")


def config_to_dict(cfg: BapConfig) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) suitable for YAML and for ``weights_only`` checkpoints."""
    return to_plain(cfg)


def load_config(path: str | Path) -> BapConfig:
    """Read a YAML config (``yaml.safe_load``); errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    try:
        return config_from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def replace(cfg: BapConfig, **sections: dict[str, Any]) -> BapConfig:
    """Return a copy with some fields changed, e.g. ``replace(cfg, train={"epochs": 2})``."""
    raw = config_to_dict(cfg)
    for name, updates in sections.items():
        if name not in raw:
            raise ValueError(f"unknown config section '{name}'; allowed: {sorted(raw)}")
        raw[name].update(updates)
    return config_from_dict(raw)
