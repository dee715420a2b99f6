"""The loop around a :class:`~flowlet.training.trainer.Trainer`: metrics rows, validation, early stopping,
checkpoints, and a call that fails before its first checkpoint leaving the run folder as it was.

The trainer owns the network, optimiser and one step; this module decides, step by step, what else happens
(:class:`~flowlet.training.policy.Cadence`, :class:`~flowlet.training.policy.EarlyStopping`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flowlet.data.io import write_table_atomic
from flowlet.data.outputs import undo_on_failure
from flowlet.training import distributed as dist_utils
from flowlet.training.metrics import MetricsWriter
from flowlet.training.outputs import RUN_FILES, write_run_files
from flowlet.training.policy import Cadence
from flowlet.training.steps import interrupt_on_sigterm

if TYPE_CHECKING:
    from flowlet.training.trainer import Trainer

__all__ = ["TrainResult", "run_loop"]

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


def run_loop(trainer: Trainer, *, resumed: bool, stop_after: int | None) -> TrainResult:
    """Train ``trainer`` from its current step to its total (or ``stop_after`` steps in total).

    The run files are written first. Until this call's first checkpoint they are provisional, under the rule of
    :func:`flowlet.data.outputs.undo_on_failure`: if the call fails before it, the run folder is left as it was (a
    new one removed, an earlier run's files put back). An interrupt (Ctrl-C, SIGTERM) of a single process saves
    the resumable state.
    """
    main = trainer.dist.is_main
    # Only the main process writes the run files, so only it has anything to put back.
    provisional = (
        undo_on_failure(trainer.run_dir, RUN_FILES) if main else contextlib.nullcontext(lambda: None)
    )
    with provisional as keep:
        if main:
            write_run_files(trainer.run_dir, trainer.config, trainer.condition_ranges, trainer.split)
            if trainer.age_balance is not None:
                write_table_atomic(trainer.run_dir / "age_balance.tsv", trainer.age_balance.table)
        end = trainer.total_steps if stop_after is None else min(trainer.total_steps, stop_after)
        cadence = Cadence.from_config(
            trainer.config.training,
            steps_per_epoch=trainer.steps_per_epoch,
            total=trainer.total_steps,
            end=end,
        )
        loop = _Loop(trainer, cadence, _metrics_writer(trainer, resumed), on_checkpoint=keep)
        bar = _progress_bar(trainer, end)
        previous_handler = interrupt_on_sigterm()
        try:
            loop.run(bar)
        except KeyboardInterrupt:
            if trainer.dist.world_size == 1:
                logger.warning("interrupted at step %d; saving the resumable state", trainer.step)
                loop.checkpoint(latest=True, best=False, keep=False)
            raise
        finally:
            bar.close()
            loop.close_metrics()  # before a failed call's files are put back
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
    dist_utils.barrier(trainer.dist)
    return TrainResult(
        run_dir=trainer.run_dir,
        step=trainer.step,
        best_val_loss=trainer.best_val_loss,
        last_val_loss=loop.last_val_loss,
        stopped_early=loop.stopped_early,
    )


class _Loop:
    """One call's steps: what each step logs, validates and saves, and whether the call stopped early."""

    def __init__(
        self,
        trainer: Trainer,
        cadence: Cadence,
        metrics: MetricsWriter | None,
        on_checkpoint: Callable[[], None],
    ) -> None:
        self.trainer, self.cadence, self.metrics = trainer, cadence, metrics
        self.on_checkpoint = on_checkpoint  # called once a checkpoint is on disk: the run files are then kept
        self.tick = time.perf_counter()  # at the last metrics row
        self.last_val_loss: float | None = None
        self.stopped_early = False

    def run(self, bar) -> None:
        t = self.trainer
        for batch in t._loader():
            if t.step >= self.cadence.end:
                break
            t.window.append(t.train_step(batch, t.step))
            t.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{t.window[-1]['loss']:.4f}")
            row, improved = self._validation(self._logged_row())
            if row is not None and self.metrics is not None:
                self._write(row)
            self.checkpoint(latest=self.cadence.saves(t.step), best=improved, keep=self.cadence.keeps(t.step))
            if t.early_stopping.exhausted:
                logger.info(
                    "early stopping after %d validations without improvement", t.early_stopping.patience
                )
                self.stopped_early = True
                self.checkpoint(latest=True, best=False, keep=False)
                break

    def checkpoint(self, *, latest: bool, best: bool, keep: bool) -> None:
        self.trainer.save_checkpoints(latest=latest, best=best, keep=keep)
        if latest or best or keep:
            self.on_checkpoint()

    def close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _logged_row(self) -> dict[str, float] | None:
        """The training metrics row of this step when one is due (it empties the trainer's window)."""
        t = self.trainer
        if not self.cadence.logs(t.step):
            return None
        rate = len(t.window) / max(1e-9, time.perf_counter() - self.tick)
        row = t.train_row(t.window, rate)
        t.window, self.tick = [], time.perf_counter()
        return row

    def _validation(self, row: dict[str, float] | None) -> tuple[dict[str, float] | None, bool]:
        """Validate when due: ``row`` with the validation scalars, and whether the loss is a new best."""
        t = self.trainer
        if not self.cadence.validates(t.step):
            return row, False
        val = t.validate()
        if val is not None:
            self.last_val_loss = val["val_loss"]
            row = {**(row or t.train_row([], math.nan)), **val}
        if self.last_val_loss is None:
            return row, False
        return row, t.early_stopping.update(self.last_val_loss)

    def _write(self, row: dict[str, float]) -> None:
        self.metrics.write(row)
        scalars = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "epoch"))
        logger.info("step %d/%d %s", self.trainer.step, self.trainer.total_steps, scalars)


def _metrics_writer(trainer: Trainer, resumed: bool) -> MetricsWriter | None:
    """``metrics.csv`` (and TensorBoard when asked) on the main process; None on the others."""
    if not trainer.dist.is_main:
        return None
    return MetricsWriter(
        trainer.run_dir / "metrics.csv",
        resume_step=trainer.step if resumed else None,
        tensorboard_dir=trainer.run_dir / "tensorboard" if trainer.config.runtime.tensorboard else None,
    )


def _progress_bar(trainer: Trainer, end: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=end,
        initial=trainer.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not (trainer.dist.is_main and trainer.config.runtime.progress),
    )
