"""The loop's decisions: which steps log, validate and save, and when early stopping ends a run."""

from __future__ import annotations

import pytest

from flowlet.training.config import OptimConfig
from flowlet.training.policy import Cadence, EarlyStopping


def test_zero_intervals_mean_once_per_epoch_and_at_each_validation():
    cadence = Cadence.from_config(
        OptimConfig(val_every=0, save_every=0, keep_every=0, log_every=4), steps_per_epoch=6, total=15, end=13
    )
    steps = range(1, 16)
    assert [s for s in steps if cadence.validates(s)] == [6, 12, 15]  # every epoch, and the run's last step
    assert [s for s in steps if cadence.logs(s)] == [4, 8, 12, 15]
    assert [s for s in steps if cadence.saves(s)] == [
        6,
        12,
        13,
    ]  # every validation interval, and this call's end
    assert not any(cadence.keeps(s) for s in steps)


def test_kept_checkpoints_follow_their_own_interval():
    cadence = Cadence.from_config(
        OptimConfig(val_every=5, save_every=2, keep_every=3), steps_per_epoch=100, total=9, end=9
    )
    assert [s for s in range(1, 10) if cadence.keeps(s)] == [3, 6, 9]
    assert [s for s in range(1, 10) if cadence.saves(s)] == [2, 4, 6, 8, 9]


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_counts_validations_since_the_best(patience):
    stopping = EarlyStopping(patience)
    assert stopping.update(1.0) and stopping.best == 1.0
    for k in range(1, patience + 1):
        assert not stopping.exhausted
        assert not stopping.update(1.0)  # equal is no improvement
        assert stopping.bad == k
    assert stopping.exhausted
    assert stopping.update(0.5) and stopping.bad == 0 and not stopping.exhausted


def test_without_patience_a_run_never_stops_early():
    stopping = EarlyStopping(None)
    for loss in (1.0, 2.0, 3.0, 4.0):
        stopping.update(loss)
    assert stopping.best == 1.0 and stopping.bad == 3 and not stopping.exhausted
