"""``flowlet-prep`` and ``flowlet-eval regions`` on real raw head scans (``ixi-dev``); prints a table, writes JSON.

Measures, against the DLMUSE reference that ships with the data set:
* brain extraction + registration: Dice of each produced brain mask (MNI grid) with the DLMUSE brain mask (non-zero
  labels, holes filled) carried through the same transform; a scan is *correct* at Dice >= 0.90;
* QC: every incorrect scan must be rejected, and deliberately broken copies (flipped upside down in voxel space,
  a header claiming 1.2 mm voxels for 2 mm data) must be rejected too;
* cost: seconds per scan and wall time, with the machine's load average;
* volumes (``--regions``): native-space region volumes against ``derivatives/dlmuse/volumes.tsv`` (Pearson r)
  and their age trends (Spearman rho).

Usage::

    python benchmarks/prep_ixi.py --work /tmp/prep_ixi --jobs 2 --regions
    python benchmarks/prep_ixi.py --work /tmp/prep_ixi --jobs 2 --regions --volumes labels   # voxel counts
    python benchmarks/prep_ixi.py --correlate /tmp/prep_ixi/regions --json /tmp/r.json   # an existing output
    python benchmarks/prep_ixi.py --limit 4 --work /tmp/prep_ixi4        # a quick look

The work folder is resumable (finished scans are verified and skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.config import VOLUME_MODES  # noqa: E402
from flowlet.data.io import write_json_atomic  # noqa: E402
from flowlet.data.nifti import load_volume, save_volume  # noqa: E402
from flowlet.data.prep import PrepConfig, find_scans, output_names, run_prep  # noqa: E402
from flowlet.data.prep.measures import dice  # noqa: E402

#: ``../shared/data/ixi-dev`` next to the repository, or wherever ``FLOWLET_IXI_DEV`` points.
DEFAULT_DATA = Path(os.environ.get("FLOWLET_IXI_DEV", ROOT.parent / "shared" / "data" / "ixi-dev"))
CORRECT_DICE = 0.90
#: The QC measures of each scan (flowlet.data.prep), reported beside the Dice with the DLMUSE mask.
QC_MEASURES = ("ncc", "brain_mask_dice", "affine_determinant", "scale_min", "scale_max")
#: DLMUSE reference columns (mL) -> (atlas regions summed, tissue) in the flowlet-eval regions table.
#: The hippocampus is reported twice: its grey matter (the bar: DLMUSE's hippocampus label is grey matter, while
#: the atlas region carried onto a subject also covers CSF of the temporal horn and white matter) and every
#: tissue of the atlas region (for reference, no bar).
VOLUMES = {
    "lat_vent": ("lat_vent", ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle"), "all"),
    "hippocampus_all_tissue": ("hippocampus", ("Left_Hippocampus", "Right_Hippocampus"), "all"),
    "hippocampus_gm": ("hippocampus", ("Left_Hippocampus", "Right_Hippocampus"), "gm"),
    "gm": ("gm", ("whole-brain",), "gm"),
    "wm": ("wm", ("whole-brain",), "wm"),
}
BARS = {"lat_vent": 0.95, "gm": 0.90, "wm": 0.90, "hippocampus_all_tissue": None, "hippocampus_gm": 0.80}


def reference_dice(data_dir: Path, out: Path, qc: pd.DataFrame, config: PrepConfig) -> pd.DataFrame:
    """Dice of each produced mask with the DLMUSE brain mask carried through the scan's own transform."""
    from scipy import ndimage

    from flowlet.data.grid import resample_array
    from flowlet.data.preprocessing import reorient_to_ras

    grid = config.grid
    jobs = {(j.subject_id, j.session_id): j for j in find_scans(data_dir)}
    rows = []
    for row in qc.itertuples():
        job = jobs[(str(row.subject_id), str(row.session_id))]
        entry = {"subject_id": row.subject_id, "status": row.status, "dice_dlmuse": np.nan}
        if row.status in ("ok", "rejected"):
            names = output_names(job, config, rejected=row.status == "rejected")
            matrix = np.asarray(json.loads((out / names["xfm"]).read_text())["matrix"])
            mask = load_volume(out / names["mask"]).data > 0
            sub = f"sub-{job.subject_id}"
            dseg = data_dir / "derivatives" / "dlmuse" / sub / "anat" / f"{sub}_dseg.nii.gz"
            labels = reorient_to_ras(load_volume(dseg))
            reference = ndimage.binary_fill_holes(labels.data > 0).astype(np.float32)
            carried = resample_array(reference, np.linalg.inv(matrix) @ labels.affine, grid) > 0.5
            entry["dice_dlmuse"] = dice(mask, carried)
        rows.append(entry)
    return pd.DataFrame(rows)


