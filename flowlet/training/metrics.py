"""Training metrics: ``metrics.csv`` in the run folder (rewritten atomically) and optional TensorBoard."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data.io import write_table_atomic

__all__ = ["METRIC_COLUMNS", "MetricsWriter"]

logger = logging.getLogger(__name__)

#: Columns of ``metrics.csv``; losses are means over the rows' logging window.
METRIC_COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "loss_lll",
    "loss_detail",
    "val_loss",
    "val_loss_lll",
    "val_loss_detail",
    "lr",
    "grad_norm",
    "it_per_s",
    "peak_memory_mb",
)


class MetricsWriter:
    """Append-only metrics table that survives resumption.

    On resume the rows written after the resumed step are dropped (they belong to the interrupted tail of the
    run and are produced again).

    Args:
        path: ``metrics.csv`` path.
        resume_step: keep existing rows with ``step <= resume_step`` (None: start a new table).
        tensorboard_dir: write TensorBoard scalars here when ``torch.utils.tensorboard`` is importable.
    """

    def __init__(
        self, path: str | Path, *, resume_step: int | None = None, tensorboard_dir: str | Path | None = None
    ):
        self.path = Path(path)
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            old = pd.read_csv(self.path)
            self.rows = old[old["step"] <= resume_step].to_dict(orient="records")
        self.board = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("TensorBoard is not installed; logging to %s only", self.path)
            else:
                self.board = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict) -> None:
        """Add one row (missing columns are left empty) and rewrite the CSV."""
        clean = {c: row.get(c, math.nan) for c in METRIC_COLUMNS}
        self.rows.append(clean)
        write_table_atomic(self.path, pd.DataFrame(self.rows, columns=list(METRIC_COLUMNS)))
        if self.board is not None:
            for name, value in clean.items():
                if name != "step" and isinstance(value, float | int) and math.isfinite(value):
                    self.board.add_scalar(name, value, int(clean["step"]))

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """Mean training scalars over the steps of ``window`` whose update was not skipped (NaN when none was)."""

    def mean(name: str) -> float:
        values = [w[name] for w in window if not w["skipped"]]
        return float(np.mean(values)) if values else math.nan

    return {
        "train_loss": mean("loss"),
        "loss_lll": mean("loss_lll"),
        "loss_detail": mean("loss_detail"),
        "grad_norm": mean("grad_norm"),
    }
