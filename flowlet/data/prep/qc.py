"""QC of a preprocessing run: the tidy table with robust outlier flags, and montage pages of mid-slices."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.io import atomic_path
from flowlet.data.nifti import load_volume
from flowlet.data.prep.measures import robust_z
from flowlet.data.prep.subject import ScanResult

logger = logging.getLogger(__name__)

__all__ = ["QC_MEASURES", "qc_table", "write_montage"]

#: Measures that get a robust z-score; a scan is an outlier when any |z| exceeds the limit.
QC_MEASURES: tuple[str, ...] = ("ncc", "mutual_information_nats", "brain_volume_mm3", "affine_determinant")
#: Robust z-scores need a few scans to mean anything.
_MIN_SCANS_FOR_Z = 5
_PER_PAGE = 12


def qc_table(results: Sequence[ScanResult], *, z_limit: float = 3.5, min_ncc: float = 0.5) -> pd.DataFrame:
    """One row per scan: identity, status and reason, QC measures, robust z-scores and flags.

    Flags (``;``-separated in ``flags``): ``failed``, ``low_ncc`` (correlation with the template below
    ``min_ncc``), and ``<measure>_z`` when the robust z-score of a measure among the successful scans exceeds
    ``z_limit`` in absolute value (computed only with at least five successful scans). ``outlier`` is true when
    any flag is set.
    """
    rows = []
    for r in results:
        row = {
            keys.SUBJECT_ID: r.job.subject_id,
            keys.SESSION_ID: r.job.session_id,
            "source": str(r.job.source),
            "status": r.status,
            "reason": r.reason,
            "resumed": r.resumed,
            "output": r.outputs.get("image", ""),
            "seconds": round(r.seconds, 3),
        }
        row.update(
            {m: r.qc.get(m, np.nan) for m in (*QC_MEASURES, "brain_volume_mni_mm3", "template_mask_dice")}
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ok = (table["status"] == "ok").to_numpy()
    flags: list[list[str]] = [["failed"] if not k else [] for k in ok]
    for measure in QC_MEASURES:
        z = np.full(len(table), np.nan)
        if ok.sum() >= _MIN_SCANS_FOR_Z:
            z[ok] = robust_z(table.loc[ok, measure].to_numpy(dtype=np.float64))
        table[f"{measure}_z"] = z
        for i in np.flatnonzero(np.abs(np.nan_to_num(z)) > z_limit):
            flags[i].append(f"{measure}_z")
    for i in np.flatnonzero(ok & (table["ncc"].to_numpy(dtype=np.float64) < min_ncc)):
        flags[i].append("low_ncc")
    table["flags"] = [";".join(f) for f in flags]
    table["outlier"] = [bool(f) for f in flags]
    return table


def _outline(ax, mask_slice: np.ndarray) -> None:
    if mask_slice.any() and not mask_slice.all():
        ax.contour(mask_slice.T.astype(float), levels=[0.5], colors="red", linewidths=0.6, origin="lower")


def _mid_slices(data: np.ndarray) -> list[np.ndarray]:
    x, y, z = (s // 2 for s in data.shape)
    return [data[x, :, :], data[:, y, :], data[:, :, z]]


def write_montage(
    results: Sequence[ScanResult], out_dir: Path, template_mask: np.ndarray, qc_dir: Path
) -> list[Path]:
    """PNG pages (12 scans each): sagittal, coronal and axial mid-slices with the template brain outline in red.

    Args:
        results: scans; only successful ones are drawn.
        out_dir: output root the results' paths are relative to.
        template_mask: ``(X, Y, Z)`` boolean template brain mask on the output grid.
        qc_dir: folder for ``prep_montage-NN.png``.

    Returns:
        The written pages.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    pages = []
    outlines = _mid_slices(np.asarray(template_mask))
    for page, start in enumerate(range(0, len(ok), _PER_PAGE), start=1):
        chunk = ok[start : start + _PER_PAGE]
        fig, axes = plt.subplots(len(chunk), 3, figsize=(6, 2 * len(chunk)), squeeze=False)
        for row, result in zip(axes, chunk):
            data = load_volume(out_dir / result.outputs["image"]).data
            vmax = float(np.percentile(data[data > 0], 99)) if np.any(data > 0) else 1.0
            for ax, image, outline in zip(row, _mid_slices(data), outlines):
                ax.imshow(image.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
                _outline(ax, outline)
                ax.set_axis_off()
            label = f"sub-{result.job.subject_id}" + (
                f" ses-{result.job.session_id}" if result.job.session_id != keys.UNKNOWN else ""
            )
            row[0].set_title(label, fontsize=7, loc="left")
        fig.tight_layout()
        path = qc_dir / f"prep_montage-{page:02d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        pages.append(path)
    return pages
