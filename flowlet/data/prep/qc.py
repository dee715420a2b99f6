"""QC of a preprocessing run: the tidy table with the pass/fail verdict of every scan and robust outlier flags."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.prep.measures import robust_z
from flowlet.data.prep.subject import ScanResult

logger = logging.getLogger(__name__)

__all__ = ["QC_COLUMNS", "QC_MEASURES", "qc_table"]

#: Measures that get a robust z-score among the scans that passed; large |z| marks a scan worth a look.
QC_MEASURES: tuple[str, ...] = ("ncc", "brain_mask_dice", "brain_volume_mm3", "affine_determinant")
#: Every QC measure in the table (see docs/prep.md).
QC_COLUMNS: tuple[str, ...] = (
    "ncc",
    "brain_mask_dice",
    "affine_determinant",
    "scale_min",
    "scale_max",
    "mutual_information_nats",
    "brain_volume_mm3",
    "brain_volume_mni_mm3",
)
#: Robust z-scores need a few scans to mean anything.
_MIN_SCANS_FOR_Z = 5


def qc_table(results: Sequence[ScanResult], *, z_limit: float = 3.5) -> pd.DataFrame:
    """One row per scan: identity, status (``ok``, ``rejected``, ``failed``) and reason, QC measures, the verdict
    ``qc_pass``, robust z-scores and outlier flags.

    ``qc_pass`` is true only for ``ok`` scans (processed and within every QC limit). ``flags`` (``;``-separated)
    holds ``failed`` or ``rejected`` and, among passing scans, ``<measure>_z`` when the robust z-score of a
    measure exceeds ``z_limit`` in absolute value (with at least five passing scans): not an error, a scan
    to look at first. ``outlier`` is true when any flag is set.
    """
    rows = []
    for r in results:
        row = {
            keys.SUBJECT_ID: r.job.subject_id,
            keys.SESSION_ID: r.job.session_id,
            "source": str(r.job.source),
            "status": r.status,
            "qc_pass": r.status == "ok",
            "reason": r.reason,
            "resumed": r.resumed,
            "output": r.outputs.get("image", ""),
            "montage": r.outputs.get("montage", ""),
            "seconds": round(r.seconds, 3),
        }
        row.update({m: r.qc.get(m, np.nan) for m in QC_COLUMNS})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ok = (table["status"] == "ok").to_numpy()
    flags: list[list[str]] = [[] if k else [str(s)] for k, s in zip(ok, table["status"])]
    for measure in QC_MEASURES:
        z = np.full(len(table), np.nan)
        if ok.sum() >= _MIN_SCANS_FOR_Z:
            z[ok] = robust_z(table.loc[ok, measure].to_numpy(dtype=np.float64))
        table[f"{measure}_z"] = z
        for i in np.flatnonzero(np.abs(np.nan_to_num(z)) > z_limit):
            flags[i].append(f"{measure}_z")
    table["flags"] = [";".join(f) for f in flags]
    table["outlier"] = [bool(f) for f in flags]
    return table
