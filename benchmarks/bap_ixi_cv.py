"""Brain age on ``ixi-dev`` through the real prep path: k-fold subject-level CV of ``bap-train`` with its ridge baseline.

Input: a ``flowlet-prep`` output of the 30 raw ``ixi-dev`` heads (4 mm for the CPU recipe)::

    flowlet-prep --bids ../shared/data/ixi-dev --out /tmp/ixi_prep4 --voxel-size 4 --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/bap_ixi_cv.py --prep /tmp/ixi_prep4 --work /tmp/ixi_cv

Folds are made by subject, stratified by age (subjects sorted by age, each block of ``k`` shuffled across the
folds with a fixed seed). In fold ``i`` the fold is the test split, ``--val`` further subjects (again spread over
the age range) the validation split, the rest the training split, written as a ``cv_split`` column of a cohort
table; ``bap-train --split-column cv_split --baseline ridge`` then trains the CNN (``--config``) and fits the
built-in ridge on region volumes of the same training subjects. Per fold the script collects, from each run's
``results.csv`` and ``summary.json``: training and test MAE of the CNN, the ridge and the mean predictor (the
training split's mean age), the bias-correction decision and what the fitted correction would have done to the
test MAE. Writes ``benchmarks/results/bap_ixi_cv.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from flowlet.data import keys  # noqa: E402
from flowlet.data.cohort import load_cohort  # noqa: E402
from flowlet.data.io import write_json_atomic, write_table_atomic  # noqa: E402


def age_folds(table: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold (0..k-1) of each subject: by sorted age, every block of ``k`` subjects dealt over the folds at random."""
    subjects = table.groupby(keys.SUBJECT_ID)[keys.AGE].first().sort_values(kind="stable")
    rng = np.random.default_rng(seed)
    fold = {}
    for start in range(0, len(subjects), k):
        block = subjects.index[start : start + k]
        for sid, f in zip(block, rng.permutation(k)[: len(block)]):
            fold[sid] = int(f)
    return table[keys.SUBJECT_ID].map(fold)


def fold_table(table: pd.DataFrame, folds: pd.Series, test_fold: int, n_val: int) -> pd.DataFrame:
    """The cohort with ``cv_split``: the test fold, ``n_val`` validation subjects spread over the ages, the rest."""
    out = table.copy()
    out["cv_split"] = np.where(folds == test_fold, "test", "train")
    rest = out[out["cv_split"] == "train"].groupby(keys.SUBJECT_ID)[keys.AGE].first().sort_values()
    picks = rest.index[np.linspace(0, len(rest) - 1, n_val).round().astype(int)] if n_val > 0 else []
    out.loc[out[keys.SUBJECT_ID].isin(picks), "cv_split"] = "val"
    return out


def run_fold(cohort: Path, run_dir: Path, config: str, extra: list[str], reuse: bool = False) -> dict:
    from pipelines.bap_train import main as bap_train

    argv = ["--real", str(cohort), "--config", config, "--split-column", "cv_split", "--baseline", "ridge"]
    argv += ["--out", str(run_dir), "--no-progress", "--overwrite", *extra]
    start = time.perf_counter()
    reused = reuse and (run_dir / "results.csv").is_file()
    code = 0 if reused else bap_train(argv)
    if code != 0:
        raise RuntimeError(f"bap-train exited with {code} on {cohort}")
    summary = json.loads((run_dir / "summary.json").read_text())
    results = pd.read_csv(run_dir / "results.csv")
    mae = {(r.model, r.split): round(float(r.mae_years), 2) for r in results.itertuples()}
    # The decision, used or refused (with the reason); "bias_correction" itself is null when refused.
    bias = summary.get("bias_correction_check") or summary.get("bias_correction") or {}
    test = summary["splits"].get("test", {})
    return {
        "reused_earlier_run": bool(reused),
        "seconds": None if reused else round(time.perf_counter() - start, 1),
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "mae": {f"{m}/{s}": v for (m, s), v in mae.items()},
        "bias_correction": bias,
        "test_mae": test.get("mae"),
        "test_mae_reported_corrected": test.get("mae_corrected"),
        "test_mae_if_corrected": test.get("mae_if_corrected"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prep", required=True, help="flowlet-prep output folder (the cohort)")
    parser.add_argument("--work", required=True, help="folder for the fold tables and runs")
    parser.add_argument("--config", default="cpu-4mm", help="bap-train config (default cpu-4mm)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--val", type=int, default=4, help="validation subjects per fold")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--set", action="append", default=[], help="bap-train --set override (repeatable)")
    parser.add_argument(
        "--reuse", action="store_true", help="collect finished fold runs instead of training again"
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bap_ixi_cv.json"))
    args = parser.parse_args(argv)

    work = Path(args.work)
    table = load_cohort(args.prep).table
    folds = age_folds(table, args.folds, args.seed)
    extra = [x for s in args.set for x in ("--set", s)]
    result = {
        "prep": str(args.prep),
        "config": args.config,
        "overrides": args.set,
        "n_subjects": int(table[keys.SUBJECT_ID].nunique()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "folds": [],
    }
    for i in range(args.folds):
        cohort = work / f"fold{i}" / "cohort.tsv"
        part = fold_table(table, folds, i, args.val)
        write_table_atomic(cohort, part[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE, keys.PATH, "cv_split"]])
        entry = {"fold": i, **part["cv_split"].value_counts().to_dict()}
        entry.update(run_fold(cohort, work / f"fold{i}" / "run", args.config, extra, args.reuse))
        result["folds"].append(entry)
        print(json.dumps(entry), flush=True)
    result["mean_test_mae"] = {
        name: round(float(np.mean([f["mae"][f"{name}/test"] for f in result["folds"]])), 2)
        for name in ("cnn", "ridge", "mean-age")
    }
    result["mean_train_mae"] = {
        name: round(float(np.mean([f["mae"][f"{name}/train"] for f in result["folds"]])), 2)
        for name in ("cnn", "ridge", "mean-age")
    }
    write_json_atomic(Path(args.json), result)
    print(json.dumps({k: result[k] for k in ("mean_train_mae", "mean_test_mae")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
