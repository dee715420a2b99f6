"""The training loop: rectified-flow (or any registered path) training of the wavelet-domain U-Net.

Everything random in a step (batch choice, augmentation, noise ``x_0``, times ``t``, condition-dropout mask,
network dropout) is derived from ``(training.seed, step)``, and every process draws the *global* batch's noise and
times and keeps its own share. So a resumed run repeats the uninterrupted one exactly, and ``W`` processes with
global batch ``B`` compute the same update as one process with batch ``B`` (up to floating-point summation order).

Example:
    >>> from flowlet.training.config import load_train_config
    >>> result = Trainer(load_train_config("configs/flowlet/tiny.yaml")).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from flowlet.data import keys
from flowlet.data.cohort import Cohort, load_cohort, read_image
from flowlet.data.io import write_table_atomic
from flowlet.data.runtime import autocast_context
from flowlet.models.config import UNetConfig
from flowlet.paths import get_path, get_time_sampler
from flowlet.training import distributed as dist_utils
from flowlet.training.config import TrainConfig, config_to_dict
from flowlet.training.data import (
    StepBatchSampler,
    WaveletDataset,
    age_balanced_weights,
    compute_condition_ranges,
    split_cohort,
)
from flowlet.training.ema import EMA
from flowlet.training.loss import weighted_band_loss
from flowlet.training.metrics import MetricsWriter
from flowlet.training.outputs import write_run_files
from flowlet.training.state import capture_rng, load_train_state, restore_rng, save_train_state
from flowlet.training.steps import (
    ConditionDropout,
    cosine_schedule,
    default_model_factory,
    fixed_validation_loss,
    interrupt_on_sigterm,
    peak_memory_mb,
    step_seed,
)

__all__ = ["TrainResult", "Trainer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        run_dir: the run folder.
        step: optimiser steps done in total.
        best_val_loss: lowest fixed-noise validation loss (None without validation).
        last_val_loss: validation loss at the last validation (None without validation).
        stopped_early: early stopping ended the run.
    """

    run_dir: Path
    step: int
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_early: bool


