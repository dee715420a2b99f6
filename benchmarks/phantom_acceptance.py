"""Acceptance measurements of the ageing phantom; prints a table and writes JSON.

Checks (on the ground-truth ``volumes.tsv`` files):
* generation time of ``flowlet-phantoms --n N --out DIR --seed S`` (seconds per subject), and byte identity of a
  repeated run;
* mean lateral-ventricle volume of 75–85-year-olds / 20–30-year-olds in [2.5, 6.0];
* hippocampal volume falls with age (Spearman rho < 0);
* intracranial volume independent of age (|Spearman rho| < 0.2);
* RidgeCV (5-fold CV) on region volumes predicts age with MAE in [3, 10] years.

Usage::

    python benchmarks/phantom_acceptance.py --n 200 --work /tmp/phacc --json phantom_acceptance.json
    python benchmarks/phantom_acceptance.py --analyse-only /tmp/phacc/uniform   # statistics of an existing cohort
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
HIPPOCAMPI = ("Left_Hippocampus", "Right_Hippocampus")


def tree_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def generate(out: Path, n: int, seed: int, extra: list[str]) -> tuple[float, float]:
    """Run the CLI in this process; return (wall seconds, CPU seconds of this process)."""
    from pipelines.phantoms import main

    if out.exists():
        shutil.rmtree(out)
    start, cpu = time.perf_counter(), time.process_time()
    code = main(["--n", str(n), "--out", str(out), "--seed", str(seed), "--no-progress", *extra])
    if code != 0:
        raise RuntimeError(f"flowlet-phantoms exited with {code}")
    return time.perf_counter() - start, time.process_time() - cpu


def load_volumes(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Participants and a wide table (one row per subject, one column per region/tissue)."""
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    rows = []
    for pid in participants["participant_id"]:
        vol = pd.read_csv(root / pid / "anat" / f"{pid}_volumes.tsv", sep="\t")
        rows.append(
            pd.Series(vol["volume_mm3"].to_numpy(), index=vol["region"] + ":" + vol["tissue"], name=pid)
        )
    return participants, pd.DataFrame(rows)


def statistics(root: Path) -> dict[str, float]:
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    participants, wide = load_volumes(root)
    age = participants["age"].to_numpy(float)
    vent = sum(wide[f"{r}:all"] for r in VENTRICLES).to_numpy()
    hippo = sum(wide[f"{r}:all"] for r in HIPPOCAMPI).to_numpy()
    icv = wide["intracranial:all"].to_numpy()
    old, young = (age >= 75) & (age <= 85), (age >= 20) & (age <= 30)
    features = wide[[c for c in wide.columns if c.endswith(":all")]].to_numpy()
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    predicted = cross_val_predict(model, features, age, cv=KFold(5, shuffle=True, random_state=0))
    return {
        "n_subjects": len(age),
        "n_old_75_85": int(old.sum()),
        "n_young_20_30": int(young.sum()),
        "ventricle_ratio_old_young": float(vent[old].mean() / vent[young].mean()),
        "young_ventricle_ml": float(vent[young].mean() / 1e3),
        "hippocampus_spearman_age": float(spearmanr(age, hippo)[0]),
        "icv_spearman_age": float(spearmanr(age, icv)[0]),
        "icv_cv": float(icv.std() / icv.mean()),
        "ridge_mae_years": float(np.mean(np.abs(predicted - age))),
        "ridge_n_features": int(features.shape[1]),
    }


def verdicts(stats: dict[str, float]) -> dict[str, bool]:
    return {
        "ventricle ratio in [2.5, 6]": 2.5 <= stats["ventricle_ratio_old_young"] <= 6.0,
        "hippocampus falls with age": stats["hippocampus_spearman_age"] < 0,
        "|ICV rho| < 0.2": abs(stats["icv_spearman_age"]) < 0.2,
        "ridge MAE in [3, 10]": 3.0 <= stats["ridge_mae_years"] <= 10.0,
    }


def print_table(results: dict) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voxel-size", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("phantom-acceptance"))
    parser.add_argument("--json", type=Path, default=Path("phantom_acceptance.json"))
    parser.add_argument("--no-repeat", action="store_true", help="skip the byte-identity rerun")
    parser.add_argument("--analyse-only", type=Path, help="only compute statistics of this cohort folder")
    args = parser.parse_args(argv)
    if args.analyse_only:
        results = statistics(args.analyse_only)
        results.update({k: str(v) for k, v in verdicts(results).items()})
        print_table(results)
        return 0
    extra = ["--voxel-size", str(args.voxel_size)]
    results: dict = {"n": args.n, "seed": args.seed, "voxel_size_mm": args.voxel_size}
    # Uniform ages first: the acceptance statistics need enough subjects in 20-30 and 75-85.
    wall, cpu = generate(args.work / "uniform", args.n, args.seed, [*extra, "--age-hist", "uniform"])
    stats = statistics(args.work / "uniform")
    results.update(
        {"uniform_seconds_per_subject": wall / args.n, "uniform_cpu_seconds_per_subject": cpu / args.n}
    )
    results.update({f"uniform_{k}": v for k, v in stats.items()})
    results.update({f"uniform: {k}": str(v) for k, v in verdicts(stats).items()})
    _save(results, args.json)
    wall, cpu = generate(args.work / "default", args.n, args.seed, extra)
    results.update(
        {
            "default_seconds": wall,
            "default_seconds_per_subject": wall / args.n,
            "default_cpu_seconds_per_subject": cpu / args.n,
            "load_average_1min": os.getloadavg()[0],
        }
    )
    results.update({f"skewed_{k}": v for k, v in statistics(args.work / "default").items()})
    _save(results, args.json)
    if not args.no_repeat:
        wall, _ = generate(args.work / "repeat", args.n, args.seed, extra)
        same = tree_digest(args.work / "default") == tree_digest(args.work / "repeat")
        results.update({"repeat_seconds": wall, "byte_identical": same})
        _save(results, args.json)
    print_table(results)
    return 0


def _save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
