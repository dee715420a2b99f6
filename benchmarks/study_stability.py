"""Does a study's conclusion survive other training seeds and another machine? Re-score finished studies.

For every study folder given, the sparse bins pooled and the overall test set are scored with the study's own
statistics (:func:`pipelines.study.report.sparse_statistics`, :func:`bap.compare.arm_statistics`) on all seeds and
on disjoint halves of the seeds (first half, second half). A conclusion that holds only on some seeds, or only on
one machine or thread count, shows up as a verdict that changes between rows. Prints one table and writes
``benchmarks/results/study_stability.json``.

Usage::

    python benchmarks/study_stability.py demo-study other-machine/demo-study
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bap.compare import arm_statistics  # noqa: E402
from flowlet.data import keys  # noqa: E402
from flowlet.data.cohort import load_cohort  # noqa: E402
from flowlet.data.io import write_json_atomic  # noqa: E402
from pipelines.study.report import sparse_bins, sparse_statistics  # noqa: E402

COLUMNS = [
    "arm",
    "mae_years",
    "diff_years",
    "diff_low_years",
    "diff_high_years",
    "diff_seed_sd_years",
    "verdict",
]


def read_predictions(study: Path) -> pd.DataFrame:
    """The study's test predictions, read as its report reads them (ids and "n/a" sessions kept as text)."""
    return pd.read_csv(
        study / "bap" / "test_predictions.csv",
        dtype={keys.SUBJECT_ID: str, keys.SESSION_ID: str},
        keep_default_na=False,
        na_values=[""],
    )


def score(study: Path, seeds: list[int], *, bin_width: float, n_boot: int) -> pd.DataFrame:
    """Sparse-pooled and overall rows of every arm on the test scans of ``study``, trained with ``seeds``."""
    predictions = read_predictions(study)
    predictions = predictions[predictions["seed"].isin(seeds)]
    split = load_cohort(study / "split" / "split.tsv").table
    sparse = sparse_bins(split, bin_width)
    pooled = sparse_statistics(predictions, sparse, bin_width=bin_width, n_boot=n_boot, seed=0)
    overall = arm_statistics(predictions, bin_width=bin_width, n_boot=n_boot, seed=0)
    overall = overall[overall["age_bin"] == "all"]
    parts = [frame[COLUMNS].assign(scope=scope) for scope, frame in (("sparse", pooled), ("all", overall))]
    return pd.concat(parts, ignore_index=True).assign(sparse_bins=", ".join(sparse))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="+", type=Path, help="finished study folders (flowlet-study --out)")
    p.add_argument("--bin-width", type=float, default=10.0)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_stability.json")
    args = p.parse_args(argv)
    rows = []
    for study in args.studies:
        seeds = sorted(int(seed) for seed in read_predictions(study)["seed"].unique())
        half = len(seeds) // 2
        for label, chosen in (
            ("all seeds", seeds),
            ("first half", seeds[:half]),
            ("second half", seeds[half:]),
        ):
            if not chosen:
                continue
            table = score(study, chosen, bin_width=args.bin_width, n_boot=args.n_boot)
            rows.append(table.assign(study=str(study), seeds=f"{label}: seeds {chosen[0]}-{chosen[-1]}"))
    result = pd.concat(rows, ignore_index=True)
    wide = result.pivot_table(
        index=["scope", "arm"], columns=["study", "seeds"], values="verdict", aggfunc="first"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(wide.to_string())
    stable = wide.nunique(axis=1) == 1
    print(f"\nverdicts identical in every column: {int(stable.sum())} of {len(stable)} rows")
    write_json_atomic(
        args.out,
        {
            "studies": [str(s) for s in args.studies],
            "rows": result.replace({np.nan: None}).to_dict(orient="records"),
            "stable_rows": int(stable.sum()),
            "rows_total": len(stable),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