class Trainer:
    """Owns one training run: data, network, EMA, optimiser, schedule and the run folder.

    Args:
        config: the resolved configuration.
        cohort: the cohort to train on (default: ``load_cohort(config.data.source)``).
        model_factory: builds the network from a :class:`UNetConfig` (default :class:`ConditionalUNet`).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        cohort: Cohort | None = None,
        model_factory: Callable[[UNetConfig], nn.Module] = default_model_factory,
    ) -> None:
        self.config = config
        tcfg = config.training
        if config.runtime.num_threads:
            torch.set_num_threads(config.runtime.num_threads)
        self.dist = dist_utils.init_distributed(config.runtime.device)
        self.device = self.dist.device
        self.run_dir = Path(config.runtime.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._setup_data(cohort)
        torch.manual_seed(tcfg.seed)
        model_cfg = dataclasses.replace(
            config.model, use_checkpoint=config.model.use_checkpoint or tcfg.gradient_checkpointing
        )
        self.model = model_factory(model_cfg).to(self.device)
        self.memory_format = torch.channels_last_3d if tcfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, tcfg.ema_decay) if tcfg.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=tcfg.lr,
            betas=tcfg.betas,
            eps=tcfg.eps,
            weight_decay=tcfg.weight_decay,
        )
        self.total_steps = tcfg.max_steps or tcfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.autocast_dtype, use_scaler = self._precision()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.path = get_path(config.flow.path, **config.flow.path_options)
        self.time_sampler = get_time_sampler(config.flow.time_sampler, **config.flow.time_sampler_options)
        self.train_net: nn.Module = ConditionDropout(self.model)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = nn.parallel.DistributedDataParallel(
                self.train_net, device_ids=ids, find_unused_parameters=config.flow.condition_dropout > 0
            )
        if tcfg.compile:
            self.train_net = torch.compile(self.train_net)
        self.step = 0
        self.best_val_loss: float | None = None
        self.bad_validations = 0
        self.window: list[dict[str, float]] = []  # per-step scalars since the last metrics row
        self._checkpointed = False  # set once fit() has written a checkpoint

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_data(self, cohort: Cohort | None) -> None:
        cfg = self.config
        if cohort is None:
            if cfg.data.source is None:
                raise ValueError("data.source is not set; pass --set data.source=<cohort folder or table>")
            cohort = load_cohort(cfg.data.source)
        names = cfg.model.condition_names
        self.condition_ranges = compute_condition_ranges(cohort.table, names, cfg.data.condition_columns)
        self.split = split_cohort(
            cohort, cfg.data.val_fraction, seed=cfg.data.split_seed, age_bin_width=cfg.data.age_bin_width
        )
        self.train_set = WaveletDataset(
            self.split.train.table, cfg.data, names, self.condition_ranges, augment=True
        )
        self.val_set = WaveletDataset(
            self.split.val.table, cfg.data, names, self.condition_ranges, augment=False
        )
        self.steps_per_epoch = len(self.train_set) // cfg.training.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_set)} training scans are fewer than training.batch_size "
                f"{cfg.training.batch_size}"
            )
        self.affine = read_image(self.train_set.paths[0]).affine
        self.age_balance = None
        if cfg.data.age_balanced:
            self.age_balance = age_balanced_weights(
                self.split.train.table[cfg.data.condition_columns[0]].to_numpy(),
                cfg.data.age_balance_bin_width,
            )
            for row in self.age_balance.table.itertuples():
                logger.info(
                    "age-balanced sampling: bin %s, %d scans, %.1f draws per epoch (%.2f per scan; unbalanced %.1f)",
                    row.bin, row.n_scans, row.draws_per_epoch, row.draws_per_scan, row.natural_probability * len(self.train_set),
                )  # fmt: skip
        logger.info(
            "training on %d scans (%d subjects), validating on %d scans (%d subjects)",
            len(self.split.train),
            len(self.split.train.subjects()),
            len(self.split.val),
            len(self.split.val.subjects()),
        )

    def _precision(self) -> tuple[torch.dtype | None, bool]:
        name = self.config.training.precision
        if name == "auto":
            name = "bf16" if self.device.type == "cuda" else "fp32"
        if name == "fp16" and self.device.type != "cuda":
            raise ValueError("training.precision 'fp16' needs a CUDA device; use fp32 or bf16")
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name], name == "fp16"

    def _lr_factor(self, step: int) -> float:
        t = self.config.training
        return (
            cosine_schedule(step, total=self.total_steps, warmup=t.warmup_steps, lr=t.lr, min_lr=t.min_lr)
            / t.lr
        )

    def _autocast(self):
        return autocast_context(self.device, self.autocast_dtype, cuda_only=False)

    # ------------------------------------------------------------------------------------------------- step
    def _draws(self, step: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """Noise, times and condition-dropout mask of the *global* batch of ``step`` (same on every process)."""
        g = torch.Generator().manual_seed(step_seed(self.config.training.seed, step, 1))
        t = self.time_sampler(shape[0], generator=g)
        x_0 = torch.randn(shape, generator=g)
        drop = torch.rand(shape[0], generator=g) < self.config.flow.condition_dropout
        return x_0, t, drop

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        """One optimiser step on this process's share of the global batch of ``step``.

        Returns:
            ``{"loss", "loss_lll", "loss_detail", "grad_norm", "skipped"}`` as floats.
        """
        fcfg, tcfg = self.config.flow, self.config.training
        x_1 = (
            batch[keys.IMAGE].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        )
        conditions = {k: v.to(self.device) for k, v in batch["conditions"].items()}
        local = x_1.shape[0]
        x_0, t, drop = self._draws(step, (local * self.dist.world_size, *x_1.shape[1:]))
        share = slice(self.dist.rank * local, (self.dist.rank + 1) * local)
        x_0 = x_0[share].to(self.device).contiguous(memory_format=self.memory_format)
        t, drop = t[share].to(self.device), drop[share].to(self.device)
        torch.manual_seed(step_seed(tcfg.seed, step, 2 + self.dist.rank))  # network dropout
        self.model.train()
        sample = self.path.sample(x_0, x_1, t)
        with self._autocast():
            prediction = self.train_net(sample.x_t, t, conditions, drop)
        loss, scalars = weighted_band_loss(
            prediction.float(),
            sample.dx_t,
            lll_weight=fcfg.lll_loss_weight,
            detail_weight=fcfg.detail_loss_weight,
        )
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        dist_utils.all_reduce_sum(finite, self.dist)
        self.optimizer.zero_grad(set_to_none=True)
        if finite.item() < self.dist.world_size:
            logger.warning("step %d: non-finite loss, update skipped", step)
            return {**{k: float(v) for k, v in scalars.items()}, "grad_norm": math.nan, "skipped": 1.0}
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = tcfg.grad_clip_norm if tcfg.grad_clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {k: float(v) for k, v in scalars.items()}
        return {**out, "grad_norm": float(grad_norm), "skipped": 0.0}

    # ------------------------------------------------------------------------------------------- validation
    def eval_model(self) -> nn.Module:
        """The weights used for validation and sampling: EMA when enabled, else the raw network."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float] | None:
        """Fixed-noise, fixed-time validation loss of :meth:`eval_model` (see :func:`fixed_validation_loss`)."""
        fcfg, tcfg = self.config.flow, self.config.training
        return fixed_validation_loss(
            self.eval_model(),
            self.val_set,
            self.path,
            repeats=tcfg.val_repeats,
            seed=tcfg.val_seed,
            batch_size=max(1, tcfg.batch_size // self.dist.world_size),
            device=self.device,
            autocast=self._autocast,
            weights=(fcfg.lll_loss_weight, fcfg.detail_loss_weight),
            dist=self.dist,
        )

    # -------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best_val_loss": self.best_val_loss,
            "bad_validations": self.bad_validations,
            "rng": capture_rng(),
            "config": config_to_dict(self.config),
            "window": [dict(w) for w in self.window],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the inverse, on any device)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("the saved state has no EMA weights but training.ema_decay > 0")
            self.ema.load_state_dict(state["ema"])
        self.step, self.best_val_loss = int(state["step"]), state["best_val_loss"]
        self.bad_validations = int(state["bad_validations"])
        self.window = [dict(w) for w in state.get("window", [])]
        restore_rng(state["rng"])

    def save_bundle(self, path: Path) -> Path:
        """A self-contained sampling checkpoint (:func:`flowlet.checkpoint.save_bundle`) with the EMA weights."""
        import flowlet
        from flowlet.checkpoint import save_bundle

        provenance = {
            "toolkit_version": flowlet.__version__,
            "step": self.step,
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "data_source": str(self.config.data.source),
            "train_scans": len(self.train_set),
            "val_scans": len(self.val_set),
            "train_config": config_to_dict(self.config),
        }
        return save_bundle(
            path,
            self.model,
            self.config.model,
            condition_ranges=self.condition_ranges,
            model_input_size=tuple(self.config.data.image_size),
            save_size=tuple(self.config.data.save_size),
            path_name=self.config.flow.path,
            provenance=provenance,
            ema_state_dict=self.ema.module.state_dict() if self.ema is not None else None,
            affine=self.affine,
        )

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _checkpoint(self, *, latest: bool, best: bool, keep: bool) -> None:
        self._checkpointed = self._checkpointed or latest or best or keep
        if not self.dist.is_main:
            return
        if latest:
            save_train_state(self.ckpt_dir / "state.pt", self.state_dict())
            self.save_bundle(self.ckpt_dir / "latest.pt")
        if best:
            self.save_bundle(self.ckpt_dir / "best.pt")
        if keep:
            self.save_bundle(self.ckpt_dir / f"step-{self.step:07d}.pt")

    # ------------------------------------------------------------------------------------------------- loop
    def resume(self) -> bool:
        """Load ``checkpoints/state.pt`` when the run folder has one; returns whether it did."""
        path = self.ckpt_dir / "state.pt"
        if not path.is_file():
            logger.info("no saved state in %s; starting a new run", self.ckpt_dir)
            return False
        self.load_state_dict(load_train_state(path, map_location=self.device))
        logger.info("resumed from %s at step %d", path, self.step)
        return True

    def _loader(self) -> DataLoader:
        sampler = StepBatchSampler(
            len(self.train_set),
            self.config.training.batch_size,
            seed=self.config.training.seed,
            start_step=self.step,
            total_steps=self.total_steps,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            weights=None if self.age_balance is None else self.age_balance.weights,
        )
        workers = self.config.data.num_workers
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_after`` steps in total), validating and checkpointing.

        Args:
            resume: continue from ``checkpoints/state.pt`` when it exists.
            stop_after: stop (and save the resumable state) once this many steps are done in total.
        """
        from tqdm.auto import tqdm

        tcfg = self.config.training
        resumed = self.resume() if resume else False
        # Files this call creates; removed again if it fails before its first checkpoint (no partial run folder).
        fresh = [
            self.run_dir / name
            for name in (
                "config.yaml",
                "condition_ranges.json",
                "split.tsv",
                "metrics.csv",
                "age_balance.tsv",
            )
            if not (self.run_dir / name).exists()
        ]
        self._checkpointed = False
        if self.dist.is_main:
            write_run_files(self.run_dir, self.config, self.condition_ranges, self.split)
            if self.age_balance is not None:
                write_table_atomic(self.run_dir / "age_balance.tsv", self.age_balance.table)
        metrics = (
            MetricsWriter(
                self.run_dir / "metrics.csv",
                resume_step=self.step if resumed else None,
                tensorboard_dir=self.run_dir / "tensorboard"
                if self.config.runtime.tensorboard and self.dist.is_main
                else None,
            )
            if self.dist.is_main
            else None
        )
        end = min(self.total_steps, stop_after) if stop_after is not None else self.total_steps
        val_every = tcfg.val_every or self.steps_per_epoch
        save_every = tcfg.save_every or val_every
        last_val, stopped = None, False
        tick = time.perf_counter()
        bar = tqdm(
            total=end,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.dist.is_main and self.config.runtime.progress),
        )
        previous_handler = interrupt_on_sigterm()
        try:
            for batch in self._loader():
                if self.step >= end:
                    break
                self.window.append(self.train_step(batch, self.step))
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{self.window[-1]['loss']:.4f}")
                row = None
                if self.step % tcfg.log_every == 0 or self.step == self.total_steps:
                    rate = len(self.window) / max(1e-9, time.perf_counter() - tick)
                    row = self._train_row(self.window, rate)
                    self.window, tick = [], time.perf_counter()
                is_val = self.step % val_every == 0 or self.step == self.total_steps
                if is_val:
                    val = self.validate()
                    if val is not None:
                        last_val = val["val_loss"]
                        row = {**(row or self._train_row([], math.nan)), **val}
                improved = self._track_best(last_val) if is_val and last_val is not None else False
                if row is not None and metrics is not None:
                    metrics.write(row)
                    logger.info(
                        "step %d/%d %s",
                        self.step,
                        self.total_steps,
                        " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "epoch")),
                    )
                self._checkpoint(
                    latest=self.step % save_every == 0 or self.step == end,
                    best=improved,
                    keep=tcfg.keep_every > 0 and self.step % tcfg.keep_every == 0,
                )
                p = tcfg.early_stop_patience
                if p is not None and self.bad_validations >= p:
                    logger.info("early stopping after %d validations without improvement", p)
                    stopped = True
                    self._checkpoint(latest=True, best=False, keep=False)
                    break
        except KeyboardInterrupt:
            if self.dist.world_size == 1:
                logger.warning("interrupted at step %d; saving the resumable state", self.step)
                self._checkpoint(latest=True, best=False, keep=False)
            raise
        except Exception:
            if metrics is not None:
                metrics.close()
                metrics = None
            if self.dist.is_main and not self._checkpointed:
                for path in fresh:
                    path.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        dist_utils.barrier(self.dist)
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            best_val_loss=self.best_val_loss,
            last_val_loss=last_val,
            stopped_early=stopped,
        )

    def _track_best(self, val_loss: float) -> bool:
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss, self.bad_validations = val_loss, 0
            return True
        self.bad_validations += 1
        return False

    def _train_row(self, window: list[dict[str, float]], rate: float) -> dict[str, float]:
        def mean(name: str) -> float:
            values = [w[name] for w in window if not w["skipped"]]
            return float(np.mean(values)) if values else math.nan

        peak = peak_memory_mb(self.device)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "train_loss": mean("loss"),
            "loss_lll": mean("loss_lll"),
            "loss_detail": mean("loss_detail"),
            "grad_norm": mean("grad_norm"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "it_per_s": rate,
            "peak_memory_mb": peak,
        }
