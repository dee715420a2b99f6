"""``flowlet-prep``: turn raw T1w scans (a BIDS folder) into a preprocessed cohort on the MNI grid."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines.arguments import (
    finite_float,
    setup_cli,
    thread_count,
)
from pipelines.cli import run_cli

logger = logging.getLogger(__name__)

_EXAMPLE = """example:
  flowlet-prep --bids raw_bids --out derivatives/flowlet-prep --jobs 2
  flowlet-prep --bids raw_bids --out prep4 --voxel-size 4 --participants ages.tsv

Each sub-*/[ses-*/]anat/*_T1w.nii[.gz] (raw head or skull-stripped) is reoriented to RAS, bias-corrected
(N4), brain-extracted by registration of the ICBM152 brain template, registered (affine, brain to brain),
resampled onto the MNI grid (2 mm: 91x109x91) and checked against QC limits. The output is a BIDS
derivatives folder (load it with flowlet.data.load_cohort) with qc/prep_qc.tsv, one QC picture per scan in
qc/scans/ and qc/prep_contact_sheet.png. Scans that fail QC go to qc/rejected/, outside the cohort.
Finished scans are verified and skipped when the command is run again. Needs the 'prep' extra:
  pip install "flowlet-toolkit[prep]"
Exit status: 0 when every scan passed, 1 when some failed or were rejected by QC (listed with reasons),
2 on a usage error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlet-prep",
        description="Preprocess raw T1w scans into the model's space (MNI152, 2 mm, skull-stripped).",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bids", type=Path, required=True, help="raw BIDS folder")
    parser.add_argument("--out", type=Path, required=True, help="output (BIDS derivatives) folder")
    parser.add_argument(
        "--participants", type=Path, help="participants table to carry over (default: BIDS one)"
    )
    parser.add_argument(
        "--voxel-size", type=finite_float(0.5, 8), default=2.0, help="output grid in mm (default 2)"
    )
    parser.add_argument(
        "--template",
        default="icbm152-t1",
        choices=("icbm152-t1", "mni152-t1-brain", "icbm152-2009c-brain"),
        help="registration template (default icbm152-t1, ICBM152 2009a)",
    )
    parser.add_argument(
        "--jobs", type=thread_count, default=1, help="scans processed in parallel (default 1)"
    )
    parser.add_argument("--threads", type=thread_count, default=1, help="ITK threads per job (default 1)")
    parser.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    parser.add_argument(
        "--no-brain-extraction",
        action="store_true",
        help="register the whole image to the brain template (only for scans already skull-stripped)",
    )
    parser.add_argument("--no-resume", action="store_true", help="process every scan again")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that flowlet-prep did not create (same-named files are replaced)",
    )
    parser.add_argument(
        "--keep-rejected",
        action="store_true",
        help="keep scans that fail QC in the cohort (still listed, exit status still 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli("%(levelname)s %(name)s: %(message)s")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    from flowlet.data.outputs import output_folder
    from flowlet.data.prep import PrepConfig, run_prep

    def body() -> int:
        config = PrepConfig(
            voxel_size=args.voxel_size,
            template=args.template,
            n4=not args.no_n4,
            brain_extraction=not args.no_brain_extraction,
        )
        with output_folder(
            args.out,
            command="flowlet-prep",
            inputs=[args.bids, args.participants],
            overwrite=args.overwrite,
            lock=None,  # run_prep holds the folder's lock
            legacy=lambda folder: (folder / "qc" / "prep_qc.tsv").is_file(),  # written by an earlier version
        ):
            report = run_prep(
                args.bids,
                args.out,
                config=config,
                participants=args.participants,
                jobs=args.jobs,
                threads_per_job=args.threads,
                resume=not args.no_resume,
                progress=not args.no_progress,
                keep_rejected=args.keep_rejected,
            )
        print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
        print(f"QC table: {report.qc_path}")
        return 1 if report.failures else 0

    return run_cli("flowlet-prep", body, errors=(ImportError,))


if __name__ == "__main__":
    raise SystemExit(main())
