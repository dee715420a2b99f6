"""Training configuration: frozen dataclasses read from YAML (``configs/flowlet/*.yaml``).

The defaults of every field reproduce the official recipe (spec §5-6); improvements over it are switches whose
default keeps official behaviour. A config file has five sections, each optional::

    data:     cohort, image size, normalisation, augmentation, subject-level split
    model:    the U-Net (:class:`flowlet.models.config.UNetConfig` fields)
    flow:     probability path, time sampler, loss weights, condition dropout
    training: batch, schedule, optimiser, EMA, precision, validation and checkpoint cadence
    runtime:  device, run folder, threads, progress bar, TensorBoard

:func:`load_train_config` checks every key and type and raises :class:`ConfigError` naming the file and the
dotted key (``training.lr``) with what was expected. Overrides (``training.lr=1e-4``) are applied to the raw
mapping before validation, so they pass the same checks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowlet.data.config import build_section, to_plain
from flowlet.models.config import UNetConfig

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "FlowConfig",
    "OptimConfig",
    "RuntimeConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_train_config",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PAD_MODES = ("edge", "constant", "reflect", "symmetric")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentation (MONAI, spec §5); each transform has its own probability."""

    enabled: bool = True
    rotate_prob: float = 0.4
    rotate_degrees: float = 5.0
    scale_intensity_prob: float = 0.2
    scale_intensity_factor: float = 0.2
    noise_prob: float = 0.2
    noise_std: float = 0.02