def scored_scans(
    data_dir: Path, out: Path, qc: pd.DataFrame, config: PrepConfig, extra: tuple[str, ...] = ()
) -> pd.DataFrame:
    """:func:`reference_dice` of one prep run with the ``extra`` and QC columns of its ``qc`` table beside it, and
    whether the mask is correct (Dice ≥ :data:`CORRECT_DICE`)."""
    scored = reference_dice(data_dir, out, qc, config).merge(
        qc[["subject_id", *extra, "reason", *QC_MEASURES]], on="subject_id"
    )
    scored["correct"] = scored["dice_dlmuse"] >= CORRECT_DICE
    return scored


def make_broken(data_dir: Path, target: Path, subject: str) -> Path:
    """Two deliberately broken copies of one scan: voxels flipped upside down, and a header with 1.2 mm voxels."""
    source = load_volume(data_dir / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
    flipped_axis = int(np.argmax(np.abs(source.affine[2, :3])))  # the voxel axis closest to superior
    broken = {
        "BRKflip": (np.flip(source.data, axis=flipped_axis), source.affine),
        "BRKvox": (source.data, source.affine @ np.diag([0.6, 0.6, 0.6, 1.0])),
    }
    for name, (data, affine) in broken.items():
        save_volume(
            target / f"sub-{name}" / "anat" / f"sub-{name}_T1w.nii.gz", data, affine, dtype=np.float32
        )
    pd.DataFrame({"participant_id": [f"sub-{n}" for n in broken], "age": [50.0, 50.0]}).to_csv(
        target / "participants.tsv", sep="\t", index=False
    )
    return target


def limited_copy(data_dir: Path, target: Path, n: int) -> Path:
    """Links to the first ``n`` subjects (no image is copied), with the participants table."""
    target.mkdir(parents=True, exist_ok=True)
    for sub in sorted(data_dir.glob("sub-*"))[:n]:
        link = target / sub.name
        if not link.exists():
            link.symlink_to(sub)
    shutil.copy(data_dir / "participants.tsv", target / "participants.tsv")
    return target


def run_regions(
    out: Path, work: Path, data_dir: Path, jobs: int, reuse: bool, volumes: str = "fractions"
) -> dict:
    """``flowlet-eval regions`` on the prepared cohort (``volumes``: the config's ``segmentation.volumes``);
    native volumes against the DLMUSE reference. Results go to ``work/regions`` (``work/regions-labels`` for
    voxel-count volumes, ``work/regions-pve`` for linear partial-volume fractions)."""
    import yaml

    from pipelines.eval.cli import main as evaluate

    regions_dir = work / ("regions" if volumes == "fractions" else f"regions-{volumes}")
    config = yaml.safe_load((ROOT / "configs" / "eval" / "default.yaml").read_text())
    config["segmentation"]["volumes"] = volumes
    config_path = work / f"eval_{volumes}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    code = (
        0
        if reuse and (regions_dir / "volumes.tsv").is_file()
        else evaluate(
            [
                *("regions", "--cohort", str(out), "--out", str(regions_dir)),
                *("--config", str(config_path), "--no-progress", "--jobs", str(jobs)),
            ]
        )
    )
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"flowlet-eval regions exited with {code}")
    reused = bool(reuse and seconds < 1.0)
    return {
        "seconds": None if reused else round(seconds, 1),
        "reused_earlier_run": reused,
        **correlate(regions_dir, data_dir),
    }


