"""``flowlet-eval``: region volumetrics, real-versus-synthetic fidelity, privacy audit and the paper's tables.

Subcommands (each writes CSV + Markdown + LaTeX tables, PNG figures and the resolved ``config.yaml`` into ``--out``):

* ``regions``: GM/WM/CSF volume (mm³) and mean intensity in every atlas region of every image of a cohort; when
  the images carry ground truth (``*_volumes.tsv``, as the phantom cohort does), agreement with it as well. With
  ``--real R --synthetic S``: both cohorts, and per region whether the synthetic volumes follow the real
  age trajectory and age-matched distribution (``plausibility`` table);
* ``quality``: age-trajectory fidelity, age-matched W1/KS per region, the paper's ROI metrics on age-matched
  pairs, MS-SSIM diversity, MMD and Fréchet distance of fixed image features;
* ``fidelity``: per age bin, synthetic against real brains of the same age (volumes, slope ratios, brain-age gap,
  texture noise; see :mod:`pipelines.fidelity`);
* ``privacy``: nearest-training-image correlation of every synthetic image against the held-out baseline;
* ``tables``: the paper's global/local ROI tables and key-region trajectory tables across several ``quality`` runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.arguments import (
    finite_float,
    positive_int,
    setup_cli,
    thread_count,
)
from pipelines.cli import run_cli

logger = logging.getLogger("flowlet.eval")

EXAMPLE = """examples:
  flowlet-phantoms --n 100 --out phantoms --seed 0
  flowlet-eval regions --cohort phantoms --out eval/regions --atlas harvard-oxford
  flowlet-eval regions --atlas harvard-oxford --real phantoms --synthetic synth --out eval/plausibility
  flowlet-eval quality --real phantoms --synthetic synth/cohort.tsv --out eval/quality
  flowlet-eval fidelity --real phantoms --synthetic synth --bap runs/bap/best.pt --out eval/fidelity
  flowlet-eval privacy --train train.tsv --holdout test.tsv --synthetic synth/cohort.tsv --out eval/privacy
  flowlet-eval tables --inputs eval/quality eval/quality-ablation --names FlowLet Ablation --out eval/tables
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowlet-eval",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="output folder")
    common.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder flowlet-eval did not create"
    )
    common.add_argument("--config", type=Path, help="YAML config (default: configs/eval/default.yaml)")
    common.add_argument("--atlas", help="packaged atlas name (overrides the config)")
    common.add_argument("--atlas-image", type=Path, help="custom atlas label NIfTI (with --atlas-table)")
    common.add_argument("--atlas-table", type=Path, help="TSV with columns index, name for --atlas-image")
    common.add_argument(
        "--voxel-size", type=finite_float(0.5, 8), help="working MNI grid in mm (overrides the config)"
    )
    common.add_argument(
        "--registration",
        choices=("demons", "none"),
        default="demons",
        help="carry the atlas onto each image by registration (default) or use it as is",
    )
    common.add_argument(
        "--limit", type=positive_int, help="use only the first N images of every cohort (quick looks)"
    )
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument(
        "--jobs",
        type=thread_count,
        default=1,
        help="worker processes for the per-image work (default 1; results do not change)",
    )
    r = sub.add_parser(
        "regions",
        parents=[common],
        help="per-region tissue volumes of one cohort",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--cohort", help="BIDS folder or cohort table (see flowlet.data.cohort)")
    which.add_argument("--real", help="real cohort; with --synthetic, compare the two region by region")
    r.add_argument("--synthetic", help="synthetic cohort (e.g. a flowlet-augment output), with --real")
    q = sub.add_parser(
        "quality",
        parents=[common],
        help="real versus synthetic fidelity",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--real", required=True, help="real cohort (folder or table)")
    q.add_argument("--synthetic", required=True, help="synthetic cohort (table with the generation ages)")
    q.add_argument("--name", default="synthetic", help="label of the synthetic set in tables and figures")
    v = sub.add_parser(
        "privacy",
        parents=[common],
        help="memorisation audit",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--train", required=True, help="real images the generator was trained on")
    v.add_argument("--holdout", required=True, help="real images of subjects not used in training")
    v.add_argument("--synthetic", required=True, help="synthetic images")
    from pipelines.fidelity import add_parser as add_fidelity_parser

    add_fidelity_parser(sub, common, EXAMPLE)
    t = sub.add_parser(
        "tables",
        help="paper tables across several quality/privacy runs",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--inputs", type=Path, nargs="+", required=True, help="output folders of quality/privacy runs"
    )
    t.add_argument("--names", nargs="+", help="one model name per input (default: folder names)")
    t.add_argument("--out", type=Path, required=True, help="output folder")
    t.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder flowlet-eval did not create"
    )
    t.add_argument("--config", type=Path, help="YAML config (key regions)")
    return p  # fmt: skip


def load_config(path: Path | None, args: argparse.Namespace):
    """Read the YAML config (``yaml.safe_load``) and apply command-line overrides."""
    import dataclasses

    import yaml

    from analysis.config import EvalConfig
    from configs import config_path

    path = Path(path) if path is not None else config_path("eval", "default")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    config = EvalConfig.from_dict(raw, source=str(path))
    atlas = config.atlas
    if getattr(args, "atlas", None):
        atlas = dataclasses.replace(atlas, name=args.atlas, image=None, table=None)
    if getattr(args, "atlas_image", None) or getattr(args, "atlas_table", None):
        if not (args.atlas_image and args.atlas_table):
            raise ValueError("--atlas-image and --atlas-table go together")
        atlas = dataclasses.replace(atlas, image=str(args.atlas_image), table=str(args.atlas_table))
    config = dataclasses.replace(config, atlas=atlas)
    if getattr(args, "voxel_size", None):
        config = dataclasses.replace(config, voxel_size=float(args.voxel_size))
    return config


def _write_config(out: Path, config, **extra) -> None:
    import yaml

    from flowlet.data.io import write_text_atomic

    write_text_atomic(out / "config.yaml", yaml.safe_dump({**config.to_dict(), **extra}, sort_keys=False))


def _volumetrics(config, registration: str, progress: bool):
    from analysis.segmentation import TissueSegmenter
    from analysis.volumetrics import RegionVolumetrics
    from flowlet.data.grid import mni_grid
    from flowlet.data.templates import load_custom_atlas

    grid = mni_grid(config.voxel_size)
    s = config.segmentation
    segmenter = TissueSegmenter(
        grid=grid,
        prior_weight=s.prior_weight,
        n_iter=s.n_iter,
        prior_floor=s.prior_floor,
        margin_mm=s.margin_mm,
        method=s.method,
        random_state=config.seed,
    )
    atlas = config.atlas.name
    if config.atlas.image:
        atlas = load_custom_atlas(config.atlas.image, config.atlas.table, grid)
    return RegionVolumetrics(
        atlas,
        grid=grid,
        segmenter=segmenter,
        threshold=config.atlas.threshold,
        registration=registration,
        volumes=s.volumes,
        progress=progress,
    ).fit()


def _cohort(source: str, limit: int | None):
    from flowlet.data.cohort import load_cohort

    if limit is not None and limit < 1:  # head(-1) would silently drop the last image
        raise ValueError(f"--limit: expected a positive number of images, got {limit}")
    cohort = load_cohort(source)
    table = cohort.table if limit is None else cohort.table.head(limit)
    table = table.reset_index(drop=True).copy()
    from flowlet.data.keys import SESSION_ID, SUBJECT_ID, UNKNOWN

    session = table[SESSION_ID].astype(str)
    table["image_id"] = (
        table[SUBJECT_ID]
        .astype(str)
        .where(session == UNKNOWN, table[SUBJECT_ID].astype(str) + "_ses-" + session)
    )
    return table


def run_regions(
    source: str,
    out: Path,
    config,
    *,
    registration: str = "demons",
    limit: int | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Volumetrics of one cohort, plus agreement with ground truth where the cohort has ``*_volumes.tsv``."""
    from analysis import tables
    from analysis.evaluation import measure_cohort
    from analysis.figures import plot_trajectories
    from analysis.quality import read_truth
    from analysis.volumetrics import FROM_PREP, intracranial_table
    from flowlet.data.io import write_json_atomic, write_table_atomic

    start = time.perf_counter()
    cohort = _cohort(source, limit)
    vol = _volumetrics(config, registration, progress)
    measures = measure_cohort(
        cohort, vol, combined_regions=config.combined_regions, features=False, progress=progress, jobs=jobs
    )
    seconds = time.perf_counter() - start
    logger.info(
        "measured %d images in %.1f s (%.2f s per image)", len(cohort), seconds, seconds / max(len(cohort), 1)
    )
    volumes, native = _native_volumes(cohort, measures.volumes)
    write_table_atomic(out / "volumes.tsv", volumes)
    write_table_atomic(out / "intracranial.tsv", intracranial_table(volumes, native))
    tables.write_table(
        tables.region_volume_table(measures.volumes),
        out,
        "region_volumes",
        caption=f"Regional tissue volumes (mm³), mean ± sd over {len(cohort)} images",
    )
    plot_trajectories(
        {"cohort": measures.volumes},
        _present(measures.volumes, config.key_regions),
        out / "volume_vs_age.png",
    )
    summary = {
        "n_images": len(cohort),
        "seconds": round(seconds, 2),
        "atlas": vol.atlas_.name,
        "grid_shape": list(vol.grid_.shape),
        "registration": registration,
        "native_volumes": {
            "n_images_with_determinant": int((native["scale_source"] == FROM_PREP).sum()),
            "n_images_native_equals_mni": int((native["scale_source"] != FROM_PREP).sum()),
        },
    }
    truth = read_truth(cohort)
    if truth is not None:
        summary["truth"] = _truth_outputs(measures.volumes, truth, out)
    if measures.tissue_dice is not None:
        summary["tissue_dice"] = _dice_outputs(measures.tissue_dice, out)
    write_json_atomic(out / "summary.json", summary)
    _write_config(out, config, registration=registration, source=str(source))
    return out


def _native_volumes(cohort, volumes):
    """MNI and native-space columns (``volume_mni_mm3``, ``volume_native_mm3``) from prep's determinants."""
    from analysis.volumetrics import FROM_PREP, add_native_volumes, native_scaling

    native = native_scaling(dict(zip(cohort["image_id"].astype(str), cohort["path"].astype(str))))
    unknown = int((native["scale_source"] != FROM_PREP).sum())
    if unknown:
        logger.warning(
            "%d of %d images have no flowlet-prep determinant; their native volumes equal the MNI ones",
            unknown,
            len(native),
        )
    return add_native_volumes(volumes, native), native


def _present(volumes, key_regions):
    have = set(zip(volumes["region"], volumes["tissue"]))
    return [pair for pair in key_regions if tuple(pair) in have]


def _dice_outputs(dice, out: Path) -> dict:
    """Per-image tissue Dice (``tissue_dice_per_image.tsv``) and its mean ± sd table; returns the means."""
    from analysis import tables
    from flowlet.data.io import write_table_atomic

    write_table_atomic(out / "tissue_dice_per_image.tsv", dice)
    columns = [c for c in dice.columns if c != "image_id"]
    summary = dice[columns].agg(["mean", "std", "min"]).T.rename_axis("measure").reset_index()
    tables.write_table(
        summary, out, "tissue_dice", caption="Tissue segmentation against the true tissue maps"
    )
    for row in summary.itertuples():
        logger.info("tissue %-16s mean %.3f (sd %.3f, min %.3f)", row.measure, row.mean, row.std, row.min)
    return {row.measure: float(row.mean) for row in summary.itertuples()}


def _truth_outputs(volumes, truth, out: Path) -> dict:
    from analysis import tables
    from analysis.figures import plot_volume_agreement
    from analysis.validation import truth_agreement
    from flowlet.data.io import write_table_atomic

    pairs, summary = truth_agreement(volumes, truth, key="image_id")
    write_table_atomic(out / "truth_pairs.tsv", pairs)
    tables.write_table(summary, out, "truth_agreement", caption="Measured versus ground-truth volumes")
    if len(pairs):
        plot_volume_agreement(pairs, out / "truth_agreement.png")
    for row in summary.itertuples():
        logger.info(
            "truth agreement %-20s r = %.3f, mean |error| = %.1f %%",
            row.structure,
            row.pearson_r,
            row.mean_abs_pct_error,
        )
    return {
        row.structure: {"pearson_r": row.pearson_r, "mean_abs_pct_error": row.mean_abs_pct_error}
        for row in summary.itertuples()
    }


def run_quality(
    real: str,
    synthetic: str,
    out: Path,
    config,
    *,
    name: str = "synthetic",
    registration: str = "demons",
    limit: int | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Real-versus-synthetic fidelity: trajectories, distances, ROI metrics, diversity, feature distances."""
    from analysis import tables
    from analysis.quality import image_metrics, roi_rows
    from flowlet.data.io import write_json_atomic, write_table_atomic

    vol = _volumetrics(config, registration, progress)
    (real_table, m_real), (syn_table, m_syn) = _measure_pair(
        real, synthetic, vol, config, limit=limit, progress=progress, jobs=jobs, keep_images=True
    )
    q = config.quality
    traj = _regional_fidelity(m_real.volumes, m_syn.volumes, config, out, name)
    rows = roi_rows(real_table, syn_table, m_real, m_syn, vol.region_names_, q)
    write_table_atomic(out / "roi_pairs.csv", rows)
    tables.write_table(
        tables.global_roi_table({name: rows}), out, "roi_global", caption="ROI metrics, global"
    )
    tables.write_table(tables.local_roi_table({name: rows}), out, "roi_local", caption="ROI metrics, local")
    tables.write_table(
        tables.per_region_roi_table(rows, keys=("region", "tissue")),
        out,
        "roi_per_region",
        caption="ROI metrics per region (mean ± sd over pairs)",
    )
    image_metrics = image_metrics(m_real, m_syn, q, config.seed)
    tables.write_table(image_metrics, out, "image_metrics", caption=f"Global image metrics: real vs {name}")
    write_json_atomic(
        out / "summary.json",
        {
            "name": name,
            "n_real": len(real_table),
            "n_synthetic": len(syn_table),
            "n_pairs": int(rows["pair"].nunique()) if len(rows) else 0,
            "trajectory_flagged": traj.loc[traj["flagged"], ["region", "tissue"]].values.tolist(),
            **{r.metric: r.value for r in image_metrics.itertuples()},
        },
    )
    _write_config(out, config, registration=registration, real=str(real), synthetic=str(synthetic), name=name)
    return out


def _measure_pair(real: str, synthetic: str, vol, config, *, limit, progress, jobs, **options):
    """``((real_table, real_measures), (synthetic_table, synthetic_measures))`` with one fitted volumetrics."""
    from analysis.evaluation import measure_cohort

    out = []
    for source in (real, synthetic):
        cohort = _cohort(source, limit)
        measures = measure_cohort(
            cohort, vol, combined_regions=config.combined_regions, progress=progress, jobs=jobs, **options
        )
        out.append((cohort, measures))
    return tuple(out)


def _regional_fidelity(real_volumes, syn_volumes, config, out: Path, name: str):
    """Volumes of both sets, per-region trajectory fidelity and age-matched distances, key-region table and plot.

    Returns the trajectory table (one row per region and tissue, with ``flagged``).
    """
    from analysis import metrics, tables
    from analysis.figures import plot_trajectories
    from analysis.quality import key_region_rows
    from flowlet.data.io import write_table_atomic

    write_table_atomic(out / "volumes_real.tsv", real_volumes)
    write_table_atomic(out / "volumes_synthetic.tsv", syn_volumes)
    traj = metrics.trajectory_fidelity(real_volumes, syn_volumes, alpha=config.quality.alpha)
    dist = metrics.age_matched_distances(real_volumes, syn_volumes, age_bins=config.age_bins)
    write_table_atomic(out / "trajectory.csv", traj)
    write_table_atomic(out / "distances.csv", dist)
    tables.write_table(
        key_region_rows(traj.merge(dist, on=["region", "tissue"]), config.key_regions),
        out,
        "key_regions",
        caption=f"Age trajectories and age-matched distances: real vs {name}",
    )
    plot_trajectories(
        {"real": real_volumes, name: syn_volumes},
        _present(real_volumes, config.key_regions),
        out / "volume_vs_age.png",
    )
    return traj.merge(dist, on=["region", "tissue"], how="left")


def run_regions_pair(
    real: str,
    synthetic: str,
    out: Path,
    config,
    *,
    name: str = "synthetic",
    registration: str = "demons",
    limit: int | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Region-by-region plausibility of a synthetic cohort against a real one (volumes only, no image metrics).

    Writes both volume tables, ``trajectory.csv``, ``distances.csv``, the key-region table, the volume-versus-age
    figure and ``plausibility.{csv,md,tex}``: every region and tissue with its real and synthetic age slopes, their
    difference with its CI, the age-matched Wasserstein/KS distances, and ``flagged`` where the synthetic slope
    differs from the real one.
    """
    from analysis import tables
    from flowlet.data.io import write_json_atomic

    start = time.perf_counter()
    vol = _volumetrics(config, registration, progress)
    (real_table, m_real), (syn_table, m_syn) = _measure_pair(
        real, synthetic, vol, config, limit=limit, progress=progress, jobs=jobs, features=False
    )
    table = _regional_fidelity(m_real.volumes, m_syn.volumes, config, out, name)
    tables.write_table(table, out, "plausibility", caption=f"Region-by-region plausibility: real vs {name}")
    flagged = table.loc[table["flagged"], ["region", "tissue"]].values.tolist()
    logger.info("%d of %d region/tissue trajectories flagged", len(flagged), len(table))
    write_json_atomic(
        out / "summary.json",
        {
            "name": name,
            "n_real": len(real_table),
            "n_synthetic": len(syn_table),
            "seconds": round(time.perf_counter() - start, 2),
            "atlas": vol.atlas_.name,
            "registration": registration,
            "trajectory_flagged": flagged,
        },
    )
    _write_config(out, config, registration=registration, real=str(real), synthetic=str(synthetic), name=name)
    return out


def run_privacy(
    train: str,
    holdout: str,
    synthetic: str,
    out: Path,
    config,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Memorisation audit of a synthetic set against the real training set, with a held-out baseline."""
    from scipy import ndimage

    from analysis import tables
    from analysis.evaluation import load_normalised
    from analysis.figures import plot_privacy
    from analysis.metrics import memorisation_audit
    from flowlet.data.grid import mni_grid
    from flowlet.data.io import write_json_atomic, write_table_atomic
    from flowlet.data.templates import brain_mask

    grid = mni_grid(config.voxel_size)
    mask = ndimage.binary_dilation(brain_mask(grid), iterations=1)
    data = {}
    for label, source in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        table = _cohort(source, limit)
        data[label] = (table, load_normalised(table, grid, mask, progress=progress))
    audit = memorisation_audit(
        data["synthetic"][1],
        data["train"][1],
        data["holdout"][1],
        synthetic_ids=data["synthetic"][0]["image_id"].tolist(),
        synthetic_ages=data["synthetic"][0]["age"].tolist(),
        train_ids=data["train"][0]["image_id"].tolist(),
        holdout_ids=data["holdout"][0]["image_id"].tolist(),
        quantile=config.privacy.quantile,
        age_bins=config.age_bins,
    )
    write_table_atomic(out / "privacy_per_image.csv", audit.per_image)
    write_table_atomic(out / "privacy_baseline.csv", audit.baseline)
    tables.write_table(audit.by_age_bin, out, "privacy_by_age_bin", caption="Likely copies per age bin")
    plot_privacy(
        audit.baseline["nn_correlation"].to_numpy(),
        audit.per_image["nn_correlation"].to_numpy(),
        audit.threshold,
        out / "privacy.png",
    )
    write_json_atomic(
        out / "summary.json",
        {
            "threshold": audit.threshold,
            "flag_rate": audit.flag_rate,
            "n_synthetic": len(audit.per_image),
            "n_train": len(data["train"][0]),
            "n_holdout": len(audit.baseline),
        },
    )
    _write_config(out, config, train=str(train), holdout=str(holdout), synthetic=str(synthetic))
    logger.info(
        "privacy: %.1f %% of synthetic images flagged (threshold r = %.4f)",
        100 * audit.flag_rate,
        audit.threshold,
    )
    return out


def run_tables(inputs: Sequence[Path], names: Sequence[str] | None, out: Path, config) -> Path:
    """The paper's tables across several ``quality`` (and ``privacy``) output folders."""
    import json

    import pandas as pd

    from analysis import tables
    from analysis.quality import key_region_rows

    names = list(names) if names else [Path(p).name for p in inputs]
    if len(names) != len(inputs):
        raise ValueError(f"--names has {len(names)} entries for {len(inputs)} inputs")
    roi, key, privacy = {}, [], []
    for name, folder in zip(names, inputs):
        folder = Path(folder)
        if (folder / "roi_pairs.csv").is_file():
            roi[name] = pd.read_csv(folder / "roi_pairs.csv")
            traj, dist = pd.read_csv(folder / "trajectory.csv"), pd.read_csv(folder / "distances.csv")
            key.append(
                key_region_rows(traj.merge(dist, on=["region", "tissue"]), config.key_regions).assign(
                    model=name
                )
            )
        elif (folder / "privacy_per_image.csv").is_file():
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            privacy.append({"model": name, **summary})
        else:
            raise ValueError(
                f"{folder}: neither roi_pairs.csv (quality) nor privacy_per_image.csv (privacy) found"
            )
    if roi:
        tables.write_table(
            tables.global_roi_table(roi), out, "roi_global", caption="ROI metrics, global (mean ± sd)"
        )
        tables.write_table(
            tables.local_roi_table(roi), out, "roi_local", caption="ROI metrics, local (mean ± sd)"
        )
        frame = pd.concat(key, ignore_index=True)
        tables.write_table(
            frame[["model", *[c for c in frame.columns if c != "model"]]],
            out,
            "key_regions",
            caption="Age trajectories of key regions",
        )
    if privacy:
        tables.write_table(pd.DataFrame(privacy), out, "privacy", caption="Memorisation audit")
    _write_config(out, config, inputs=[str(p) for p in inputs], names=names)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowlet-eval``; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_cli("%(levelname)s %(name)s: %(message)s")
    from flowlet.data.outputs import output_folder

    def body() -> int:
        config = load_config(args.config, args)
        if args.command == "regions":  # checked before --out is created
            if args.real is not None and args.synthetic is None:
                raise ValueError("regions --real needs --synthetic (or use --cohort for one cohort)")
            if args.cohort is not None and args.synthetic is not None:
                raise ValueError("regions --synthetic goes with --real, not with --cohort")
        with output_folder(
            args.out,
            command="flowlet-eval",
            inputs=_inputs(args),
            overwrite=args.overwrite,
            legacy=lambda folder: (folder / "config.yaml").is_file() and any(folder.glob("*.tsv")),
        ):
            progress = not getattr(args, "no_progress", True)
            options = (
                {"limit": args.limit, "progress": progress, "jobs": args.jobs}
                if args.command != "tables"
                else {}
            )
            if args.command == "regions" and args.real is not None:
                run_regions_pair(
                    args.real, args.synthetic, args.out, config, registration=args.registration, **options
                )
            elif args.command == "regions":
                run_regions(args.cohort, args.out, config, registration=args.registration, **options)
            elif args.command == "quality":
                run_quality(
                    args.real,
                    args.synthetic,
                    args.out,
                    config,
                    name=args.name,
                    registration=args.registration,
                    **options,
                )
            elif args.command == "fidelity":
                from pipelines.fidelity import run_fidelity

                run_fidelity(args, config)
            elif args.command == "privacy":
                options.pop("jobs")  # the audit reads images only; nothing to parallelise
                run_privacy(args.train, args.holdout, args.synthetic, args.out, config, **options)
            else:
                run_tables(args.inputs, args.names, args.out, config)
        logger.info("wrote %s", args.out)
        return 0

    return run_cli("flowlet-eval", body)


def _inputs(args: argparse.Namespace) -> list:
    """Every cohort, table, folder and file the subcommand reads."""
    names = ("config", "atlas_image", "atlas_table", "cohort", "real", "synthetic", "train", "holdout", "bap")
    return [getattr(args, name, None) for name in names] + list(getattr(args, "inputs", None) or [])


if __name__ == "__main__":
    sys.exit(main())
