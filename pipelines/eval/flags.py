"""The flags the ``flowlet-eval`` sub-commands share, and their translation into the typed run arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.arguments import finite_float, positive_int, thread_count
from pipelines.eval.common import REGISTRATIONS, MeasureOptions, load_config

if TYPE_CHECKING:
    from analysis.config import EvalConfig

__all__ = [
    "add_atlas_flags",
    "add_measure_flags",
    "add_output_flags",
    "add_voxel_size_flag",
    "config_from_args",
    "measure_options",
    "measuring_parser",
    "subcommand_parser",
]


def subcommand_parser(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, doc: str, example: str
) -> argparse.ArgumentParser:
    """A sub-command's parser: one-line ``help``, the module docstring's first paragraph and its example(s)."""
    label = "examples" if example.strip().count("\n") else "example"
    return subparsers.add_parser(
        name,
        help=help,
        description=doc.split("\n\n")[0],
        epilog=f"{label}:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def measuring_parser(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, doc: str, example: str
) -> argparse.ArgumentParser:
    """:func:`subcommand_parser` with the flags of a sub-command that segments images (output, atlas, grid,
    registration, limit, progress, workers): ``regions``, ``quality`` and ``fidelity``."""
    parser = subcommand_parser(subparsers, name, help=help, doc=doc, example=example)
    add_output_flags(parser)
    add_atlas_flags(parser)
    add_voxel_size_flag(parser)
    add_measure_flags(parser)
    return parser


def add_output_flags(parser: argparse.ArgumentParser, *, config_help: str | None = None) -> None:
    """``--out``, ``--overwrite`` and ``--config``: every sub-command has them."""
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty folder flowlet-eval did not create"
    )
    parser.add_argument(
        "--config", type=Path, help=config_help or "YAML config (default: configs/eval/default.yaml)"
    )


def add_atlas_flags(parser: argparse.ArgumentParser) -> None:
    """``--atlas``, ``--atlas-image``, ``--atlas-table``: for the sub-commands that measure regions."""
    parser.add_argument("--atlas", help="packaged atlas name (overrides the config)")
    parser.add_argument("--atlas-image", type=Path, help="custom atlas label NIfTI (with --atlas-table)")
    parser.add_argument("--atlas-table", type=Path, help="TSV with columns index, name for --atlas-image")


def add_voxel_size_flag(parser: argparse.ArgumentParser) -> None:
    """``--voxel-size``: for the sub-commands that resample images onto the MNI grid."""
    parser.add_argument(
        "--voxel-size", type=finite_float(0.5, 8), help="working MNI grid in mm (overrides the config)"
    )


def add_measure_flags(
    parser: argparse.ArgumentParser, *, registration: bool = True, jobs: bool = True
) -> None:
    """``--registration``, ``--limit``, ``--no-progress``, ``--jobs`` (the first and last only where used)."""
    if registration:
        parser.add_argument(
            "--registration",
            choices=REGISTRATIONS,
            default="demons",
            help="carry the atlas onto each image by registration (default) or use it as is",
        )
    parser.add_argument(
        "--limit", type=positive_int, help="use only the first N images of every cohort (quick looks)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if jobs:
        parser.add_argument(
            "--jobs",
            type=thread_count,
            default=1,
            help="worker processes for the per-image work (default 1; results do not change)",
        )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """:func:`load_config` from ``--config``, the atlas flags and ``--voxel-size`` (sub-commands that measure)."""
    return load_config(
        args.config,
        atlas=args.atlas,
        atlas_image=args.atlas_image,
        atlas_table=args.atlas_table,
        voxel_size=args.voxel_size,
    )


def measure_options(args: argparse.Namespace) -> MeasureOptions:
    """:class:`MeasureOptions` from the flags of :func:`add_measure_flags`."""
    return MeasureOptions(
        registration=args.registration, limit=args.limit, progress=not args.no_progress, jobs=args.jobs
    )
