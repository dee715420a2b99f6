"""Brain-age (BAP) data loading with the ``.npy`` cache on and off, and training epoch time, on 4 mm phantoms.

A phantom cohort (``write_phantom_cohort(work/cohort, N, voxel_size=4, seed=0)``, 46×55×46 voxels) is written once
(or reused from ``--work``). Then, interleaved:

* ``load_arrays`` of every scan with no cache (NIfTI decode each time) vs from a warm ``cache_dir``;
* ``prepare_data`` (split, load, normalise) with the cache off vs on;
* ``bap.train.train`` on the ``configs/bap/<--config>.yaml`` model (``demo``: the small CNN; ``paper``: DenseNet121) for 1 and for ``1 + --epochs`` epochs; the epoch time
  is the difference divided by ``--epochs`` (this removes the fixed cost: model build, evaluation, files).

Usage:
    python benchmarks/bap.py                              # about 1-2 minutes on a 2-core CPU
    python benchmarks/bap.py --full --work /tmp/bapbench --threads 2   # 200 subjects
    python benchmarks/bap.py --device cuda --config paper --voxel-size 2 --subjects 64 --epochs 2  # 91x109x91
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import add_common_args, log, print_table, setup, write_result

# This file is named like the ``bap`` package; drop its folder from the path so that ``import bap`` finds the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from bap.config import load_config, replace  # noqa: E402
from bap.data import load_arrays, prepare_data  # noqa: E402
from bap.train import train  # noqa: E402
from configs import config_path  # noqa: E402
from flowlet.data.cohort import load_cohort  # noqa: E402
from flowlet.data.phantom.cohort import write_phantom_cohort  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, "bap")
    parser.add_argument("--subjects", type=int, help="cohort size (default 24; 200 with --full)")
    parser.add_argument("--epochs", type=int, default=3, help="extra epochs of the long training run")
    parser.add_argument("--work", help="working folder (default: a temporary folder, removed at the end)")
    parser.add_argument(
        "--config", default="demo", help="packaged BAP config (default demo; paper = DenseNet121)"
    )
    parser.add_argument(
        "--voxel-size", type=int, choices=(2, 4), default=4, help="phantom grid in mm (default 4)"
    )
    args = parser.parse_args(argv)
    device = setup(args)
    args.subjects = args.subjects or (200 if args.full else 24)
    for name in ("flowlet", "bap"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bapbench-"))
    try:
        payload = run(args, work, device)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, "bap", device, payload)


def run(args: argparse.Namespace, work: Path, device) -> dict:
    cohort_dir = work / "cohort"
    t_cohort = None
    if not (cohort_dir / "participants.tsv").is_file():
        t_cohort = timed(
            lambda: write_phantom_cohort(
                cohort_dir, args.subjects, voxel_size=args.voxel_size, seed=0, progress=False
            )
        )
    table = load_cohort(cohort_dir).table
    paths = table["path"].astype(str).tolist()
    cache = work / "cache"
    t_fill = timed(lambda: load_arrays(paths, cache_dir=cache))  # cold: decode + write .npy
    base = load_config(config_path("bap", args.config))
    cfg_off = replace(base, train={"num_threads": args.threads, "epochs": 1}, eval={"n_boot": 100})
    cfg_on = replace(cfg_off, data={"cache_dir": str(cache)})
    load_t = {"load_nocache": [], "load_cache": [], "prepare_nocache": [], "prepare_cache": []}
    for _ in range(args.repeats):
        load_t["load_nocache"].append(timed(lambda: load_arrays(paths)))
        load_t["load_cache"].append(timed(lambda: load_arrays(paths, cache_dir=cache)))
        load_t["prepare_nocache"].append(timed(lambda: prepare_data(table, cfg_off.data)))
        load_t["prepare_cache"].append(timed(lambda: prepare_data(table, cfg_on.data)))
    data = prepare_data(table, cfg_on.data)
    short = replace(cfg_on, train={"epochs": 1, "patience": 0})
    long = replace(cfg_on, train={"epochs": 1 + args.epochs, "patience": 0})
    train(short, data, work / "run-warmup", progress=False)  # untimed: CUDA context, cuDNN algorithm choice
    train_t = {"train_1": [], "train_long": []}
    for rep in range(max(1, args.repeats - 1)):
        log.info("bap training rep %d", rep)
        train_t["train_1"].append(timed(lambda: train(short, data, work / "run-short", progress=False)))
        train_t["train_long"].append(timed(lambda: train(long, data, work / "run-long", progress=False)))
    n = len(paths)
    best = {k: min(v) for k, v in {**load_t, **train_t}.items()}
    epoch_s = (best["train_long"] - best["train_1"]) / args.epochs
    # Per-epoch wall time the trainer logs (training + validation of that epoch), epochs after the first.
    logged = pd.read_csv(work / "run-long" / "metrics.csv")["seconds"].to_numpy()[1:]
    epoch_logged_s = float(np.median(logged)) if logged.size else float("nan")
    rows = [
        {
            "what": "load_arrays, no cache",
            "s": best["load_nocache"],
            "volumes_per_s": n / best["load_nocache"],
        },
        {"what": "load_arrays, warm cache", "s": best["load_cache"], "volumes_per_s": n / best["load_cache"]},
        {"what": "load_arrays, cold cache (fill)", "s": t_fill, "volumes_per_s": n / t_fill},
        {
            "what": "prepare_data, no cache",
            "s": best["prepare_nocache"],
            "volumes_per_s": n / best["prepare_nocache"],
        },
        {
            "what": "prepare_data, warm cache",
            "s": best["prepare_cache"],
            "volumes_per_s": n / best["prepare_cache"],
        },
        {
            "what": "train: 1 epoch run (incl. fixed cost)",
            "s": best["train_1"],
            "volumes_per_s": float("nan"),
        },
        {
            "what": "train: one more epoch",
            "s": epoch_s,
            "volumes_per_s": float(len(data.indices("train"))) / epoch_s,
        },
        {
            "what": "train: epoch time in metrics.csv (median)",
            "s": epoch_logged_s,
            "volumes_per_s": float(len(data.indices("train"))) / epoch_logged_s,
        },
    ]
    print_table(rows)
    return {
        "config": args.config,
        "voxel_size": args.voxel_size,
        "subjects": n,
        "image_shape": list(data.images.shape[1:]),
        "train_subjects": len(data.indices("train")),
        "cohort_write_s": t_cohort,
        "cache_speedup_load": best["load_nocache"] / best["load_cache"],
        "epoch_s": epoch_s,
        "epoch_logged_s": epoch_logged_s,
        "rows": rows,
        "timings_s": {**load_t, **train_t},
    }


if __name__ == "__main__":
    main()
