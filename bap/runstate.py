"""The state of a brain-age run between epochs, and the checkpoint payloads built from it.

:class:`RunState` is what ``last.pt`` must hold besides weights, optimiser, scheduler and RNG states to continue a run
exactly. :func:`model_payload` is the one builder of a model checkpoint (``best.pt``, ``epoch-XXXX.pt``);
:func:`resume_payload` adds the optimiser, scheduler, RNG and run state for ``last.pt``.

Example:
    >>> state = RunState()
    >>> state.record({"epoch": 1, "val_mae": 5.0}, score=5.0, improved=True)
    >>> RunState.from_dict(state.state_dict()) == state
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bap.checkpoint import get_rng_state
from bap.config import BapConfig, config_to_dict
from bap.data import SOURCE, PreparedData
from flowlet.data import keys

__all__ = ["RunState", "model_payload", "resume_payload", "run_metadata", "selection_score"]


def selection_score(val_maes: list[float], window: int) -> float:
    """Median of the last ``window`` validation MAEs: one outlying epoch, lucky or unstable, does not move it."""
    return float(np.median(val_maes[-window:]))


@dataclass
class RunState:
    """Progress and model selection of a run.

    Attributes:
        epoch: epochs finished.
        best_val_mae: validation MAE of the selected epoch.
        best_score: its selection score (smoothed validation MAE).
        best_epoch: the selected epoch (1-based; -1 before the first).
        bad_epochs: epochs since the selection score last improved (early stopping).
        history: one row per finished epoch (the rows of ``metrics.csv``).
    """

    epoch: int = 0
    best_val_mae: float = math.inf
    best_score: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (``weights_only``-loadable), under the keys ``last.pt`` has always used."""
        return {**dataclasses.asdict(self), "history": [dict(row) for row in self.history]}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunState:
        """The state saved by :meth:`state_dict` (in ``last.pt``); fields it lacks keep their start values."""
        start = cls()
        return cls(**{f.name: saved.get(f.name, getattr(start, f.name)) for f in dataclasses.fields(cls)})

    def record(self, row: dict[str, Any], *, score: float, improved: bool) -> None:
        """Append an epoch's ``row`` and update the selection: ``improved`` makes it the best epoch so far."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        if improved:
            self.best_val_mae, self.best_score, self.best_epoch, self.bad_epochs = (
                row["val_mae"],
                score,
                self.epoch,
                0,
            )
        else:
            self.bad_epochs += 1

    def val_maes(self) -> list[float]:
        return [row["val_mae"] for row in self.history]


def _model_kwargs(cfg: BapConfig, train_ages: np.ndarray) -> dict[str, Any]:
    std = float(train_ages.std()) if train_ages.size > 1 else 1.0
    standardise = cfg.model.standardise_target
    margin = cfg.model.sfcn_margin_years
    return {
        "age_mean": float(train_ages.mean()) if standardise else 0.0,
        "age_std": max(std, 1.0) if standardise else 1.0,
        "age_range": [float(np.floor(train_ages.min() - margin)), float(np.ceil(train_ages.max() + margin))],
        "options": dict(cfg.model.options),
    }


def _split_info(data: PreparedData) -> dict[str, Any]:
    table = data.table
    info: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        rows = table[(table[keys.SPLIT] == split) & (table[SOURCE] == "real")]
        info[split] = sorted(set(rows[keys.SUBJECT_ID].astype(str)))
    info["n_synthetic_train"] = int((table[SOURCE] != "real").sum())
    return info


def run_metadata(cfg: BapConfig, data: PreparedData) -> dict[str, Any]:
    """What every checkpoint of a run shares: the model's name and build arguments (age statistics of the
    training split), the config, the normalisation, the subject split and the image grid."""
    train_ages = data.table[keys.AGE].to_numpy(np.float32)[data.indices("train")].astype(np.float64)
    return {
        "model_name": cfg.model.name,
        "model_kwargs": _model_kwargs(cfg, train_ages),
        "config": config_to_dict(cfg),
        "norm": dict(data.norm),
        "split": _split_info(data),
        "image_shape": list(data.images.shape[1:]),
    }


def _cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def model_payload(
    metadata: dict[str, Any], model: nn.Module | dict[str, torch.Tensor], *, epoch: int, val_mae: float
) -> dict[str, Any]:
    """A model checkpoint (``best.pt``, ``epoch-XXXX.pt``): the run's metadata and the weights after ``epoch``.

    ``bias_correction`` is ``None`` until the end of the run decides it (:func:`bap.final.finish_run`).
    """
    weights = model if isinstance(model, dict) else _cpu_weights(model)
    return {**metadata, "state_dict": weights, "epoch": epoch, "val_mae": val_mae, "bias_correction": None}


def resume_payload(
    metadata: dict[str, Any],
    model: nn.Module | dict[str, torch.Tensor],
    state: RunState,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """``last.pt``: the weights, optimiser, scheduler, RNG and run state, enough to continue bit for bit."""
    weights = model if isinstance(model, dict) else _cpu_weights(model)
    return {
        **metadata,
        **state.state_dict(),
        "state_dict": weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": get_rng_state(),
    }
