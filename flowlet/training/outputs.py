"""Files written once per run next to the checkpoints (rank 0 only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from flowlet.data import keys
from flowlet.data.io import write_json_atomic, write_table_atomic, write_text_atomic
from flowlet.training.config import TrainConfig, config_to_dict

__all__ = ["RUN_FILES", "write_run_files"]

#: The files a run writes into its folder besides checkpoints and TensorBoard events; provisional until the first
#: checkpoint of a call (:func:`flowlet.data.outputs.undo_on_failure`).
RUN_FILES = ("config.yaml", "condition_ranges.json", "split.tsv", "metrics.csv", "age_balance.tsv")


def write_run_files(
    run_dir: Path, config: TrainConfig, condition_ranges: Mapping[str, tuple[float, float]], split
) -> None:
    """Write ``config.yaml`` (resolved), ``condition_ranges.json`` (official format) and ``split.tsv``.

    Args:
        run_dir: the run folder (created).
        config: the resolved configuration.
        condition_ranges: ``{name: (min, max)}``.
        split: a :class:`flowlet.training.data.CohortSplit`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    official = {k: {"min": lo, "max": hi} for k, (lo, hi) in condition_ranges.items()}
    write_json_atomic(run_dir / "condition_ranges.json", official)
    columns = [keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE, keys.SPLIT]
    parts = [
        t.assign(**{keys.SPLIT: name})[columns]
        for name, t in (("train", split.train.table), ("val", split.val.table))
    ]
    write_table_atomic(run_dir / "split.tsv", pd.concat(parts, ignore_index=True))