def bootstrap_r(x: pd.Series, y: pd.Series, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Percentile 95 % interval of Pearson r over subjects resampled with replacement."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(x), len(x)) for _ in range(n_boot)]
    rs = [np.corrcoef(x[i], y[i])[0, 1] for i in draws]
    low, high = np.nanpercentile(rs, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


def correlate(regions_dir: Path, data_dir: Path) -> dict:
    """Native (and MNI) volumes of a ``flowlet-eval regions`` output against DLMUSE: Pearson r, age trends."""
    from scipy import stats

    volumes = pd.read_csv(regions_dir / "volumes.tsv", sep="\t", dtype={"subject_id": str})
    reference = pd.read_csv(data_dir / "derivatives" / "dlmuse" / "volumes.tsv", sep="\t")
    reference["subject_id"] = reference["participant_id"].str.removeprefix("sub-")
    ages = pd.read_csv(data_dir / "participants.tsv", sep="\t")
    ages["subject_id"] = ages["participant_id"].str.removeprefix("sub-")
    config_file = regions_dir / "config.yaml"
    mode = "fractions"
    if config_file.is_file():
        import yaml

        mode = (yaml.safe_load(config_file.read_text()).get("segmentation") or {}).get("volumes", "fractions")
    result: dict = {"regions_dir": str(regions_dir), "volumes_mode": mode, "volumes": {}}
    for name, (column, regions, tissue) in VOLUMES.items():
        part = volumes[volumes["region"].isin(regions) & (volumes["tissue"] == tissue)]
        per = part.groupby("subject_id")[["volume_native_mm3", "volume_mni_mm3"]].sum() / 1000.0
        merged = per.join(reference.set_index("subject_id")[column].rename("reference"))
        merged = merged.join(ages.set_index("subject_id")["age"])
        merged = merged.dropna()
        result["volumes"][name] = {
            "n": len(merged),
            "reference": column,
            "tissue": tissue,
            "r_native": round(float(stats.pearsonr(merged["volume_native_mm3"], merged["reference"])[0]), 3),
            "r_native_ci95": bootstrap_r(merged["volume_native_mm3"], merged["reference"]),
            "r_mni": round(float(stats.pearsonr(merged["volume_mni_mm3"], merged["reference"])[0]), 3),
            "mae_native_ml": round(
                float((merged["volume_native_mm3"] - merged["reference"]).abs().mean()), 1
            ),
            "mean_native_ml": round(float(merged["volume_native_mm3"].mean()), 1),
            "mean_reference_ml": round(float(merged["reference"].mean()), 1),
            "rho_age_native": round(float(stats.spearmanr(merged["volume_native_mm3"], merged["age"])[0]), 3),
            "rho_age_reference": round(float(stats.spearmanr(merged["reference"], merged["age"])[0]), 3),
            "bar_r": BARS[name],
        }
    icv_path = regions_dir / "intracranial.tsv"
    if icv_path.is_file():
        icv = pd.read_csv(icv_path, sep="\t", dtype={"subject_id": str}).set_index("subject_id")
        merged = icv.join(reference.set_index("subject_id")["icv"]).dropna()
        result["icv_r_native"] = round(float(stats.pearsonr(merged["icv_native_mm3"], merged["icv"])[0]), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ixi-dev folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prep_ixi"), help="work folder (resumable)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="ITK threads per job")
    parser.add_argument("--limit", type=int, help="first N subjects only")
    parser.add_argument(
        "--baseline", type=int, default=0, help="also register the first N scans without brain extraction"
    )
    parser.add_argument("--regions", action="store_true", help="also run flowlet-eval regions and correlate")
    parser.add_argument(
        "--mask-margin-mm",
        type=float,
        default=0.0,
        help="PrepConfig.mask_margin_mm (0: the template brain mask)",
    )
    parser.add_argument(
        "--reuse-regions", action="store_true", help="correlate an earlier run's regions/volumes.tsv again"
    )
    parser.add_argument(
        "--volumes",
        choices=list(VOLUME_MODES),
        default="fractions",
        help="segmentation.volumes of flowlet-eval regions: partial-volume fractions, voxel counts or linear PVE",
    )
    parser.add_argument(
        "--correlate",
        type=Path,
        metavar="REGIONS_DIR",
        help="only correlate an existing flowlet-eval regions output with the reference (no prep), print JSON",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "prep_ixi.json")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: ixi-dev not found", file=sys.stderr)
        return 2
    if args.correlate:
        result = correlate(args.correlate, args.data)
        write_json_atomic(args.json, result)
        print(json.dumps(result, indent=1))
        return 0
    data_dir = args.data if args.limit is None else limited_copy(args.data, args.work / "bids", args.limit)
    config = PrepConfig(mask_margin_mm=args.mask_margin_mm)
    out = args.work / "prep"
    load_before = os.getloadavg()
    start = time.perf_counter()
    report = run_prep(
        data_dir, out, config=config, jobs=args.jobs, threads_per_job=args.threads, progress=False
    )
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    qc = report.qc
    scored = scored_scans(args.data, out, qc, config, extra=("seconds", "resumed"))
    incorrect = scored[~scored["correct"]]
    missed = incorrect[incorrect["status"] == "ok"]
    false_alarms = scored[scored["correct"] & (scored["status"] != "ok")]

    baseline = None
    if args.baseline:
        # The registration without brain extraction (the whole raw head onto the brain template): real failures
        # that QC must catch.
        old = dataclasses.replace(config, brain_extraction=False)
        base_dir = limited_copy(args.data, args.work / "baseline_bids", args.baseline)
        base_out = args.work / "baseline_prep"
        base = run_prep(
            base_dir, base_out, config=old, jobs=args.jobs, threads_per_job=args.threads, progress=False
        )
        baseline = scored_scans(args.data, base_out, base.qc, old)
    broken_dir = make_broken(args.data, args.work / "broken_bids", "IXI012")
    broken = run_prep(broken_dir, args.work / "broken_prep", config=config, jobs=args.jobs, progress=False)
    # Seconds of resumed scans come from their sidecars (the run that computed them).
    computed = scored[scored["status"] != "failed"]
    n_resumed = int(scored["resumed"].astype(bool).sum())
    result = {
        "data": str(args.data),
        "n_scans": len(scored),
        "config": config.to_dict(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
        },
        "jobs": args.jobs,
        "threads_per_job": args.threads,
        "wall_seconds": round(wall, 1),
        "seconds_per_scan": {
            "n_timed": len(computed),
            "n_resumed_in_this_run": n_resumed,
            "median": round(float(computed["seconds"].median()), 1) if len(computed) else None,
            "max": round(float(computed["seconds"].max()), 1) if len(computed) else None,
            "wall_per_scan_this_run": round(wall / max(len(scored) - n_resumed, 1), 1)
            if n_resumed < len(scored)
            else None,
        },
        "dice_dlmuse": {
            "median": round(float(scored["dice_dlmuse"].median()), 4),
            "min": round(float(scored["dice_dlmuse"].min()), 4),
            "n_correct": int(scored["correct"].sum()),
            "n_incorrect": len(incorrect),
            "n_incorrect_passed_qc": len(missed),
            "n_correct_rejected": len(false_alarms),
        },
        "qc_pass": int((scored["status"] == "ok").sum()),
        "qc_ranges_of_passing": {
            m: [
                round(float(scored.loc[scored.status == "ok", m].min()), 3),
                round(float(scored.loc[scored.status == "ok", m].max()), 3),
            ]
            for m in QC_MEASURES
        },
        "broken_inputs": broken.qc[["subject_id", "status", "reason"]].to_dict(orient="records"),
        "without_brain_extraction": None
        if baseline is None
        else {
            "n_scans": len(baseline),
            "n_correct": int(baseline["correct"].sum()),
            "n_incorrect_passed_qc": int((~baseline["correct"] & (baseline["status"] == "ok")).sum()),
            "n_correct_rejected": int((baseline["correct"] & (baseline["status"] != "ok")).sum()),
            "per_scan": baseline.round(4).to_dict(orient="records"),
        },
        "per_scan": scored.round(4).to_dict(orient="records"),
    }
    if args.regions:
        result["regions"] = run_regions(out, args.work, data_dir, args.jobs, args.reuse_regions, args.volumes)
    write_json_atomic(args.json, result)

    print(
        scored[["subject_id", "status", "dice_dlmuse", *QC_MEASURES, "seconds"]]
        .round(3)
        .to_string(index=False)
    )
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("wall_seconds", "seconds_per_scan", "dice_dlmuse", "qc_pass", "broken_inputs")
            },
            indent=1,
        )
    )
    if baseline is not None:
        print("without brain extraction:")
        print(baseline[["subject_id", "status", "dice_dlmuse", *QC_MEASURES]].round(3).to_string(index=False))
    if args.regions:
        print(json.dumps(result["regions"], indent=1))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
