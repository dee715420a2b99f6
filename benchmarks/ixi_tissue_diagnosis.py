"""Where the toolkit's GM differs from DLMUSE's on ``ixi-dev``: voxel by voxel, by zone, against age.

For every scan of a ``flowlet-prep`` output (2 mm) of ``../shared/data/ixi-dev``, the tissue maps of
``flowlet-eval regions`` (``RegionVolumetrics.segment``, default settings) are compared with the DLMUSE labels of
the same scan carried through the scan's own transform onto the grid (as fractions: GM = ROI 601's members, WM =
604's, CSF = ventricles and ROI 46). Per scan and zone (the outer 4 mm of the brain mask, 4–10 mm, deeper; the
Harvard-Oxford cortex; the cerebellum box; GM outside the mask) it records the measured and the reference GM in
native mL, with ``fractions``, ``labels`` and ``pve`` volumes (``segmentation.volumes``); then Pearson r per zone,
the age correlation of the measured/reference ratio, the reference GM left outside the mask, and for the whole
grid the mean absolute error of the total GM (mL) and the mean voxel-wise soft Dice of GM with the reference
(``2 Σ g·r / (Σ g + Σ r)`` over the grid, ``g`` the measured and ``r`` the carried reference fractions). Writes
``benchmarks/results/ixi_tissue_diagnosis.json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ixi_tissue_diagnosis.py --prep /tmp/prep_ixi/prep   # about 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.segmentation import TissueSegmenter  # noqa: E402
from analysis.volumetrics import RegionVolumetrics  # noqa: E402
from flowlet.data.cohort import read_image  # noqa: E402
from flowlet.data.grid import mni_grid, resample_array  # noqa: E402
from flowlet.data.io import write_json_atomic  # noqa: E402
from flowlet.data.nifti import load_volume  # noqa: E402
from flowlet.data.preprocessing import reorient_to_ras  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("FLOWLET_IXI_DEV", ROOT.parent / "shared" / "data" / "ixi-dev"))
CSF_ROIS = [4, 11, 46, 49, 50, 51, 52]
MODES = ("fractions", "labels", "pve")


def reference_tissue(data_dir: Path, subject: str, matrix: np.ndarray, grid) -> dict[str, np.ndarray]:
    """DLMUSE GM/WM/CSF of one scan as fractions on ``grid`` (carried by the template → subject ``matrix``)."""
    rois = pd.read_csv(data_dir / "derivatives" / "dlmuse" / "muse_rois.csv").set_index("ID")

    def members(roi: int) -> list[int]:
        return [int(x) for x in str(rois.loc[roi, "Consisting_of_ROIS"]).split(",")]

    dseg = reorient_to_ras(
        load_volume(
            data_dir / "derivatives" / "dlmuse" / f"sub-{subject}" / "anat" / f"sub-{subject}_dseg.nii.gz"
        )
    )
    labels = np.rint(dseg.data).astype(np.int64)
    classes = {"gm": members(601), "wm": members(604), "csf": CSF_ROIS}
    onehot = np.stack([np.isin(labels, ids).astype(np.float32) for ids in classes.values()], -1)
    carried = resample_array(onehot, np.linalg.inv(matrix) @ dseg.affine, grid)
    return {name: carried[..., i] for i, name in enumerate(classes)}


def zones(image: np.ndarray, atlas: np.ndarray, grid) -> dict[str, np.ndarray]:
    inside = image > 0
    depth = ndimage.distance_transform_edt(inside) * float(min(grid.voxel_sizes))
    ijk = np.indices(image.shape).reshape(3, -1)
    xyz = (np.asarray(grid.affine)[:3, :3] @ ijk + np.asarray(grid.affine)[:3, 3:]).reshape(3, *image.shape)
    cerebellum = (xyz[2] < -10) & (xyz[1] < -35) & (atlas == 0)
    return {
        "outer_4mm": inside & (depth <= 4),
        "4_to_10mm": (depth > 4) & (depth <= 10),
        "deeper": depth > 10,
        "ho_cortex": (atlas >= 1) & (atlas <= 96),
        "cerebellum": cerebellum,
        "other_unlabelled": (atlas == 0) & ~cerebellum & inside,
        "outside_mask": ~inside,
    }


def measure(prep: Path, data_dir: Path) -> pd.DataFrame:
    # Every volumes mode from one segmentation: the fractions, with the linear partial-volume ones beside them.
    vol = RegionVolumetrics("harvard-oxford", segmenter=TissueSegmenter(grid=mni_grid(2.0), pve=True)).fit()
    ages = pd.read_csv(data_dir / "participants.tsv", sep="\t").set_index("participant_id")["age"]
    rows = []
    for anat in sorted(prep.glob("sub-*/anat")):
        subject = anat.parent.name.removeprefix("sub-")
        image = read_image(next(anat.glob("*desc-preproc_T1w.nii.gz")))
        matrix = np.asarray(json.loads(next(anat.glob("*_xfm.json")).read_text())["matrix"])
        maps, atlas = vol.segment(image)
        ref = reference_tissue(data_dir, subject, matrix, vol.grid_)
        ml = vol.grid_.voxel_volume_mm3 * abs(np.linalg.det(matrix[:3, :3])) / 1000.0
        measured = {
            "fractions": maps.probabilities["gm"],
            "labels": maps.as_labels().probabilities["gm"],
            "pve": maps.as_pve().probabilities["gm"],
        }
        for zone, where in zones(np.asarray(image.data), atlas, vol.grid_).items():
            row = {"subject": subject, "age": float(ages[f"sub-{subject}"]), "zone": zone}
            row["reference_ml"] = float(ref["gm"][where].sum()) * ml
            row.update({f"{k}_ml": float(v[where].sum()) * ml for k, v in measured.items()})
            rows.append(row)
        row = {"subject": subject, "age": float(ages[f"sub-{subject}"]), "zone": "total"}
        row["reference_ml"] = float(ref["gm"].sum()) * ml
        row.update({f"{k}_ml": float(v.sum()) * ml for k, v in measured.items()})
        row.update({f"{k}_soft_dice": soft_dice(v, ref["gm"]) for k, v in measured.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def soft_dice(measured: np.ndarray, reference: np.ndarray) -> float:
    """Soft Dice of two fraction maps on the same grid."""
    a, b = np.asarray(measured, np.float64), np.asarray(reference, np.float64)
    return float(2.0 * (a * b).sum() / max(a.sum() + b.sum(), 1e-12))


def summarise(table: pd.DataFrame) -> dict:
    out = {}
    for zone, part in table.groupby("zone", sort=False):
        entry = {"reference_ml_mean": round(float(part["reference_ml"].mean()), 1)}
        for mode in MODES:
            measured = part[f"{mode}_ml"]
            entry[f"{mode}_ml_mean"] = round(float(measured.mean()), 1)
            if zone == "total":
                entry[f"{mode}_mae_ml"] = round(float((measured - part["reference_ml"]).abs().mean()), 1)
                entry[f"{mode}_soft_dice_mean"] = round(float(part[f"{mode}_soft_dice"].mean()), 4)
            if zone != "outside_mask":
                entry[f"{mode}_r"] = round(float(stats.pearsonr(measured, part["reference_ml"])[0]), 3)
                ratio = measured / part["reference_ml"]
                entry[f"{mode}_ratio_age_r"] = round(float(stats.pearsonr(ratio, part["age"])[0]), 3)
        out[zone] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prep", type=Path, required=True, help="flowlet-prep output (2 mm) of ixi-dev")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ixi-dev folder")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "ixi_tissue_diagnosis.json"
    )
    args = parser.parse_args(argv)
    table = measure(args.prep, args.data)
    result = {"prep": str(args.prep), "n_scans": int(table["subject"].nunique()), "zones": summarise(table)}
    result["per_scan"] = table.round(2).to_dict(orient="records")
    write_json_atomic(args.json, result)
    print(pd.DataFrame(result["zones"]).T.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
