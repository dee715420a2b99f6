"""Brain-age training loop: early stopping on the real validation MAE, exact resume, DDP, bf16 on CUDA.

Model selection and early stopping use the median validation MAE of the last ``train.val_smoothing`` epochs and
count only drops larger than ``train.min_delta``; with fewer than ``train.min_val_subjects`` real validation
subjects the validation MAE is too noisy to choose with, so the run logs a warning, trains every epoch and keeps
the last. Bias correction is fitted on the validation set and used only when :func:`bap.metrics.decide_bias_correction`
trusts it; ``summary.json`` says which, and every split reports the MAE with and without it.

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

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from bap import metrics
from bap.checkpoint import (
    build_from_checkpoint,
    get_rng_state,
    load_checkpoint,
    load_init_weights,
    save_checkpoint,
    set_rng_state,
)
from bap.config import BapConfig, config_to_dict
from bap.data import SOURCE, AgeDataset, PreparedData
from bap.models import build_model
from flowlet.data import keys
from flowlet.data.io import write_json_atomic, write_table_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "AgeObjective",
    "EpochSubsetSampler",
    "TrainResult",
    "WeightedEpochSampler",
    "predict_images",
    "seed_everything",
    "selection_score",
    "train",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may still use the global generator)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class AgeObjective(nn.Module):
    """Model + loss in one module, so that DDP sees one forward per step.

    ``forward(x, age, weight=None)`` returns ``(loss, pred)`` with ``loss`` a scalar and ``pred`` ``(B,)`` ages.
    ``weight`` ``(B,)`` weights each scan's loss in a weighted batch mean (per-age-bin loss weights).
    """

    def __init__(self, model: nn.Module, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, x: torch.Tensor, age: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss == "sfcn_kl":
            log_probs = self.model.log_probs(x)
            if weight is None:
                return self.model.kl_loss(log_probs, age), self.model.expected_age(log_probs)
            from bap.sfcn import soft_age_labels

            target = soft_age_labels(age.float(), self.model.bin_centers, self.model.sigma)
            per_scan = torch.nn.functional.kl_div(log_probs, target, reduction="none").sum(dim=1)
            return _weighted_mean(per_scan, weight), self.model.expected_age(log_probs)
        pred = self.model(x).float()
        error = torch.abs(pred - age)
        return (torch.mean(error) if weight is None else _weighted_mean(error, weight)), pred


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` over the batch: a rare scan weighs more than a common one, but the loss (and the
    gradient) stays on the scale of an unweighted mean however large the weights of the sparsest bins are."""
    return torch.sum(weight * values) / torch.clamp(torch.sum(weight), min=1e-12)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run returns (all of it is also on disk in ``run_dir``)."""

    run_dir: Path
    best_epoch: int
    best_val_mae: float
    predictions: pd.DataFrame
    summary: dict[str, Any]


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> np.ndarray:
    """Predict ages for normalised images ``(N, X, Y, Z)`` -> ``(N,)`` float64 years (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])[:, None]).to(device)
        with _autocast(device, bf16):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


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


class _WithWeights(torch.utils.data.Dataset):
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


