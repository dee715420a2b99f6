"""``flowlet-eval tables``: the paper's tables across several ``quality`` and ``privacy`` runs.

Global and local ROI tables and the key-region trajectory table from ``quality`` folders, one memorisation-audit
table from ``privacy`` folders; one row (or column) per model.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.eval.common import eval_output, load_config, write_config
from pipelines.eval.flags import add_output_flags, subcommand_parser

if TYPE_CHECKING:
    from analysis.config import EvalConfig

__all__ = ["EXAMPLE", "add_parser", "run_tables"]

logger = logging.getLogger(__name__)

EXAMPLE = "  flowlet-eval tables --inputs eval/quality eval/quality-ablation --names FlowLet Ablation --out eval/tables\n"


def run_tables(
    inputs: Sequence[str | Path], names: Sequence[str] | None, out: Path, config: EvalConfig
) -> Path:
    """The paper's tables across several ``quality`` (and ``privacy``) output folders.

    Args:
        inputs: output folders of ``flowlet-eval quality`` or ``privacy``.
        names: one model name per input (None: the folder names).
        out: output folder.
        config: the evaluation config (its ``key_regions``).

    Raises:
        ValueError: ``names`` and ``inputs`` of different lengths, or a folder that is neither kind of run.

    Example:
        >>> run_tables([Path("eval/q1"), Path("eval/q2")], ["A", "B"], Path("eval/t"), load_config())  # doctest: +SKIP
    """
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
    write_config(out, config, inputs=[str(p) for p in inputs], names=names)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tables`` to the ``flowlet-eval`` parser."""
    p = subcommand_parser(
        subparsers,
        "tables",
        help="paper tables across several quality/privacy runs",
        doc=__doc__,
        example=EXAMPLE,
    )
    p.add_argument(
        "--inputs", type=Path, nargs="+", required=True, help="output folders of quality/privacy runs"
    )
    p.add_argument("--names", nargs="+", help="one model name per input (default: folder names)")
    add_output_flags(p, config_help="YAML config (key regions)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    with eval_output(args.out, (args.config, *args.inputs), overwrite=args.overwrite):
        run_tables(args.inputs, args.names, args.out, config)
