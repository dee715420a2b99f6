"""Native-space volumes: MNI-space volumes scaled by the determinant that ``flowlet-prep`` records per image.

Volumes measured on the MNI grid are head-size normalised; the subject's own volumes are those times ``|det|`` of
the linear part of the template → subject registration (an affine's Jacobian is constant).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.region_volumes import TOTAL, WHOLE_BRAIN
from flowlet.data.keys import SUBJECT_ID

__all__ = ["FROM_PREP", "UNKNOWN_SCALE", "add_native_volumes", "intracranial_table", "native_scaling"]

#: ``scale_source`` values: where the native-space factor of an image came from.
FROM_PREP = "flowlet-prep determinant"
UNKNOWN_SCALE = "unknown: native = MNI"


def native_scaling(paths: Mapping[str, str]) -> pd.DataFrame:
    """Per image, the factor from MNI-space to native-space volume: ``|det|`` of the registration's linear part.

    ``flowlet-prep`` records it in each image's JSON sidecar (``FlowletPrep.qc.affine_determinant``; the
    template → subject map, so native volume = MNI volume × det). Images without that sidecar (phantoms, data
    prepared elsewhere) get 1 and ``scale_source`` says so: their "native" volumes are the MNI ones.

    Args:
        paths: ``{image_id: image path}``.

    Returns:
        ``image_id``, ``determinant``, ``scale_source``, ``brain_mask_native_mm3`` (prep's brain mask volume in
        native space, NaN when unknown).
    """
    from flowlet.data.prep import read_prep_record

    rows = []
    for image_id, path in paths.items():
        record = read_prep_record(path)
        det = record["qc"].get("affine_determinant", np.nan) if record else np.nan
        known = bool(np.isfinite(det) and det > 0)
        rows.append(
            {
                "image_id": str(image_id),
                "determinant": float(det) if known else 1.0,
                "scale_source": FROM_PREP if known else UNKNOWN_SCALE,
                "brain_mask_native_mm3": record["qc"].get("brain_volume_mm3", np.nan) if record else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["image_id", "determinant", "scale_source", "brain_mask_native_mm3"])


def add_native_volumes(volumes: pd.DataFrame, scaling: pd.DataFrame) -> pd.DataFrame:
    """Volumes table with ``volume_mni_mm3`` (MNI space: head-size normalised; the ``volume_mm3`` column) and
    ``volume_native_mm3`` (the subject's own size: MNI × ``determinant``), paired by ``image_id``.

    Raises:
        ValueError: an image of ``volumes`` has no row in ``scaling``.
    """
    missing = sorted(set(volumes["image_id"].astype(str)) - set(scaling["image_id"].astype(str)))
    if missing:
        raise ValueError(f"no native-space factor for image(s) {missing[:5]}")
    factor = scaling.set_index("image_id")["determinant"]
    out = volumes.copy()
    det = out["image_id"].astype(str).map(factor).to_numpy(dtype=np.float64)
    out["volume_mni_mm3"] = out["volume_mm3"].to_numpy(dtype=np.float64)
    out["volume_native_mm3"] = out["volume_mni_mm3"].to_numpy() * det
    out["scale_source"] = out["image_id"].astype(str).map(scaling.set_index("image_id")["scale_source"])
    return out


def intracranial_table(volumes: pd.DataFrame, scaling: pd.DataFrame) -> pd.DataFrame:
    """Total intracranial volume per image: the whole-brain region (GM + WM + CSF), in MNI and native space.

    Args:
        volumes: output of :func:`add_native_volumes`.
        scaling: output of :func:`native_scaling`.

    Returns:
        ``image_id``, ``subject_id``, ``icv_mni_mm3``, ``icv_native_mm3``, ``determinant``, ``scale_source``,
        ``brain_mask_native_mm3``.
    """
    rows = volumes[(volumes["region"] == WHOLE_BRAIN) & (volumes["tissue"] == TOTAL)]
    table = rows[["image_id", SUBJECT_ID, "volume_mni_mm3", "volume_native_mm3"]].rename(
        columns={"volume_mni_mm3": "icv_mni_mm3", "volume_native_mm3": "icv_native_mm3"}
    )
    return table.merge(scaling, on="image_id", how="left").reset_index(drop=True)