def _dist_setup(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _optimizer(cfg: BapConfig, params: Any) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def _scheduler(cfg: BapConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=t.eta_min)
    if t.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=t.t_0, T_mult=t.t_mult, eta_min=t.eta_min
        )
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            factor=0.1,
            patience=t.plateau_patience,
            threshold=t.min_delta,
            threshold_mode="abs",
            min_lr=t.eta_min,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _epoch: 1.0)


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

    Returns:
        :class:`TrainResult`; the predictions use the best-validation checkpoint.
    """
    run_dir = Path(run_dir)
    device = _device()
    rank, world = _dist_setup(device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed)
    train_idx = data.indices("train")
    val_idx = data.indices("val", real_only=True)
    ages = data.table[keys.AGE].to_numpy(np.float32)
    model_kwargs = _model_kwargs(cfg, ages[train_idx].astype(np.float64))
    model = build_model(
        cfg.model.name,
        **{k: model_kwargs[k] for k in ("age_mean", "age_std", "age_range")},
        options=model_kwargs["options"],
    ).to(device)
    resuming = resume and (run_dir / "last.pt").is_file()
    if cfg.train.init and not resuming:
        keys_ = load_init_weights(
            model, cfg.train.init, model_name=cfg.model.name, skip_head_mismatch=cfg.train.init_skip_head
        )
        logger.info(
            "initial weights from %s: %d tensors loaded, output layer re-initialised: %s",
            cfg.train.init,
            len(keys_["loaded"]),
            keys_["skipped_head"] or "no",
        )
    select_on_val = _validation_can_select(cfg, data, val_idx)
    objective: nn.Module = AgeObjective(model, cfg.train.loss)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.index is not None else None
        )
    opt = _optimizer(cfg, objective.parameters())
    sched = _scheduler(cfg, opt)
    dataset = AgeDataset(
        data.images[train_idx],
        ages[train_idx],
        augment=cfg.data.augment,
        shift=cfg.data.shift_voxels,
        seed=cfg.train.seed,
    )
    for name, weights in (("draw_weights", draw_weights), ("loss_weights", loss_weights)):
        if weights is not None and np.shape(weights) != (train_idx.size,):
            raise ValueError(
                f"{name}: expected {train_idx.size} values (one per training scan), got {np.shape(weights)}"
            )
    if loss_weights is not None:
        dataset = _WithWeights(dataset, loss_weights)
    if draw_weights is not None:
        n_real = int((data.table[SOURCE].to_numpy()[train_idx] == "real").sum())
        sampler = WeightedEpochSampler(draw_weights, n_real, seed=cfg.train.seed, rank=rank, world=world)
    elif cfg.train.epoch_size == "real":
        n_real = int((data.table[SOURCE].to_numpy()[train_idx] == "real").sum())
        sampler = EpochSubsetSampler(len(dataset), n_real, seed=cfg.train.seed, rank=rank, world=world)
    else:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=world > 1
        )
    drop_last = len(dataset) // world > cfg.train.batch_size
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=drop_last)
    base = {
        "model_name": cfg.model.name,
        "model_kwargs": model_kwargs,
        "config": config_to_dict(cfg),
        "norm": dict(data.norm),
        "split": _split_info(data),
        "image_shape": list(data.images.shape[1:]),
    }
    state = {
        "epoch": 0,
        "best_val_mae": float("inf"),
        "best_score": float("inf"),
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
    }
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.is_file():
        saved = load_checkpoint(last_path)
        model.load_state_dict(saved["state_dict"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        state = {k: saved.get(k, state[k]) for k in state}
        logger.info("resumed %s at epoch %d", last_path, state["epoch"])
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    end = (
        cfg.train.epochs
        if stop_after_epochs is None
        else min(cfg.train.epochs, state["epoch"] + stop_after_epochs)
    )
    for epoch in range(state["epoch"], end):
        if select_on_val and cfg.train.patience and state["bad_epochs"] >= cfg.train.patience:
            break
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        objective.train()
        losses, errors = [], []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            leave=False,
            disable=not progress or rank != 0,
        )
        for batch in bar:
            x, age = batch[0].to(device), batch[1].to(device)
            weight = batch[2].to(device) if len(batch) > 2 else None
            with _autocast(device, cfg.train.bf16):
                loss, pred = objective(x, age, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            errors.append(torch.abs(pred.detach().float() - age).cpu())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        lr = opt.param_groups[0]["lr"]
        val_pred = predict_images(
            model,
            data.images[val_idx],
            batch_size=cfg.train.eval_batch_size,
            device=device,
            bf16=cfg.train.bf16,
        )
        val_mae = metrics.mae(ages[val_idx], val_pred) if val_idx.size else float(np.mean(losses))
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "train_mae": float(torch.cat(errors).mean()),
            "val_mae": val_mae,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        state["history"].append(row)
        state["epoch"] = epoch + 1
        score = selection_score([h["val_mae"] for h in state["history"]], cfg.train.val_smoothing)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(score)
        else:
            sched.step()
        improved = not select_on_val or score < state["best_score"] - max(cfg.train.min_delta, 1e-9)
        if improved:
            state.update(best_val_mae=val_mae, best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        logger.info(
            "epoch %d: train loss %.4f, val MAE %.3f%s",
            epoch + 1,
            row["train_loss"],
            val_mae,
            " (best)" if improved else "",
        )
        if rank == 0:
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if improved:
                save_checkpoint(
                    best_path,
                    {
                        **base,
                        "state_dict": weights,
                        "epoch": epoch + 1,
                        "val_mae": val_mae,
                        "bias_correction": None,
                    },
                )
            if cfg.train.save_every and (epoch + 1) % cfg.train.save_every == 0:
                save_checkpoint(
                    run_dir / f"epoch-{epoch + 1:04d}.pt",
                    {
                        **base,
                        "state_dict": weights,
                        "epoch": epoch + 1,
                        "val_mae": val_mae,
                        "bias_correction": None,
                    },
                )
            save_checkpoint(
                last_path,
                {
                    **base,
                    **state,
                    "state_dict": weights,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": get_rng_state(),
                },
            )
            write_table_atomic(run_dir / "metrics.csv", pd.DataFrame(state["history"]))
    if world > 1:
        dist.barrier()
    return _finish(cfg, data, run_dir, state, device, selected_on_val=select_on_val)


def selection_score(val_maes: list[float], window: int) -> float:
    """Median of the last ``window`` validation MAEs: one outlying epoch, lucky or unstable, does not move it."""
    return float(np.median(val_maes[-window:]))


def _validation_can_select(cfg: BapConfig, data: PreparedData, val_idx: np.ndarray) -> bool:
    n_val = data.table.iloc[val_idx][keys.SUBJECT_ID].nunique()
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


def _finish(
    cfg: BapConfig,
    data: PreparedData,
    run_dir: Path,
    state: dict[str, Any],
    device: torch.device,
    *,
    selected_on_val: bool = True,
) -> TrainResult:
    payload = load_checkpoint(run_dir / "best.pt")
    model = build_from_checkpoint(payload).to(device)
    table = data.table
    pred = predict_images(
        model, data.images, batch_size=cfg.train.eval_batch_size, device=device, bf16=cfg.train.bf16
    )
    frame = table[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]].copy()
    frame["pred"] = pred
    val = (table[keys.SPLIT] == "val").to_numpy() & (table[SOURCE] == "real").to_numpy()
    decision = _bias_decision(frame[keys.AGE].to_numpy(float)[val], pred[val])
    correction = decision.correction if decision else None
    frame["pred_corrected"] = correction.apply(pred) if correction else pred
    frame[keys.SPLIT] = table[keys.SPLIT].to_numpy()
    frame[SOURCE] = table[SOURCE].to_numpy()
    summary = {
        "best_epoch": state["best_epoch"],
        "best_val_mae": state["best_val_mae"],
        "epochs_run": state["epoch"],
        "selection": "smoothed validation MAE" if selected_on_val else "last epoch",
        "bias_correction": correction.to_dict() if correction else None,
        "bias_correction_check": decision.to_dict() if decision else None,
        "splits": _split_metrics(frame, decision.fitted if decision else None),
    }
    _warn_if_correction_hurts(summary)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        save_checkpoint(run_dir / "best.pt", {**payload, "bias_correction": summary["bias_correction"]})
        write_table_atomic(run_dir / "predictions.csv", frame)
        test = frame[(frame[keys.SPLIT] == "test")]
        if len(test):
            table_bins = metrics.per_bin_table(
                test[keys.AGE],
                np.abs(test["pred"] - test[keys.AGE]),
                gap=test["pred"] - test[keys.AGE],
                groups=test[keys.SUBJECT_ID].to_numpy(),
                bin_width=cfg.eval.bin_width,
                n_boot=cfg.eval.n_boot,
                seed=cfg.eval.seed,
            )
            write_table_atomic(run_dir / "test_metrics.csv", table_bins)
        write_json_atomic(run_dir / "summary.json", summary)
    return TrainResult(run_dir, state["best_epoch"], state["best_val_mae"], frame, summary)


def _bias_decision(age: np.ndarray, pred: np.ndarray) -> metrics.BiasDecision | None:
    if age.size < 2:
        return None
    decision = metrics.decide_bias_correction(age, pred)
    if decision.correction is None:
        logger.warning("bias correction not used: %s", decision.reason)
    else:
        logger.info(
            "bias correction used: slope %.3f, intercept %.2f (%d validation subjects)",
            decision.correction.slope,
            decision.correction.intercept,
            decision.n,
        )
    return decision


def _warn_if_correction_hurts(summary: dict[str, Any]) -> None:
    test = summary["splits"].get("test")
    if summary["bias_correction"] and test and test["mae_corrected"] > test["mae"]:
        logger.warning(
            "bias correction raised the test MAE from %.2f to %.2f; both are in summary.json",
            test["mae"],
            test["mae_corrected"],
        )


def _split_metrics(frame: pd.DataFrame, fitted: metrics.BiasCorrection | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    real = frame[frame[SOURCE] == "real"]
    for split, rows in real.groupby(keys.SPLIT):
        if len(rows) < 2:
            continue
        out[str(split)] = metrics.regression_summary(rows[keys.AGE], rows["pred"])
        corrected = metrics.regression_summary(rows[keys.AGE], rows["pred_corrected"])
        out[str(split)].update({f"{k}_corrected": v for k, v in corrected.items() if k != "n"})
        if fitted is not None and fitted.slope > 0:
            # What the fitted correction would give, used or not: the cost of the decision is visible.
            out[str(split)]["mae_if_corrected"] = metrics.mae(rows[keys.AGE], fitted.apply(rows["pred"]))
    return out
