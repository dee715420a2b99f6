"""``flowlet-eval quality``: how closely a synthetic cohort resembles a real one.

Age-trajectory fidelity and age-matched W1/KS distances per region, the paper's ROI metrics on age-matched pairs,
MS-SSIM diversity, and MMD and Fréchet distance of fixed image features.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.eval.common import MeasureOptions, eval_output, measure_pair, regional_fidelity, write_config
from pipelines.eval.flags import config_from_args, measure_options, measuring_parser

if TYPE_CHECKING:
    from analysis.config import EvalConfig

__all__ = ["EXAMPLE", "add_parser", "run_quality"]

logger = logging.getLogger(__name__)

EXAMPLE = "  flowlet-eval quality --real phantoms --synthetic synth/cohort.tsv --out eval/quality\n"


def run_quality(
    real: str | Path,
    synthetic: str | Path,
    out: Path,
    config: EvalConfig,
    measure: MeasureOptions | None = None,
    *,
    name: str = "synthetic",
) -> Path:
    """Real-versus-synthetic fidelity: trajectories, distances, ROI metrics, diversity, feature distances.

    Writes the tables of :func:`pipelines.eval.common.regional_fidelity`, ``roi_pairs.csv``,
    ``roi_{global,local,per_region}`` and ``image_metrics`` (CSV, Markdown, LaTeX), ``summary.json`` and
    ``config.yaml`` into ``out``.

    Example:
        >>> run_quality("phantoms", "synth/cohort.tsv", Path("eval/quality"), load_config())  # doctest: +SKIP
    """
    from analysis import tables
    from analysis.quality import image_metrics, roi_rows
    from flowlet.data.io import write_json_atomic, write_table_atomic

    measure = measure or MeasureOptions()
    pair = measure_pair(real, synthetic, config, measure, keep_images=True)
    m_real, m_syn = pair.real.measures, pair.synthetic.measures
    q = config.quality
    traj = regional_fidelity(m_real.volumes, m_syn.volumes, config, out, name)
    rows = roi_rows(pair.real.table, pair.synthetic.table, m_real, m_syn, pair.volumetrics.region_names_, q)
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
    metrics = image_metrics(m_real, m_syn, q, config.seed)
    tables.write_table(metrics, out, "image_metrics", caption=f"Global image metrics: real vs {name}")
    write_json_atomic(
        out / "summary.json",
        {
            "name": name,
            "n_real": len(pair.real.table),
            "n_synthetic": len(pair.synthetic.table),
            "n_pairs": int(rows["pair"].nunique()) if len(rows) else 0,
            "trajectory_flagged": traj.loc[traj["flagged"], ["region", "tissue"]].values.tolist(),
            **{r.metric: r.value for r in metrics.itertuples()},
        },
    )
    write_config(
        out, config, registration=measure.registration, real=str(real), synthetic=str(synthetic), name=name
    )
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``quality`` to the ``flowlet-eval`` parser."""
    p = measuring_parser(
        subparsers, "quality", help="real versus synthetic fidelity", doc=__doc__, example=EXAMPLE
    )
    p.add_argument("--real", required=True, help="real cohort (folder or table)")
    p.add_argument("--synthetic", required=True, help="synthetic cohort (table with the generation ages)")
    p.add_argument("--name", default="synthetic", help="label of the synthetic set in tables and figures")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    inputs = (args.config, args.atlas_image, args.atlas_table, args.real, args.synthetic)
    with eval_output(args.out, inputs, overwrite=args.overwrite):
        run_quality(args.real, args.synthetic, args.out, config, measure_options(args), name=args.name)
