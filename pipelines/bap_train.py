"""``bap-train``: train a brain-age model on a real cohort, optionally mixed with synthetic scans.

Example::

    bap-train --real data/real --config demo --out runs/bap-demo
    bap-train --real data/real --synthetic data/synth --synthetic-ratio 0.5 --config paper --out runs/paper-0.5
    bap-train --real data/real --synthetic data/synth --compare 0,0.5,1.0 --seeds 3 --out runs/compare
    bap-train --real data/real --synthetic data/synth --arms real,oversample,reweight,synthetic:0.5 --seeds 3 \
        --out runs/arms
    torchrun --nproc-per-node 2 -m pipelines.bap_train --real data/real --config paper --out runs/ddp

Next to the CNN, a ridge regression on region volumes is fitted on the same training subjects (``--baseline``):
from ``--baseline-features`` (a volumes table) or, when the scans are on an MNI grid, from region volumes measured
here (``analysis`` volumetrics); ``results.csv`` lists both with the mean-age predictor.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipelines.arguments import (
    MAX_RATIO,
    bounded_int,
    finite_float,
    seed_int,
    setup_cli,
)
from pipelines.cli import run_cli
from pipelines.init_weights import add_init_arguments, init_file

logger = logging.getLogger(__name__)

_EXAMPLE = """examples:
  bap-train --real data/real --config demo --out runs/bap-demo
  bap-train --real data/real --synthetic data/synth --synthetic-ratio 0.5 --out runs/r0.5
  bap-train --real data/real --synthetic data/synth --compare 0,0.5,1.0 --seeds 3 --out runs/cmp
  bap-train --real data/real --synthetic data/synth --test data/external \
      --arms real,oversample,reweight,synthetic:0.5,synthetic:1 --seeds 3 --out runs/arms
  bap-train --real data/real --config demo --set train.lr=3e-3 --set model.options.channels=[8,16,32] --out r
  bap-train --real prep --config default --init ukb_sfcn.p --init-skip-head --out runs/sfcn-ukb
  bap-train --real prep --config cpu-4mm --baseline-features regions/volumes.tsv --out runs/with-ridge
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bap-train",
        description=__doc__.splitlines()[0],
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--real", required=True, help="real cohort (BIDS folder, OpenBHB folder or table)")
    p.add_argument(
        "--synthetic", help="synthetic cohort (e.g. a flowlet-augment output); training split only"
    )
    p.add_argument("--test", help="external real test cohort (the real cohort is then split into train/val)")
    p.add_argument("--out", required=True, help="run folder (or comparison folder with --compare)")
    p.add_argument(
        "--config",
        default="default",
        help="packaged config name (default, demo, paper) or a YAML file (default: %(default)s)",
    )
    p.add_argument("--model", help="override model.name (densenet121, resnet, sfcn, small)")
    p.add_argument(
        "--synthetic-ratio",
        type=finite_float(0, MAX_RATIO),
        help="synthetic ÷ real training scans (0 = real only)",
    )
    p.add_argument("--epochs", type=bounded_int(1, 100_000), help="override train.epochs")
    p.add_argument("--seed", type=seed_int, help="override train.seed")
    p.add_argument("--split-column", help="use this cohort column (train/val/test) as the split")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field; VALUE is parsed as YAML (repeatable)",
    )
    p.add_argument(
        "--compare",
        help="comma-separated synthetic ratios to compare, e.g. 0,0.5,1.0 (= --arms real,synthetic:0.5,synthetic:1)",
    )
    p.add_argument(
        "--arms",
        help="comma-separated arms to compare at the same number of optimiser steps: real, oversample, reweight, "
        "synthetic:R, synthetic-filtered:R (e.g. real,oversample,reweight,synthetic:0.5)",
    )
    p.add_argument(
        "--synthetic-filtered",
        help="filtered synthetic cohort (e.g. only the samples that passed a quality gate) for synthetic-filtered:R",
    )
    p.add_argument(
        "--seeds",
        type=bounded_int(1, 1000),
        default=1,
        help="training seeds per arm with --compare/--arms (default 1)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (single run only)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train again into a folder that holds an earlier run (its files are replaced; without it such a "
        "folder is refused: use --resume to continue it)",
    )
    p.add_argument(
        "--normalisation",
        choices=["brain_zscore", "minmax", "zscore", "none"],
        help="override data.normalisation (default brain_zscore: per scan, inside its brain mask)",
    )
    add_init_arguments(p)
    p.add_argument(
        "--init-skip-head",
        action="store_true",
        help="with --init, re-initialise the output layer when its shape differs (e.g. other SFCN age bins)",
    )
    p.add_argument(
        "--baseline",
        choices=["auto", "ridge", "none"],
        default="auto",
        help="ridge regression on region volumes next to the CNN: 'auto' (default) when --baseline-features is "
        "given or the scans are on an MNI grid, 'ridge' always (an error if no volumes), 'none'",
    )
    p.add_argument(
        "--baseline-features",
        metavar="TABLE",
        help="per-scan features for the baseline (CSV/TSV): wide (subject_id or participant_id, [session_id], "
        "numeric columns) or tidy region volumes (region, tissue, volume_mm3), e.g. flowlet-eval regions' volumes",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    updates: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2:
            raise SystemExit(f"bap-train: --set expects SECTION.KEY=VALUE, got {item!r}")
        section = updates.setdefault(parts[0], {})
        parsed = yaml.safe_load(value)
        if len(parts) == 3 and parts[1] == "options":
            section.setdefault("options", {})[parts[2]] = parsed
        elif len(parts) == 2:
            section[parts[1]] = parsed
        else:
            raise SystemExit(f"bap-train: cannot set nested key {key!r}")
    return updates


def build_config(args: argparse.Namespace):
    """Packaged or file config, then the flag overrides."""
    from bap.config import config_to_dict, load_config, replace
    from configs import config_path

    path = Path(args.config)
    cfg = load_config(path if path.suffix in (".yaml", ".yml") else config_path("bap", args.config))
    updates = _parse_set(args.set)
    flags = {
        ("model", "name"): args.model,
        ("data", "synthetic_ratio"): args.synthetic_ratio,
        ("train", "epochs"): args.epochs,
        ("train", "seed"): args.seed,
        ("data", "split_column"): args.split_column,
        ("data", "normalisation"): getattr(args, "normalisation", None),
        ("train", "init"): init_file(args),
        ("train", "init_skip_head"): True if getattr(args, "init_skip_head", False) else None,
    }
    for (section, key), value in flags.items():
        if value is not None:
            updates.setdefault(section, {})[key] = value
    model = updates.get("model", {})
    new_name = model.get("name")
    if new_name is not None and new_name != cfg.model.name:
        # The config's options belong to its model; another model starts from its own defaults.
        if cfg.model.options:
            logger.info(
                "model.name %s -> %s: the config's model.options %s are dropped",
                cfg.model.name,
                new_name,
                sorted(cfg.model.options),
            )
        model["options"] = dict(model.get("options", {}))
    elif "options" in model:
        model["options"] = {**config_to_dict(cfg)["model"]["options"], **model["options"]}
    return replace(cfg, **updates)


def run(args: argparse.Namespace) -> int:
    from flowlet.data.cohort import load_cohort
    from flowlet.data.outputs import check_outside_inputs, output_folder

    inputs = [args.real, args.synthetic, args.synthetic_filtered, args.test, args.config]
    check_outside_inputs(args.out, inputs)
    cfg = build_config(args)
    real = load_cohort(args.real).table
    synthetic = load_cohort(args.synthetic).table if args.synthetic else None
    test = load_cohort(args.test).table if args.test else None
    comparing = bool(args.compare or args.arms)
    if comparing and args.resume:
        raise ValueError("--resume continues one run; it cannot be combined with --compare or --arms")
    if args.compare and args.arms:
        raise ValueError("give --compare (ratios) or --arms, not both")
    if comparing and (args.baseline_features or args.baseline == "ridge"):
        raise ValueError("the ridge baseline is reported for a single run; drop it or --compare/--arms")
    arms = _arms(args) if comparing else None
    filtered = load_cohort(args.synthetic_filtered).table if args.synthetic_filtered else None
    with output_folder(
        args.out,
        command="bap-train",
        inputs=inputs,
        overwrite=args.overwrite,
        reuse=args.resume,
        reuse_hint="use --resume to continue it, or --overwrite to train again from scratch",
        legacy=lambda folder: (folder / "last.pt").is_file(),  # a run of an earlier version
    ) as folder:
        code = _train(args, cfg, real, synthetic, test, arms, filtered)
        if not args.resume:
            folder.remove_previous()  # an earlier run's files that this one did not write again (epoch-*.pt...)
    return code


def _arms(args: argparse.Namespace) -> list:
    """The arms of ``--arms``, or those of the ratios of ``--compare`` (0 is the real-only arm)."""
    from bap.arms import parse_arms, ratios_to_arms

    if args.arms:
        return parse_arms(args.arms)
    try:
        return ratios_to_arms([float(r) for r in args.compare.split(",") if r.strip()])
    except ValueError:
        raise ValueError(f"--compare {args.compare!r}: expected comma-separated numbers") from None


def _train(args: argparse.Namespace, cfg, real, synthetic, test, arms, filtered) -> int:
    from bap.compare import run_comparison
    from bap.data import prepare_data
    from bap.train import train

    if arms is not None:
        result = run_comparison(
            cfg,
            real,
            args.out,
            arms=arms,
            n_seeds=args.seeds,
            synthetic=synthetic,
            filtered_synthetic=filtered,
            test=test,
            progress=not args.no_progress,
        )
        logger.info("comparison written to %s\n%s", result.out_dir, result.summary.to_string(index=False))
        return 0
    data = prepare_data(real, cfg.data, synthetic=synthetic, test=test)
    features = _baseline_features(args, data)
    result = train(
        cfg,
        data,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        extend_summary=_baseline_report(Path(args.out), data, features),
    )
    test_metrics = result.summary["splits"].get("test", {})
    logger.info(
        "best epoch %d, val MAE %.3f, test MAE %s -> %s",
        result.best_epoch,
        result.best_val_mae,
        f"{test_metrics['mae']:.3f}" if test_metrics else "n/a",
        result.run_dir,
    )
    return 0


def _read_table(path: str):
    import pandas as pd

    sep = "\t" if Path(path).suffix.lower() in (".tsv", ".tab") else ","
    try:
        return pd.read_csv(
            path, sep=sep, dtype={c: str for c in ("subject_id", "session_id", "participant_id")}
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the baseline features ({exc})") from exc


def _on_mni_grid(path: str):
    """The MNI152 grid that the scan at ``path`` lies on (any size cohorts read), or None."""
    from flowlet.data.cohort import read_image
    from flowlet.data.grid import find_mni_grid

    volume = read_image(path)
    return find_mni_grid(volume.affine, volume.data.shape)


def _measured_volumes(data, grid):
    """Harvard-Oxford GM/WM/CSF volumes of every real scan (the scans are in MNI space: no registration)."""
    import pandas as pd

    from analysis.volumetrics import RegionVolumetrics
    from flowlet.data import keys
    from flowlet.data.cohort import read_image

    real = data.table[data.table["source"] == "real"].reset_index(drop=True)
    vol = RegionVolumetrics("harvard-oxford", grid=grid, registration="none").fit()
    logger.info("baseline: measuring region volumes of %d scans (Harvard-Oxford, no registration)", len(real))
    tidy = vol.transform(
        [read_image(p) for p in real[keys.PATH]], subject_ids=[str(i) for i in range(len(real))]
    )
    row = tidy[keys.SUBJECT_ID].astype(int).to_numpy()
    tidy[keys.SUBJECT_ID] = real[keys.SUBJECT_ID].astype(str).to_numpy()[row]
    tidy[keys.SESSION_ID] = real[keys.SESSION_ID].astype(str).to_numpy()[row]
    return pd.DataFrame(tidy)


def _baseline_features(args: argparse.Namespace, data):
    """The baseline's features (a table), or ``None`` when the baseline is off or cannot be computed."""
    import os

    from flowlet.data import keys

    mode = getattr(args, "baseline", "none")
    if mode == "none" or int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return None
    if args.baseline_features:
        return _read_table(args.baseline_features)
    grid = _on_mni_grid(str(data.table[keys.PATH].iloc[0]))
    if grid is None:
        if mode == "ridge":
            raise ValueError("--baseline ridge: the scans are not on an MNI grid; give --baseline-features")
        logger.info("baseline: scans not on an MNI grid and no --baseline-features; no ridge baseline")
        return None
    return _measured_volumes(data, grid)


def _baseline_report(run_dir: Path, data, features):
    """The ``extend_summary`` hook of :func:`bap.train.train` (run on the main process before ``summary.json`` is
    written): fit the ridge baseline on the run's training subjects, write its predictions and ``results.csv``, and
    add both to the summary."""

    def extend(predictions, summary: dict) -> None:
        from bap.baseline import fit_ridge_baseline, results_table
        from flowlet.data import keys
        from flowlet.data.io import write_table_atomic

        real = predictions[predictions["source"] == "real"]
        frames = {"cnn": real}
        if features is not None:
            ridge = fit_ridge_baseline(data.table, features)
            write_table_atomic(run_dir / "baseline_predictions.csv", ridge.predictions)
            frames["ridge"] = ridge.predictions
            summary["baseline"] = {
                "model": "StandardScaler + RidgeCV",
                "alpha": ridge.alpha,
                "n_features": ridge.n_features,
                "scans_without_features": ridge.missing,
            }
        train_mean = float(real.loc[real[keys.SPLIT] == "train", keys.AGE].mean())
        table = results_table(frames, train_mean)
        write_table_atomic(run_dir / "results.csv", table)
        summary["results_mae_years"] = {
            model: dict(zip(rows[keys.SPLIT], rows["mae_years"]))
            for model, rows in table.groupby("model", sort=False)
        }
        logger.info("results (MAE, years):\n%s", table.to_string(index=False))

    return extend


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bap-train``."""
    args = build_parser().parse_args(argv)
    setup_cli("%(asctime)s %(name)s: %(message)s")
    hint = (
        "rerun with --overwrite to start the comparison again"
        if args.compare or args.arms
        else "rerun with --resume to continue from the last finished epoch"
    )
    try:
        return run_cli("bap-train", lambda: run(args), interrupted=hint)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
