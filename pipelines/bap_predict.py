"""``bap-predict``: brain-age predictions for any cohort with a checkpoint written by ``bap-train``.

Example::

    bap-predict --checkpoint runs/bap-demo/best.pt --cohort data/other --out predictions.csv
"""

from __future__ import annotations

import argparse
import logging

from pipelines.arguments import (
    bounded_int,
    setup_cli,
)
from pipelines.cli import run_cli

logger = logging.getLogger(__name__)

_EXAMPLE = """example:
  bap-predict --checkpoint runs/bap-demo/best.pt --cohort data/other --out runs/bap-demo/other.csv
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bap-predict",
        description=__doc__.splitlines()[0],
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="best.pt written by bap-train")
    p.add_argument("--cohort", required=True, help="cohort to predict (BIDS folder, OpenBHB folder or table)")
    p.add_argument(
        "--out", required=True, help="output CSV (subject_id, session_id, age, pred, pred_corrected, split)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--batch-size",
        type=bounded_int(1, 4096),
        default=16,
        help="images per forward pass (default %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    return p


def run(args: argparse.Namespace) -> int:
    from bap import metrics
    from bap.checkpoint import load_model
    from bap.predict import predict_cohort
    from flowlet.data.cohort import load_cohort
    from flowlet.data.io import write_table_atomic
    from flowlet.data.outputs import check_output_file

    check_output_file(args.out, [args.cohort, args.checkpoint], overwrite=args.overwrite)
    bap_model = load_model(args.checkpoint, device=args.device)  # a bad checkpoint is refused before any work
    table = load_cohort(args.cohort).table
    out = predict_cohort(bap_model, table, batch_size=args.batch_size, device=args.device)
    write_table_atomic(args.out, out)
    if len(out) > 1:
        logger.info(
            "%d scans, MAE %.3f (corrected %.3f) -> %s",
            len(out),
            metrics.mae(out["age"], out["pred"]),
            metrics.mae(out["age"], out["pred_corrected"]),
            args.out,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bap-predict``."""
    args = build_parser().parse_args(argv)
    setup_cli("%(asctime)s %(name)s: %(message)s")
    return run_cli(
        "bap-predict", lambda: run(args), interrupted="nothing was written; rerun the same command"
    )


if __name__ == "__main__":
    raise SystemExit(main())
