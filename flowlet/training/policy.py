"""When a training run logs, validates, checkpoints and stops: the loop asks, these objects decide.

Steps are counted after the update, from 1: step ``s`` is the state after ``s`` optimiser steps.

Example:
    >>> cadence = Cadence(end=20, total=20, log_every=5, val_every=10, save_every=10, keep_every=0)
    >>> [s for s in range(1, 21) if cadence.validates(s)]
    [10, 20]
    >>> stopping = EarlyStopping(patience=1)
    >>> stopping.update(0.5), stopping.update(0.6), stopping.exhausted
    (True, False, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from flowlet.training.config import OptimConfig

__all__ = ["Cadence", "EarlyStopping"]


@dataclass(frozen=True)
class Cadence:
    """The steps at which a run writes a metrics row, validates and saves.

    Attributes:
        end: the last step of this call (``stop_after`` or the run's total).
        total: the run's total number of steps (its last step always logs and validates).
        log_every: a metrics row every this many steps.
        val_every: a validation every this many steps.
        save_every: the resumable state and ``latest.pt`` every this many steps (and at ``end``).
        keep_every: a kept ``step-XXXXXXX.pt`` every this many steps (0: never).
    """

    end: int
    total: int
    log_every: int
    val_every: int
    save_every: int
    keep_every: int

    @classmethod
    def from_config(cls, tcfg: OptimConfig, *, steps_per_epoch: int, total: int, end: int) -> Cadence:
        """``val_every`` 0 is once per epoch; ``save_every`` 0 is at each validation."""
        val_every = tcfg.val_every or steps_per_epoch
        return cls(
            end=end,
            total=total,
            log_every=tcfg.log_every,
            val_every=val_every,
            save_every=tcfg.save_every or val_every,
            keep_every=tcfg.keep_every,
        )

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total

    def validates(self, step: int) -> bool:
        return step % self.val_every == 0 or step == self.total

    def saves(self, step: int) -> bool:
        return step % self.save_every == 0 or step == self.end

    def keeps(self, step: int) -> bool:
        return self.keep_every > 0 and step % self.keep_every == 0


@dataclass
class EarlyStopping:
    """The best validation loss so far and the validations since it last improved.

    Attributes:
        patience: stop after this many validations without improvement (None: never).
        best: the lowest validation loss seen (None before the first validation).
        bad: validations since ``best`` was set.
    """

    patience: int | None
    best: float | None = None
    bad: int = 0

    def update(self, val_loss: float) -> bool:
        """Record one validation; returns whether it is a new best (the ``best.pt`` checkpoint is due)."""
        if self.best is None or val_loss < self.best:
            self.best, self.bad = val_loss, 0
            return True
        self.bad += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Whether ``patience`` validations in a row brought no improvement."""
        return self.patience is not None and self.bad >= self.patience
