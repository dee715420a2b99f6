"""``bap-train``: train a brain-age model on a real cohort, optionally mixed with synthetic scans.

Example::

    bap-train --real data/real --config demo --out runs/bap-demo
    bap-train --real data/real --synthetic data/synth --synthetic-ratio 0.5 --config paper --out runs/paper-0.5
    bap-train --real data/real --synthetic data/synth --compare 0,0.5,1.0 --seeds 3 --out runs/compare
    bap-train --real data/real --synthetic data/synth --arms real,oversample,reweight,synthetic:0.5 --seeds 3 \
        --out runs/arms
    torchrun --nproc-per-node 2 -m pipelines.bap_train --real data/real --config paper --out runs/ddp
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipelines.arguments import setup_cli

logger = logging.getLogger(__name__)

_EXAMPLE = """examples:
  bap-train --real data/real --config demo --out runs/bap-demo
  bap-train --real data/real --synthetic data/synth --synthetic-ratio 0.5 --out runs/r0.5
  bap-train --real data/real --synthetic data/synth --compare 0,0.5,1.0 --seeds 3 --out runs/cmp
  bap-train --real data/real --synthetic data/synth --test data/external \
      --arms real,oversample,reweight,synthetic:0.5,synthetic:1 --seeds 3 --out runs/arms
  bap-train --real data/real --config demo --set train.lr=3e-3 --set model.options.channels=[8,16,32] --out r
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
    p.add_argument("--synthetic-ratio", type=float, help="synthetic ÷ real training scans (0 = real only)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--seed", type=int, help="override train.seed")
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
        "--seeds", type=int, default=1, help="training seeds per arm with --compare/--arms (default 1)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (single run only)")
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
    from bap.compare import run_comparison
    from bap.data import prepare_data
    from bap.train import train
    from flowlet.data.cohort import load_cohort

    cfg = build_config(args)
    real = load_cohort(args.real).table
    synthetic = load_cohort(args.synthetic).table if args.synthetic else None
    test = load_cohort(args.test).table if args.test else None
    if args.compare or args.arms:
        from bap.arms import parse_arms, ratios_to_arms

        if args.resume:
            raise ValueError("--resume continues one run; it cannot be combined with --compare or --arms")
        if args.compare and args.arms:
            raise ValueError("give --compare (ratios) or --arms, not both")
        if args.arms:
            arms = parse_arms(args.arms)
        else:
            try:
                arms = ratios_to_arms([float(r) for r in args.compare.split(",") if r.strip()])
            except ValueError:
                raise ValueError(f"--compare {args.compare!r}: expected comma-separated numbers") from None
        filtered = load_cohort(args.synthetic_filtered).table if args.synthetic_filtered else None
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
    result = train(cfg, data, args.out, resume=args.resume, progress=not args.no_progress)
    test_metrics = result.summary["splits"].get("test", {})
    logger.info(
        "best epoch %d, val MAE %.3f, test MAE %s -> %s",
        result.best_epoch,
        result.best_val_mae,
        f"{test_metrics['mae']:.3f}" if test_metrics else "n/a",
        result.run_dir,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bap-train``."""
    args = build_parser().parse_args(argv)
    setup_cli("%(asctime)s %(name)s: %(message)s")
    try:
        return run(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    finally:
        _close_process_group()


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
