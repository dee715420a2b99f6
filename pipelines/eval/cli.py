"""``flowlet-eval``: region volumetrics, real-versus-synthetic fidelity, privacy audit and the paper's tables.

Sub-commands (each writes CSV + Markdown + LaTeX tables, PNG figures and the resolved ``config.yaml`` into ``--out``;
each is a module of :mod:`pipelines.eval` with a ``run_<name>`` function):

* ``regions``: GM/WM/CSF volume (mm³) and mean intensity in every atlas region of every image of a cohort; with
  ``--real R --synthetic S``, whether the synthetic volumes follow the real ones region by region;
* ``quality``: age-trajectory fidelity, age-matched W1/KS per region, the paper's ROI metrics on age-matched
  pairs, MS-SSIM diversity, MMD and Fréchet distance of fixed image features;
* ``fidelity``: per age bin, synthetic against real brains of the same age (volumes, slope ratios, brain-age gap,
  texture noise);
* ``privacy``: nearest-training-image correlation of every synthetic image against the held-out baseline;
* ``tables``: the paper's global/local ROI tables and key-region trajectory tables across several ``quality`` runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipelines.arguments import setup_cli
from pipelines.cli import run_cli
from pipelines.eval import fidelity, privacy, quality, regions, tables
from pipelines.eval.common import COMMAND

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

#: The sub-commands in the order ``--help`` lists them.
SUBCOMMANDS = (regions, quality, privacy, fidelity, tables)

EXAMPLE = "examples:\n  flowlet-phantoms --n 100 --out phantoms --seed 0\n" + "".join(
    m.EXAMPLE for m in SUBCOMMANDS
)


def build_parser() -> argparse.ArgumentParser:
    """The ``flowlet-eval`` parser; each sub-command's parser holds only the flags that sub-command uses."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowlet-eval``; returns the exit status (0, 2 for a user error, 130 after Ctrl-C).

    Example:
        >>> main(["regions", "--cohort", "phantoms", "--out", "eval/regions", "--voxel-size", "4"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    setup_cli("%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        args.run(args)
        logger.info("wrote %s", args.out)

    return run_cli(COMMAND, body)


if __name__ == "__main__":
    sys.exit(main())
