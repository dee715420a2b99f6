"""``flowlet-eval regions``: tissue volumes in every atlas region, of one cohort or of a real and a synthetic one.

With ``--cohort``: GM/WM/CSF volume (mm³) and mean intensity in every atlas region of every image, in MNI and native
space, plus agreement with ground truth where the images carry it (``*_volumes.tsv``, as the phantom cohort does).
With ``--real R --synthetic S``: both cohorts, and per region whether the synthetic volumes follow the real age
trajectory and age-matched distribution (the ``plausibility`` table).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.eval.common import (
    MeasureOptions,
    build_volumetrics,
    cohort_table,
    eval_output,
    measure_pair,
    present_regions,
    regional_fidelity,
    write_config,
)
from pipelines.eval.flags import config_from_args, measure_options, measuring_parser

if TYPE_CHECKING:
    import pandas as pd

    from analysis.config import EvalConfig

__all__ = ["EXAMPLE", "add_parser", "run_regions", "run_regions_pair"]

logger = logging.getLogger(__name__)

EXAMPLE = """\
  flowlet-eval regions --cohort phantoms --out eval/regions --atlas harvard-oxford
  flowlet-eval regions --atlas harvard-oxford --real phantoms --synthetic synth --out eval/plausibility
"""


def run_regions(
    source: str | Path, out: Path, config: EvalConfig, measure: MeasureOptions | None = None
) -> Path:
    """Volumetrics of one cohort, plus agreement with ground truth where the cohort has ``*_volumes.tsv``.

    Writes ``volumes.tsv``, ``intracranial.tsv``, ``region_volumes.{csv,md,tex}``, ``volume_vs_age.png``,
    ``summary.json``, ``config.yaml`` and, with ground truth, the agreement and tissue-Dice tables.

    Example:
        >>> run_regions("phantoms", Path("eval/regions"), load_config(voxel_size=4.0))  # doctest: +SKIP
    """
    from analysis import tables
    from analysis.evaluation import measure_cohort
    from analysis.figures import plot_trajectories
    from analysis.native_volumes import FROM_PREP, intracranial_table
    from analysis.quality import read_truth
    from flowlet.data.io import write_json_atomic, write_table_atomic

    measure = measure or MeasureOptions()
    start = time.perf_counter()
    cohort = cohort_table(source, measure.limit)
    vol = build_volumetrics(config, measure.registration, measure.progress)
    measures = measure_cohort(
        cohort,
        vol,
        combined_regions=config.combined_regions,
        features=False,
        progress=measure.progress,
        jobs=measure.jobs,
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
        present_regions(measures.volumes, config.key_regions),
        out / "volume_vs_age.png",
    )
    summary = {
        "n_images": len(cohort),
        "seconds": round(seconds, 2),
        "atlas": vol.atlas_.name,
        "grid_shape": list(vol.grid_.shape),
        "registration": measure.registration,
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
    write_config(out, config, registration=measure.registration, source=str(source))
    return out


def run_regions_pair(
    real: str | Path,
    synthetic: str | Path,
    out: Path,
    config: EvalConfig,
    measure: MeasureOptions | None = None,
    *,
    name: str = "synthetic",
) -> Path:
    """Region-by-region plausibility of a synthetic cohort against a real one (volumes only, no image metrics).

    Writes both volume tables, ``trajectory.csv``, ``distances.csv``, the key-region table, the volume-versus-age
    figure and ``plausibility.{csv,md,tex}``: every region and tissue with its real and synthetic age slopes, their
    difference with its CI, the age-matched Wasserstein/KS distances, and ``flagged`` where the synthetic slope
    differs from the real one.
    """
    from analysis import tables
    from flowlet.data.io import write_json_atomic

    measure = measure or MeasureOptions()
    start = time.perf_counter()
    pair = measure_pair(real, synthetic, config, measure, features=False)
    table = regional_fidelity(pair.real.measures.volumes, pair.synthetic.measures.volumes, config, out, name)
    tables.write_table(table, out, "plausibility", caption=f"Region-by-region plausibility: real vs {name}")
    flagged = table.loc[table["flagged"], ["region", "tissue"]].values.tolist()
    logger.info("%d of %d region/tissue trajectories flagged", len(flagged), len(table))
    write_json_atomic(
        out / "summary.json",
        {
            "name": name,
            "n_real": len(pair.real.table),
            "n_synthetic": len(pair.synthetic.table),
            "seconds": round(time.perf_counter() - start, 2),
            "atlas": pair.volumetrics.atlas_.name,
            "registration": measure.registration,
            "trajectory_flagged": flagged,
        },
    )
    write_config(
        out, config, registration=measure.registration, real=str(real), synthetic=str(synthetic), name=name
    )
    return out


def _native_volumes(cohort: pd.DataFrame, volumes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MNI and native-space columns (``volume_mni_mm3``, ``volume_native_mm3``) from prep's determinants."""
    from analysis.native_volumes import FROM_PREP, add_native_volumes, native_scaling

    native = native_scaling(dict(zip(cohort["image_id"].astype(str), cohort["path"].astype(str))))
    unknown = int((native["scale_source"] != FROM_PREP).sum())
    if unknown:
        logger.warning(
            "%d of %d images have no flowlet-prep determinant; their native volumes equal the MNI ones",
            unknown,
            len(native),
        )
    return add_native_volumes(volumes, native), native


def _dice_outputs(dice: pd.DataFrame, out: Path) -> dict[str, float]:
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


def _truth_outputs(volumes: pd.DataFrame, truth: pd.DataFrame, out: Path) -> dict[str, dict[str, float]]:
    """Measured against ground-truth volumes: ``truth_pairs.tsv``, the agreement table and figure."""
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


# ------------------------------------------------------------------------------------------------ command line
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``regions`` to the ``flowlet-eval`` parser."""
    p = measuring_parser(
        subparsers, "regions", help="per-region tissue volumes of one cohort", doc=__doc__, example=EXAMPLE
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cohort", help="BIDS folder or cohort table (see flowlet.data.cohort)")
    which.add_argument("--real", help="real cohort; with --synthetic, compare the two region by region")
    p.add_argument("--synthetic", help="synthetic cohort (e.g. a flowlet-augment output), with --real")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    if args.real is not None and args.synthetic is None:  # checked before --out is created
        raise ValueError("regions --real needs --synthetic (or use --cohort for one cohort)")
    if args.cohort is not None and args.synthetic is not None:
        raise ValueError("regions --synthetic goes with --real, not with --cohort")
    inputs = (args.config, args.atlas_image, args.atlas_table, args.cohort, args.real, args.synthetic)
    with eval_output(args.out, inputs, overwrite=args.overwrite):
        if args.real is not None:
            run_regions_pair(args.real, args.synthetic, args.out, config, measure_options(args))
        else:
            run_regions(args.cohort, args.out, config, measure_options(args))
