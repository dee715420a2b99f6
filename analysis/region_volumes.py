"""Tidy region volume tables: exact label volumes, and tissue volumes and mean intensities per atlas region.

Volume of a tissue in a region = Σ over the region's voxels of the tissue probability × the voxel volume
``|det(affine[:3, :3])|``; with hard (0/1) maps this is exactly voxel count × voxel volume. Every atlas region gets
a row per tissue (``csf``, ``gm``, ``wm``) and an ``all`` row (sum of the three), plus a ``whole-brain`` pseudo-region
(index 0) over the whole brain mask, which gives total GM/WM/CSF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.tissue_maps import TISSUES, TissueMaps
from flowlet.data.keys import SUBJECT_ID
from flowlet.data.nifti import voxel_volume_mm3

__all__ = ["COLUMNS", "TOTAL", "WHOLE_BRAIN", "combine_regions", "label_volumes", "region_tissue_table"]

#: Name of the pseudo-region (index 0) that covers the whole brain mask.
WHOLE_BRAIN = "whole-brain"
TOTAL = "all"
COLUMNS: tuple[str, ...] = (SUBJECT_ID, "region_index", "region", "tissue", "volume_mm3", "mean_intensity")


def label_volumes(
    labels: np.ndarray, affine: np.ndarray, *, names: Mapping[int, str] | None = None
) -> pd.DataFrame:
    """Exact volume of every non-zero label: voxel count × ``|det(affine[:3, :3])|``.

    Args:
        labels: ``(X, Y, Z)`` integer label image.
        affine: ``(4, 4)`` voxel-to-world matrix (any voxel shape, including anisotropic or oblique).
        names: optional ``{index: name}``; named labels absent from the image get a row with 0 voxels.

    Returns:
        ``region_index``, ``region``, ``n_voxels``, ``volume_mm3``, sorted by index.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 3D integer array, got {labels.ndim}D {labels.dtype}")
    index, counts = np.unique(labels[labels != 0], return_counts=True)
    count = dict(zip(index.tolist(), counts.tolist()))
    wanted = sorted(set(count) | set(names or {}))
    vv = voxel_volume_mm3(affine)
    return pd.DataFrame(
        {
            "region_index": np.asarray(wanted, np.int64),
            "region": [(names or {}).get(i, str(i)) for i in wanted],
            "n_voxels": np.asarray([count.get(i, 0) for i in wanted], np.int64),
            "volume_mm3": np.asarray([count.get(i, 0) * vv for i in wanted], np.float64),
        }
    )


def region_tissue_table(maps: TissueMaps, labels: np.ndarray, names: Mapping[int, str]) -> pd.DataFrame:
    """Tissue volumes and mean intensities of one image in every region of a label map on the same grid.

    Args:
        maps: tissue maps of the image (``probabilities`` and ``intensity`` on the label grid).
        labels: ``(X, Y, Z)`` integer atlas labels.
        names: ``{index: name}`` of the regions to report (regions absent from ``labels`` get zero volume and NaN
            intensity).

    Returns:
        ``region_index``, ``region``, ``tissue`` (csf/gm/wm/all), ``volume_mm3``, ``mean_intensity``; the
        :data:`WHOLE_BRAIN` rows (index 0) come first.
    """
    labels = np.asarray(labels)
    if labels.shape != maps.mask.shape:
        raise ValueError(f"labels shape {labels.shape} differs from the tissue maps' {maps.mask.shape}")
    n = int(max(max(names, default=0), labels.max(initial=0))) + 1
    flat = np.where(labels > 0, labels, 0).ravel().astype(np.int64)
    whole = maps.mask.ravel()
    intensity = maps.intensity.ravel().astype(np.float64)
    vv = maps.voxel_volume_mm3
    rows = []
    for tissue in (*TISSUES, TOTAL):
        if tissue == TOTAL:
            prob = sum(maps.probabilities[t].ravel().astype(np.float64) for t in TISSUES)
        else:
            prob = maps.probabilities[tissue].ravel().astype(np.float64)
        mass = np.bincount(flat, weights=prob, minlength=n)
        weighted = np.bincount(flat, weights=prob * intensity, minlength=n)
        rows.append(_rows(tissue, mass, weighted, names, vv))
        w_mass, w_int = prob[whole].sum(), (prob * intensity)[whole].sum()
        rows.append(
            pd.DataFrame(
                {
                    "region_index": [0],
                    "region": [WHOLE_BRAIN],
                    "tissue": [tissue],
                    "volume_mm3": [w_mass * vv],
                    "mean_intensity": [w_int / w_mass if w_mass > 0 else np.nan],
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["region_index", "tissue"], kind="stable").reset_index(drop=True)


def _rows(
    tissue: str, mass: np.ndarray, weighted: np.ndarray, names: Mapping[int, str], vv: float
) -> pd.DataFrame:
    idx = np.asarray(sorted(names), np.int64)
    m = mass[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m > 0, weighted[idx] / np.where(m > 0, m, 1.0), np.nan)
    return pd.DataFrame(
        {
            "region_index": idx,
            "region": [names[i] for i in idx],
            "tissue": tissue,
            "volume_mm3": m * vv,
            "mean_intensity": mean,
        }
    )


def combine_regions(table: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Add summed regions (e.g. left + right lateral ventricle) to a volumetrics table.

    Volumes add; the mean intensity of the union is the volume-weighted mean. Rows are matched by region name.

    Args:
        table: output of :meth:`analysis.volumetrics.RegionVolumetrics.transform`.
        groups: new region name → names of the regions it sums (all must exist in ``table``).

    Returns:
        ``table`` with the new rows appended (``region_index`` −1).
    """
    extra = []
    by = [c for c in table.columns if c not in ("region_index", "region", "volume_mm3", "mean_intensity")]
    for new, members in groups.items():
        missing = sorted(set(members) - set(table["region"]))
        if missing:
            raise ValueError(f"combine_regions: region(s) {missing} for '{new}' are not in the table")
        part = table[table["region"].isin(members)].assign(_w=lambda d: d["volume_mm3"] * d["mean_intensity"])
        agg = part.groupby(by, sort=False, dropna=False)[["volume_mm3", "_w"]].sum(min_count=1).reset_index()
        agg["mean_intensity"] = agg["_w"] / agg["volume_mm3"].where(agg["volume_mm3"] > 0)
        extra.append(agg.drop(columns="_w").assign(region=new, region_index=-1))
    return pd.concat([table, *extra], ignore_index=True)[list(table.columns)]
