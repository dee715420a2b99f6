"""The three pre-registered variants for the GM bar on ``ixi-dev`` (``docs/prep.md``, "The GM bar: four pre-registered variants").

Each variant starts from a finished ``flowlet-prep`` output (2 mm) of ``../shared/data/ixi-dev`` and reuses every
scan's saved transform, so the registration is the default one:

* ``resample``: (a) the image re-resampled onto the MNI grid with a cubic B-spline (``--order 3``) into a copy of
  the prep folder; ``--order 1`` reproduces flowlet-prep's own image (the check that the copy is faithful; the
  largest difference is printed per scan). Measure the copy with ``flowlet-eval regions`` and
  ``benchmarks/prep_ixi.py --correlate``, and the voxel-wise agreement with ``benchmarks/ixi_tissue_diagnosis.py``.
* ``native``: (b) tissue fractions measured on the scan's own grid: the default MNI-grid segmentation runs
  (``RegionVolumetrics._register_and_segment``, the registration path of ``segment``), then the registered priors, bias field, brain mask and atlas labels are carried onto the scan's grid and
  the segmentation is rerun there (no image resampling). Writes the total GM/WM, the lateral ventricles and the
  hippocampus GM both ways, with r, MAE and the age correlation of the measured/reference ratio, and the soft Dice
  of GM with DLMUSE on the MNI grid.
* (d) ANTs Atropos as the fine segmenter was run as ``atropos`` at commit 8f6d082; the option was withdrawn after
  that run (it counted CSF as GM), so the variant is not here any more.
* ``background-gm``: (c) a background/GM mixed class added to the segmentation, then the same measurements as
  ``flowlet-eval regions`` (the class is not an option of the toolkit: it was not adopted).

Usage::

    python benchmarks/ixi_gm_variants.py resample --prep /tmp/prep_ixi/prep --out /tmp/gm/cubic --order 3
    python benchmarks/ixi_gm_variants.py native --prep /tmp/prep_ixi/prep --out /tmp/gm/native
    python benchmarks/ixi_gm_variants.py background-gm --prep /tmp/prep_ixi/prep --out /tmp/gm/bggm
    python benchmarks/prep_ixi.py --correlate /tmp/gm/bggm/regions
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ixi_tissue_diagnosis import reference_tissue  # noqa: E402

from analysis import segmentation  # noqa: E402
from analysis.region_volumes import region_tissue_table  # noqa: E402
from analysis.segmentation import TissueSegmenter  # noqa: E402
from analysis.tissue_maps import TISSUES  # noqa: E402
from analysis.volumetrics import RegionVolumetrics, grow_csf_structures  # noqa: E402
from flowlet.data.cohort import read_image  # noqa: E402
from flowlet.data.grid import Grid, mni_grid, resample_array  # noqa: E402
from flowlet.data.io import write_json_atomic  # noqa: E402
from flowlet.data.nifti import Volume, load_volume, save_volume  # noqa: E402
from flowlet.data.prep import ants_backend  # noqa: E402
from flowlet.data.prep.measures import head_mask  # noqa: E402
from flowlet.data.preprocessing import reorient_to_ras  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("FLOWLET_IXI_DEV", ROOT.parent / "shared" / "data" / "ixi-dev"))
VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
#: name → (regions, tissue, DLMUSE column of ``volumes.tsv``)
MEASURES = {
    "gm": (("whole-brain",), "gm", "gm"),
    "wm": (("whole-brain",), "wm", "wm"),
    "lat_vent": (VENTRICLES, "all", "lat_vent"),
    "hippocampus_gm": (("Left_Hippocampus", "Right_Hippocampus"), "gm", "hippocampus"),
}


def scans(prep: Path):
    """``(subject, anat folder, template → subject matrix)`` of every scan of a prep output."""
    for anat in sorted(prep.glob("sub-*/anat")):
        matrix = np.asarray(json.loads(next(anat.glob("*_xfm.json")).read_text())["matrix"])
        yield anat.parent.name, anat, matrix


def corrected_native(data_dir: Path, subject: str, prep: Path) -> Volume:
    """The raw scan (RAS) with flowlet-prep's N4 correction, computed again with the run's settings."""
    config = json.loads((prep / "code" / "prep_config.json").read_text())
    volume = reorient_to_ras(load_volume(data_dir / subject / "anat" / f"{subject}_T1w.nii.gz"))
    data = np.clip(np.asarray(volume.data, np.float32), 0, None)
    field = ants_backend.n4_bias_field(
        data, volume.affine, head_mask(data), iterations=config["n4_iterations"], shrink=config["n4_shrink"]
    )
    return Volume(data / np.maximum(field, np.float32(1e-3)), np.asarray(volume.affine, np.float64))


def resample_variant(prep: Path, out: Path, data_dir: Path, order: int) -> None:
    """(a): a copy of ``prep`` whose images are resampled with a spline of ``order``."""
    if not out.exists():
        shutil.copytree(prep, out)
    grid = mni_grid(2.0)
    for subject, anat, matrix in scans(out):
        native = corrected_native(data_dir, subject, prep)
        # Output voxel → template world → subject world → subject voxel.
        to_source = np.linalg.inv(native.affine) @ matrix @ np.asarray(grid.affine)
        moved = ndimage.affine_transform(
            np.asarray(native.data),
            to_source[:3, :3],
            offset=to_source[:3, 3],
            output_shape=grid.shape,
            order=order,
            mode="constant",
            cval=0.0,
            prefilter=order > 1,
        )
        mask = np.asarray(load_volume(next(anat.glob("*desc-brain_mask.nii.gz"))).data) > 0
        image = np.where(mask, np.clip(moved, 0, None), 0).astype(np.float32)
        path = next(anat.glob("*desc-preproc_T1w.nii.gz"))
        original = np.asarray(load_volume(prep / subject / "anat" / path.name).data)
        print(f"{subject}: largest difference from flowlet-prep's image {np.abs(original - image).max():.4g}")
        save_volume(path, image, grid.affine, dtype=np.float32)


def native_variant(prep: Path, out: Path, data_dir: Path) -> pd.DataFrame:
    """(b): per scan and measure, the default (MNI grid × determinant) and the scan-grid volumes in mL."""
    vol = RegionVolumetrics("harvard-oxford").fit()
    grid = vol.grid_
    rows = []
    for subject, anat, matrix in scans(prep):
        # The default's own steps (the prep image is on its grid), with the priors its registration carried.
        maps, labels, priors = vol._register_and_segment(
            read_image(next(anat.glob("*desc-preproc_T1w.nii.gz")))
        )
        steps = int(np.ceil(vol.csf_growth_mm / min(grid.voxel_sizes)))
        mni_labels = grow_csf_structures(labels, maps.probabilities["csf"], vol.csf_ids_, steps)
        native = corrected_native(data_dir, subject, prep)
        ngrid = Grid(tuple(native.data.shape), native.affine)
        to_native = matrix @ np.asarray(grid.affine)
        mask = np.asarray(load_volume(next(anat.glob("*desc-brain_mask.nii.gz"))).data).astype(np.float32)
        nmask = resample_array(mask, to_native, ngrid) > 0.5
        npriors = resample_array(np.moveaxis(priors, 0, -1), to_native, ngrid)
        segmenter = TissueSegmenter(
            grid=ngrid, priors={t: npriors[..., i] for i, t in enumerate(TISSUES)}
        ).fit()
        nmaps = segmenter.transform(
            Volume(np.where(nmask, native.data, 0).astype(np.float32), ngrid.affine),
            start=maps,
            log_bias=resample_array(maps.log_bias, to_native, ngrid),
            n_iter=vol.fine_iterations,
        )
        nlabels = resample_array(labels, to_native, ngrid, interpolation="nearest")
        nsteps = int(np.ceil(vol.csf_growth_mm / min(ngrid.voxel_sizes)))
        nlabels = grow_csf_structures(nlabels, nmaps.probabilities["csf"], vol.csf_ids_, nsteps)
        det = abs(float(np.linalg.det(matrix[:3, :3])))
        tables = {
            "mni_grid": region_tissue_table(maps, mni_labels, vol.region_names_),
            "scan_grid": region_tissue_table(nmaps, nlabels, vol.region_names_),
        }
        reference = reference_tissue(data_dir, subject.removeprefix("sub-"), matrix, grid)["gm"]
        gm_back = resample_array(nmaps.probabilities["gm"], np.linalg.inv(matrix) @ ngrid.affine, grid)
        dice = {
            "mni_grid": _soft_dice(maps.probabilities["gm"], reference),
            "scan_grid": _soft_dice(gm_back, reference),
        }
        for way, table in tables.items():
            scale = det if way == "mni_grid" else 1.0
            row = {"subject": subject, "way": way, "gm_soft_dice": dice[way]}
            for name, (regions, tissue, _) in MEASURES.items():
                part = table[table["region"].isin(regions) & (table["tissue"] == tissue)]
                row[name] = float(part["volume_mm3"].sum()) * scale / 1000.0
            rows.append(row)
        print(subject, {r["way"]: round(r["gm"], 1) for r in rows[-2:]}, flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "native_variant.tsv", sep="\t", index=False)
    return table


def _soft_dice(measured: np.ndarray, reference: np.ndarray) -> float:
    return float(2 * (measured * reference).sum() / (measured.sum() + reference.sum()))


def summarise(table: pd.DataFrame, data_dir: Path) -> dict:
    """Pearson r, MAE and the age correlation of measured/reference per measure and way."""
    reference = pd.read_csv(data_dir / "derivatives" / "dlmuse" / "volumes.tsv", sep="\t")
    ages = pd.read_csv(data_dir / "participants.tsv", sep="\t")[["participant_id", "age"]]
    reference = reference.drop(columns=["age"], errors="ignore").merge(ages, on="participant_id")
    reference = reference.set_index("participant_id")
    result: dict = {}
    for way, part in table.groupby("way"):
        merged = part.set_index("subject").join(reference.add_suffix("_ref"))
        result[way] = {"gm_soft_dice_mean": round(float(merged["gm_soft_dice"].mean()), 4)}
        for name, (_, _, column) in MEASURES.items():
            measured = merged[name]
            truth = merged[f"{column}_ref"]
            result[way][name] = {
                "r": round(float(stats.pearsonr(measured, truth)[0]), 3),
                "mae_ml": round(float((measured - truth).abs().mean()), 1),
                "mean_ml": round(float(measured.mean()), 1),
                "ratio_age_r": round(float(stats.pearsonr(measured / truth, merged["age_ref"])[0]), 3),
            }
    return result


def background_gm_variant(prep: Path, out: Path, data_dir: Path) -> None:
    """(c): ``flowlet-eval regions`` and the voxel-wise diagnosis with a background/GM mixed class (in this
    process, one job), into ``out/regions`` and ``out/diagnosis.json``."""
    import ixi_tissue_diagnosis

    from pipelines.eval.cli import main as eval_main

    segmentation._MIXED = (*segmentation._MIXED, (0, 2))
    code = eval_main(["regions", "--cohort", str(prep), "--out", str(out / "regions"), "--jobs", "1"])
    if code:
        raise SystemExit(code)
    table = ixi_tissue_diagnosis.measure(prep, data_dir)
    write_json_atomic(out / "diagnosis.json", {"zones": ixi_tissue_diagnosis.summarise(table)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", choices=("resample", "native", "background-gm"))
    parser.add_argument("--prep", type=Path, required=True, help="flowlet-prep output (2 mm) of ixi-dev")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ixi-dev folder")
    parser.add_argument(
        "--order", type=int, default=3, help="spline order of 'resample' (1 = flowlet-prep's)"
    )
    args = parser.parse_args(argv)
    if args.variant == "resample":
        resample_variant(args.prep, args.out, args.data, args.order)
    elif args.variant == "background-gm":
        background_gm_variant(args.prep, args.out, args.data)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        result = summarise(native_variant(args.prep, args.out, args.data), args.data)
        write_json_atomic(args.out / "native_variant.json", result)
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
