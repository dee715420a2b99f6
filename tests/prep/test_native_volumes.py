"""Native-space volumes: MNI volume × the determinant that flowlet-prep records, and the intracranial volume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.native_volumes import (
    FROM_PREP,
    UNKNOWN_SCALE,
    add_native_volumes,
    intracranial_table,
    native_scaling,
)
from flowlet.data.prep import read_prep_record


def _prepared(folder, name, det=None, text=None):
    image = folder / f"{name}_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"
    image.write_bytes(b"")
    if det is not None or text is not None:
        record = {"FlowletPrep": {"qc": {"affine_determinant": det, "brain_volume_mm3": 1.4e6}}}
        image.with_name(image.name.replace(".nii.gz", ".json")).write_text(text or json.dumps(record))
    return image


def _volumes():
    rows = []
    for image_id in ("a", "b"):
        for region, tissue, volume in (
            ("whole-brain", "all", 1.8e6),
            ("whole-brain", "gm", 0.8e6),
            ("Left_Lateral_Ventricle", "all", 1.0e4),
        ):
            rows.append(
                {
                    "image_id": image_id,
                    "subject_id": image_id,
                    "region": region,
                    "tissue": tissue,
                    "volume_mm3": volume,
                }
            )
    return pd.DataFrame(rows)


def test_native_volume_is_the_mni_volume_times_the_determinant(tmp_path):
    paths = {"a": str(_prepared(tmp_path, "sub-a", det=0.8)), "b": str(_prepared(tmp_path, "sub-b"))}
    scaling = native_scaling(paths).set_index("image_id")
    assert scaling.loc["a", "determinant"] == 0.8 and scaling.loc["a", "scale_source"] == FROM_PREP
    # No sidecar (a phantom, or data prepared elsewhere): native = MNI, and the table says so.
    assert scaling.loc["b", "determinant"] == 1.0 and scaling.loc["b", "scale_source"] == UNKNOWN_SCALE
    volumes = add_native_volumes(_volumes(), scaling.reset_index())
    a = volumes[volumes["image_id"] == "a"]
    assert a["volume_native_mm3"].tolist() == pytest.approx([1.44e6, 0.64e6, 8.0e3])
    assert a["volume_mni_mm3"].tolist() == a["volume_mm3"].tolist()
    b = volumes[volumes["image_id"] == "b"]
    assert b["volume_native_mm3"].tolist() == b["volume_mni_mm3"].tolist()
    assert set(b["scale_source"]) == {UNKNOWN_SCALE}
    icv = intracranial_table(volumes, scaling.reset_index()).set_index("image_id")
    assert icv.loc["a", "icv_native_mm3"] == pytest.approx(1.44e6) and icv.loc["a", "icv_mni_mm3"] == 1.8e6
    assert icv.loc["a", "brain_mask_native_mm3"] == 1.4e6 and pd.isna(icv.loc["b", "brain_mask_native_mm3"])


def test_missing_factor_and_broken_sidecar_are_errors(tmp_path):
    scaling = native_scaling({"a": str(_prepared(tmp_path, "sub-a", det=0.9))})
    with pytest.raises(ValueError, match=r"no native-space factor for image\(s\) \['b'\]"):
        add_native_volumes(_volumes(), scaling)
    broken = _prepared(tmp_path, "sub-c", text="{not json")
    with pytest.raises(
        ValueError, match=r"sub-c_space.*_desc-preproc_T1w\.json: not a readable flowlet-prep sidecar"
    ):
        read_prep_record(broken)
