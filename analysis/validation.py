"""Agreement of measured volumes with known ground truth (the phantom cohort writes ``*_volumes.tsv``).

A *structure* compares one measured ``(region, tissue)`` of the volumetrics table with the sum of one or more
ground-truth ``(region, tissue)`` rows, joined on the subject key (never on row order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.data.keys import SUBJECT_ID

__all__ = ["PHANTOM_STRUCTURES", "Structure", "truth_agreement"]


@dataclass(frozen=True)
class Structure:
    """One compared quantity.

    Attributes:
        region, tissue: row of the measured volumetrics table.
        truth_regions, truth_tissue: rows of the truth table that are summed.
    """

    region: str
    tissue: str
    truth_regions: tuple[str, ...]
    truth_tissue: str


#: The phantom's truth layout (region names of Harvard-Oxford, whole-head rows named ``intracranial``).
PHANTOM_STRUCTURES: dict[str, Structure] = {
    "lateral-ventricles": Structure(
        "lateral-ventricles", "csf", ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle"), "all"
    ),
    "hippocampus": Structure("hippocampus", "all", ("Left_Hippocampus", "Right_Hippocampus"), "all"),
    "total-gm": Structure("whole-brain", "gm", ("intracranial",), "gm"),
    "total-wm": Structure("whole-brain", "wm", ("intracranial",), "wm"),
    "total-csf": Structure("whole-brain", "csf", ("intracranial",), "csf"),
}


def truth_agreement(
    measured: pd.DataFrame,
    truth: pd.DataFrame,
    structures: Mapping[str, Structure] = PHANTOM_STRUCTURES,
    *,
    key: str = SUBJECT_ID,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-subject measured-versus-true volumes and per-structure agreement statistics.

    Args:
        measured: volumetrics table (``key``, ``region``, ``tissue``, ``volume_mm3``).
        truth: ground truth (``key``, ``region``, ``tissue``, ``volume_mm3``).
        structures: name → :class:`Structure`.
        key: subject column shared by both tables.

    Returns:
        ``(pairs, summary)``: ``pairs`` has ``key``, ``structure``, ``volume_mm3``, ``volume_true_mm3``;
        ``summary`` has ``structure``, ``n``, ``pearson_r``, ``mean_volume_true_mm3``, ``mean_volume_mm3``,
        ``mean_abs_pct_error`` and ``bias_pct``.
    """
    rows = []
    for name, s in structures.items():
        m = measured[(measured["region"] == s.region) & (measured["tissue"] == s.tissue)][[key, "volume_mm3"]]
        t = truth[truth["region"].isin(s.truth_regions) & (truth["tissue"] == s.truth_tissue)]
        found = set(t["region"])
        if m.empty or found != set(s.truth_regions):
            continue
        t = (
            t.groupby(key, as_index=False)["volume_mm3"]
            .sum()
            .rename(columns={"volume_mm3": "volume_true_mm3"})
        )
        rows.append(m.merge(t, on=key, how="inner", validate="1:1").assign(structure=name))
    cols = [key, "structure", "volume_mm3", "volume_true_mm3"]
    pairs = pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)
    return pairs, _summary(pairs, list(structures))


def _summary(pairs: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    out = []
    for name in order:
        part = pairs[pairs["structure"] == name]
        if part.empty:
            continue
        x, y = part["volume_true_mm3"].to_numpy(float), part["volume_mm3"].to_numpy(float)
        r = float(stats.pearsonr(x, y).statistic) if len(part) > 2 and x.std() > 0 and y.std() > 0 else np.nan
        err = 100.0 * (y - x) / np.where(x != 0, x, np.nan)
        out.append(
            {
                "structure": name,
                "n": len(part),
                "pearson_r": r,
                "mean_volume_true_mm3": float(x.mean()),
                "mean_volume_mm3": float(y.mean()),
                "mean_abs_pct_error": float(np.nanmean(np.abs(err))),
                "bias_pct": float(np.nanmean(err)),
            }
        )
    return pd.DataFrame(out)
