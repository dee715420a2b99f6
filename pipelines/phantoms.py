"""``flowlet-phantoms``: write the deterministic ageing-phantom cohort as a BIDS-style folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.arguments import (
    bounded_int,
    seed_int,
    setup_cli,
)
from pipelines.cli import run_cli

logger = logging.getLogger(__name__)

_EXAMPLE = """example:
  flowlet-phantoms --n 200 --out ph --seed 0
  flowlet-phantoms --n 20 --out ph4 --voxel-size 4 --age-hist uniform

--age-hist FILE is a TSV with columns age_min, age_max and count or proportion, e.g.
  age_min<TAB>age_max<TAB>count
  20<TAB>40<TAB>50
  40<TAB>90<TAB>50
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlet-phantoms",
        description="Generate a synthetic brain-ageing cohort (T1w images, label maps, ground-truth volumes).",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=bounded_int(None, 100_000), required=True, help="number of subjects")
    parser.add_argument("--out", type=Path, required=True, help="output folder (BIDS layout)")
    parser.add_argument(
        "--age-hist",
        default="skewed",
        help="'skewed' (default: dense 20-40), 'uniform' (8-90) or a histogram TSV file",
    )
    parser.add_argument("--voxel-size", type=int, choices=(2, 4), default=2, help="grid in mm (default 2)")
    parser.add_argument("--sites", type=int, default=3, help="number of acquisition sites (default 3)")
    parser.add_argument("--seed", type=seed_int, default=0, help="cohort seed (default 0)")
    parser.add_argument(
        "--tissue-maps",
        action="store_true",
        help="also write the true tissue probabilities (sub-*_label-{CSF,GM,WM}_probseg.nii.gz)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli("%(levelname)s %(name)s: %(message)s")
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    from flowlet.data.io import remove_stale_temporaries
    from flowlet.data.outputs import output_folder
    from flowlet.data.phantom import age_histogram, write_phantom_cohort

    def body() -> int:
        age_histogram(args.age_hist)  # fail on a malformed file before any work
        with output_folder(
            args.out,
            command="flowlet-phantoms",
            inputs=[args.age_hist],
            overwrite=args.overwrite,
            reuse=False,  # a new cohort replaces the earlier one: only with --overwrite
            reuse_hint="use --overwrite to replace it",
        ) as folder:
            remove_stale_temporaries(args.out)  # left by a killed run
            write_phantom_cohort(
                args.out,
                args.n,
                age_hist=args.age_hist,
                voxel_size=args.voxel_size,
                sites=args.sites,
                seed=args.seed,
                progress=not args.no_progress,
                tissue_maps=args.tissue_maps,
            )
            folder.remove_previous()  # subjects of an earlier, larger cohort
        logger.info("cohort written to %s", args.out)
        return 0

    return run_cli("flowlet-phantoms", body, interrupted="rerun the same command with --overwrite")


if __name__ == "__main__":
    raise SystemExit(main())
