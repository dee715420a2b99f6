"""``flowlet-eval privacy``: the memorisation audit.

Every synthetic image's correlation with its nearest training image, against the same measure for held-out real
images (the baseline): a synthetic image closer to a training image than the baseline's ``quantile`` is flagged.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.eval.common import cohort_table, eval_output, load_config, write_config
from pipelines.eval.flags import add_measure_flags, add_output_flags, add_voxel_size_flag, subcommand_parser

if TYPE_CHECKING:
    from analysis.config import EvalConfig

__all__ = ["EXAMPLE", "add_parser", "run_privacy"]

logger = logging.getLogger(__name__)

EXAMPLE = "  flowlet-eval privacy --train train.tsv --holdout test.tsv --synthetic synth/cohort.tsv --out eval/privacy\n"


def run_privacy(
    train: str | Path,
    holdout: str | Path,
    synthetic: str | Path,
    out: Path,
    config: EvalConfig,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Memorisation audit of a synthetic set against the real training set, with a held-out baseline.

    Uses the config's ``voxel_size``, ``privacy.quantile`` and ``age_bins``. Writes ``privacy_per_image.csv``,
    ``privacy_baseline.csv``, ``privacy_by_age_bin.{csv,md,tex}``, ``privacy.png``, ``summary.json`` and
    ``config.yaml`` into ``out``.

    Example:
        >>> run_privacy("train.tsv", "test.tsv", "synth", Path("eval/privacy"), load_config())  # doctest: +SKIP
    """
    from scipy import ndimage

    from analysis import tables
    from analysis.evaluation import load_normalised
    from analysis.figures import plot_privacy
    from analysis.metrics import memorisation_audit
    from flowlet.data.grid import mni_grid
    from flowlet.data.io import write_json_atomic, write_table_atomic
    from flowlet.data.keys import AGE
    from flowlet.data.templates import brain_mask

    grid = mni_grid(config.voxel_size)
    mask = ndimage.binary_dilation(brain_mask(grid), iterations=1)
    tables_, images = {}, {}
    for label, source in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        tables_[label] = cohort_table(source, limit)
        images[label] = load_normalised(tables_[label], grid, mask, progress=progress)
    audit = memorisation_audit(
        images["synthetic"],
        images["train"],
        images["holdout"],
        synthetic_ids=tables_["synthetic"]["image_id"].tolist(),
        synthetic_ages=tables_["synthetic"][AGE].tolist(),
        train_ids=tables_["train"]["image_id"].tolist(),
        holdout_ids=tables_["holdout"]["image_id"].tolist(),
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
            "n_train": len(tables_["train"]),
            "n_holdout": len(audit.baseline),
        },
    )
    write_config(out, config, train=str(train), holdout=str(holdout), synthetic=str(synthetic))
    logger.info(
        "privacy: %.1f %% of synthetic images flagged (threshold r = %.4f)",
        100 * audit.flag_rate,
        audit.threshold,
    )
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``privacy`` to the ``flowlet-eval`` parser: no atlas, registration or worker flags (images only)."""
    p = subcommand_parser(subparsers, "privacy", help="memorisation audit", doc=__doc__, example=EXAMPLE)
    add_output_flags(p)
    add_voxel_size_flag(p)
    add_measure_flags(p, registration=False, jobs=False)
    p.add_argument("--train", required=True, help="real images the generator was trained on")
    p.add_argument("--holdout", required=True, help="real images of subjects not used in training")
    p.add_argument("--synthetic", required=True, help="synthetic images")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    config = load_config(args.config, voxel_size=args.voxel_size)
    inputs = (args.config, args.synthetic, args.train, args.holdout)
    with eval_output(args.out, inputs, overwrite=args.overwrite):
        run_privacy(
            args.train,
            args.holdout,
            args.synthetic,
            args.out,
            config,
            limit=args.limit,
            progress=not args.no_progress,
        )
