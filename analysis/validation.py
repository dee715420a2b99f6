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

__all__ = ["PHANTOM_STRUCTURES", "Structure", "tissue_dice", "truth_agreement", "truth_tissue_paths"]

TISSUE_CLASSES = ("csf", "gm", "wm")


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


def truth_tissue_paths(image_path) -> dict[str, str] | None:
    """``{"csf", "gm", "wm"}`` → the true tissue maps next to an image (``*_label-GM_probseg.nii.gz``, as
    ``flowlet-phantoms --tissue-maps`` writes them), or None when any is missing."""
    from pathlib import Path

    path = Path(image_path)
    stem = path.name.split("_T1w")[0] if "_T1w" in path.name else path.name.split(".nii")[0]
    found = {t: path.with_name(f"{stem}_label-{t.upper()}_probseg.nii.gz") for t in TISSUE_CLASSES}
    return {t: str(p) for t, p in found.items()} if all(p.is_file() for p in found.values()) else None


def tissue_dice(measured: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Dice of CSF, GM and WM between a segmentation and the truth, both as probability maps on one grid.

    ``dice_<tissue>`` compares hard labels (the most probable of background, CSF, GM, WM, background being one
    minus the tissue sum); ``soft_dice_<tissue>`` is ``2 Σ p q / (Σ p + Σ q)`` on the probabilities.
    """

    def hard(maps: Mapping[str, np.ndarray]) -> np.ndarray:
        stack = np.stack([np.asarray(maps[t], np.float32) for t in TISSUE_CLASSES])
        background = 1.0 - stack.sum(axis=0)
        return np.argmax(np.concatenate([background[None], stack]), axis=0)

    a, b = hard(measured), hard(truth)
    out = {}
    for k, t in enumerate(TISSUE_CLASSES, start=1):
        x, y = a == k, b == k
        total = x.sum() + y.sum()
        out[f"dice_{t}"] = float(2.0 * (x & y).sum() / total) if total else float("nan")
        p, q = np.asarray(measured[t], np.float64), np.asarray(truth[t], np.float64)
        denom = p.sum() + q.sum()
        out[f"soft_dice_{t}"] = float(2.0 * (p * q).sum() / denom) if denom else float("nan")
    return out


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