@dataclass(frozen=True)
class DataConfig:
    """Cohort and preprocessing.

    Attributes:
        source: cohort folder or table read by :func:`flowlet.data.cohort.load_cohort` (None: set it on the
            command line with ``--set data.source=...``).
        image_size: padded image size ``(D, H, W)`` the U-Net sees (before the Haar transform halves it).
        save_size: crop size of exported volumes.
        condition_columns: cohort column of each model condition, in ``model.condition_names`` order.
        normalize_lower, normalize_upper: robust-normalisation percentiles.
        pad_mode: :func:`numpy.pad` mode of the centred padding (official ``edge``).
        val_fraction: fraction of *subjects* held out for validation.
        split_seed: seed of the subject split.
        age_bin_width: width in years of the age strata of the split.
        age_balanced: draw training batches with inverse-frequency weights per age bin (every bin equally often)
            instead of epoch permutations; the draws per bin are logged and written to ``age_balance.tsv``.
        age_balance_bin_width: width in years of the bins of ``age_balanced`` (``[k·w, (k+1)·w)``).
        cache_dir: folder for preprocessed ``.npy`` arrays (None: keep them in memory only).
        num_workers: DataLoader worker processes.
        augment: random augmentation of training volumes.
    """

    source: str | None = None
    image_size: tuple[int, int, int] = (112, 112, 112)
    save_size: tuple[int, int, int] = (91, 109, 91)
    condition_columns: tuple[str, ...] = ("age",)
    normalize_lower: float = 0.5
    normalize_upper: float = 99.5
    pad_mode: str = "edge"
    val_fraction: float = 0.2
    split_seed: int = 42
    age_bin_width: float = 5.0
    age_balanced: bool = False
    age_balance_bin_width: float = 10.0
    cache_dir: str | None = None
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class FlowConfig:
    """Flow-matching objective.

    Attributes:
        path: registered probability path (:func:`flowlet.paths.get_path`).
        path_options: keyword arguments of the path (e.g. ``beta_min`` for ``vp``).
        time_sampler: registered time sampler (``uniform`` official; ``logit_normal`` improvement).
        time_sampler_options: keyword arguments of the sampler (e.g. ``mean``, ``std``).
        lll_loss_weight: weight of the LLL-band mean squared error.
        detail_loss_weight: weight of the mean squared error of the 7 detail bands.
        condition_dropout: probability of training a sample without its conditions (enables guidance).
    """

    path: str = "rectified"
    path_options: dict[str, float] = field(default_factory=dict)
    time_sampler: str = "uniform"
    time_sampler_options: dict[str, float] = field(default_factory=dict)
    lll_loss_weight: float = 1.0
    detail_loss_weight: float = 1.0
    condition_dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation, EMA, precision, validation and checkpoint cadence (the ``training`` section).

    Attributes:
        batch_size: global batch size (split evenly across processes).
        epochs: length of training in epochs, used when ``max_steps`` is None.
        max_steps: length of training in optimiser steps (overrides ``epochs``).
        lr, min_lr: peak and final learning rate of the cosine schedule.
        warmup_steps: linear warm-up steps (official 0).
        weight_decay, betas, eps: AdamW.
        grad_clip_norm: global L2 gradient-norm clip (0 disables).
        ema_decay: decay of the EMA weights (0 disables EMA).
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (CUDA, with GradScaler).
        compile: wrap the network in :func:`torch.compile`.
        gradient_checkpointing: recompute activations in the backward pass (less memory, slower).
        channels_last: keep weights and activations in ``channels_last_3d`` memory format (faster 3-D
            convolutions on CPU; measured 1.25× on the 4 mm demo network).
        val_every: validate every this many steps (0: once per epoch).
        val_repeats: fixed (noise, t) draws per validation subject.
        val_seed: seed of the fixed validation noise and times.
        save_every: refresh the resumable state and ``latest.pt`` every this many steps (0: at each validation).
        keep_every: also keep a periodic ``step-XXXXXXX.pt`` checkpoint every this many steps (0: never).
        log_every: write a metrics row every this many steps.
        early_stop_patience: stop after this many validations without improvement (None: never).
        seed: seed of data order, noise, times and dropout.
    """

    batch_size: int = 4
    epochs: int = 200
    max_steps: int | None = None
    lr: float = 3e-6
    min_lr: float = 1e-7
    warmup_steps: int = 0
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"
    compile: bool = False
    gradient_checkpointing: bool = False
    channels_last: bool = False
    val_every: int = 0
    val_repeats: int = 1
    val_seed: int = 1234
    save_every: int = 0
    keep_every: int = 0
    log_every: int = 10
    early_stop_patience: int | None = None
    seed: int = 42


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes (does not change the result, except ``device``)."""

    device: str = "auto"
    run_dir: str = "runs/flowlet"
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """A complete training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    training: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _check_semantics(self)


# ------------------------------------------------------------------------------------------------ validation
def _check_semantics(cfg: TrainConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    d, f, t, m = cfg.data, cfg.flow, cfg.training, cfg.model
    if len(d.condition_columns) != len(m.condition_names):
        raise ValueError(
            f"data.condition_columns {list(d.condition_columns)} must pair one-to-one with "
            f"model.condition_names {list(m.condition_names)}"
        )
    if any(s < 1 for s in (*d.image_size, *d.save_size)):
        raise ValueError(
            f"data.image_size {list(d.image_size)} and data.save_size {list(d.save_size)} must be positive"
        )
    if any(s % 2 for s in d.image_size) or any(s // 2 % m.grid_divisor for s in d.image_size):
        raise ValueError(
            f"data.image_size {list(d.image_size)} must be even and its half divisible by {m.grid_divisor} "
            f"(2^(levels-1) for model.channel_mult {list(m.channel_mult)})"
        )
    if any(s > i for s, i in zip(d.save_size, d.image_size)):
        raise ValueError(
            f"data.save_size {list(d.save_size)} is larger than data.image_size {list(d.image_size)}"
        )
    if d.pad_mode not in PAD_MODES:
        raise ValueError(f"data.pad_mode must be one of {list(PAD_MODES)}, got {d.pad_mode!r}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if not d.age_balance_bin_width > 0:
        raise ValueError(f"data.age_balance_bin_width must be > 0, got {d.age_balance_bin_width}")
    if not 0.0 <= f.condition_dropout < 1.0:
        raise ValueError(f"flow.condition_dropout must be in [0, 1), got {f.condition_dropout}")
    if t.precision not in PRECISIONS:
        raise ValueError(f"training.precision must be one of {list(PRECISIONS)}, got {t.precision!r}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"training.ema_decay must be in [0, 1), got {t.ema_decay}")
    positive = {
        "training.batch_size": t.batch_size,
        "training.log_every": t.log_every,
        "training.val_repeats": t.val_repeats,
        "training.epochs": t.epochs,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ValueError(f"training.max_steps must be >= 1 or null, got {t.max_steps}")


def config_from_dict(raw: Mapping[str, Any], *, source: str = "<config>") -> TrainConfig:
    """Validate a raw mapping (as read from YAML) and build the :class:`TrainConfig`.

    Raises:
        ConfigError: unknown key, wrong type or inconsistent values; the message names ``source`` and the key.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return build_section(TrainConfig, dict(raw), "")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], *, source: str = "<overrides>") -> dict:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied (values parsed as YAML scalars).

    Example:
        >>> apply_overrides({}, ["training.lr=1e-4"])["training"]["lr"]
        0.0001
    """
    out: dict = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"{source}: override {item!r}: the value is not a plain YAML scalar, list or mapping ({problem})"
            ) from None
        if isinstance(
            value, str
        ):  # "1e-4" is a string to YAML 1.1; numbers written that way are meant as floats
            with contextlib.suppress(ValueError):
                value = float(value) if any(c in value for c in ".eE") else int(value)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(raw: Mapping[str, Any]) -> dict:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (``yaml.safe_load``), apply overrides and validate it.

    Args:
        path: YAML file.
        overrides: ``section.key=value`` strings, e.g. ``["training.lr=1e-4"]``.

    Raises:
        ConfigError: missing or unreadable file, or any invalid key or value (the message names the file).

    Example:
        >>> from configs import config_path
        >>> cfg = load_train_config(config_path("flowlet", "paper-base"))
        >>> cfg.training.lr
        3e-06
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides, source=str(path))
    return config_from_dict(raw, source=str(path))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML/JSON-able nested dict (tuples become lists) of a config dataclass."""
    return to_plain(cfg)
