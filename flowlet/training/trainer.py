"""The trainer: rectified-flow (or any registered path) training of the wavelet-domain U-Net, one step at a time.

The trainer owns the run's data, network, EMA, optimiser and schedule, one optimiser step, validation and the
resumable state; :mod:`flowlet.training.loop` runs the steps and decides what to log, validate and save.

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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from flowlet.data import keys
from flowlet.data.cohort import Cohort
from flowlet.data.runtime import autocast_context, autocast_dtype
from flowlet.models.config import UNetConfig
from flowlet.paths import get_path, get_time_sampler
from flowlet.training import distributed as dist_utils
from flowlet.training.config import TrainConfig, config_to_dict
from flowlet.training.ema import EMA
from flowlet.training.loop import TrainResult, run_loop
from flowlet.training.loss import weighted_band_loss
from flowlet.training.metrics import window_means
from flowlet.training.policy import EarlyStopping
from flowlet.training.run_data import prepare_run_data, step_loader
from flowlet.training.state import capture_rng, load_train_state, restore_rng, save_train_state
from flowlet.training.steps import (
    ConditionDropout,
    cosine_schedule,
    default_model_factory,
    fixed_validation_loss,
    peak_memory_mb,
    step_seed,
)

__all__ = ["TrainResult", "Trainer"]

logger = logging.getLogger(__name__)


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
        self.early_stopping = EarlyStopping(tcfg.early_stop_patience)
        self.window: list[dict[str, float]] = []  # per-step scalars since the last metrics row

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_data(self, cohort: Cohort | None) -> None:
        self.data = prepare_run_data(self.config, cohort)
        self.condition_ranges, self.split = self.data.condition_ranges, self.data.split
        self.train_set, self.val_set = self.data.train_set, self.data.val_set
        self.steps_per_epoch, self.affine = self.data.steps_per_epoch, self.data.affine
        self.age_balance = self.data.age_balance

    def _precision(self) -> tuple[torch.dtype | None, bool]:
        name = self.config.training.precision
        if name == "auto":
            name = "bf16" if self.device.type == "cuda" else "fp32"
        if name == "fp16" and self.device.type != "cuda":
            raise ValueError("training.precision 'fp16' needs a CUDA device; use fp32 or bf16")
        return autocast_dtype(name), name == "fp16"

    def _lr_factor(self, step: int) -> float:
        t = self.config.training
        return (
            cosine_schedule(step, total=self.total_steps, warmup=t.warmup_steps, lr=t.lr, min_lr=t.min_lr)
            / t.lr
        )

    def _autocast(self):
        if (
            self.autocast_dtype is None
        ):  # fp32 training also switches off an autocast opened around the trainer
            return torch.autocast(self.device.type, enabled=False)
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
            "best_val_loss": self.early_stopping.best,
            "bad_validations": self.early_stopping.bad,
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
        self.step = int(state["step"])
        self.early_stopping.best = state["best_val_loss"]
        self.early_stopping.bad = int(state["bad_validations"])
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

    def save_checkpoints(self, *, latest: bool, best: bool, keep: bool) -> None:
        """On the main process: ``state.pt`` and ``latest.pt`` (latest), ``best.pt``, a kept ``step-XXXXXXX.pt``."""
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
        return step_loader(
            self.data,
            self.config,
            start_step=self.step,
            total_steps=self.total_steps,
            dist=self.dist,
            device=self.device,
        )

    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train until ``total_steps`` (or ``stop_after`` steps in total), validating and checkpointing.

        Args:
            resume: continue from ``checkpoints/state.pt`` when it exists.
            stop_after: stop (and save the resumable state) once this many steps are done in total.
        """
        resumed = self.resume() if resume else False
        return run_loop(self, resumed=resumed, stop_after=stop_after)

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss so far (None before the first validation)."""
        return self.early_stopping.best

    def train_row(self, window: list[dict[str, float]], rate: float) -> dict[str, float]:
        """A metrics row: the means over ``window`` (see :func:`window_means`), learning rate, speed, memory."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            **window_means(window),
            "lr": self.optimizer.param_groups[0]["lr"],
            "it_per_s": rate,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
