"""``flowlet-train``: train the FlowLet velocity network from a YAML config.

Examples::

    flowlet-train --config demo --set data.source=data/phantoms-4mm
    flowlet-train --config configs/flowlet/paper-base.yaml --set data.source=/data/openbhb --set training.lr=1e-4
    torchrun --nproc_per_node 4 -m pipelines.train --config paper-large --set data.source=/data/openbhb
    flowlet-train --config demo --resume          # continue the run in runtime.run_dir where it stopped
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipelines.cli import run_cli

__all__ = ["main", "resolve_config_path", "run_training"]

logger = logging.getLogger("flowlet.train")


def resolve_config_path(name: str) -> Path:
    """A YAML path as given, or a packaged ``configs/flowlet/<name>.yaml`` (``demo``, ``paper-base``, ...)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    from configs import config_path

    return config_path("flowlet", name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlet-train",
        description="Train the FlowLet wavelet flow-matching U-Net (single process, or several with torchrun).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flowlet-train --config demo --set data.source=data/phantoms-4mm --set training.max_steps=100",
    )
    parser.add_argument(
        "--config", required=True, help="YAML file, or a packaged name: demo, tiny, paper-base, paper-large"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set training.lr=1e-4",
    )
    parser.add_argument("--data", help="shortcut for --set data.source=DATA")
    parser.add_argument("--run-dir", help="shortcut for --set runtime.run_dir=RUN_DIR")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/checkpoints/state.pt if it "
        "exists (exact: weights, EMA, optimiser, schedule, RNG and data order)",
    )
    parser.add_argument(
        "--stop-after", type=int, help="stop after this many steps in total (saves the state)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a non-empty run folder that flowlet-train did not create (same-named files are replaced)",
    )
    return parser


def _setup_logging(run_dir: Path, is_main: bool) -> logging.Handler | None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)
        return handler
    return None


def run_training(
    config_file: str,
    overrides: list[str],
    *,
    resume: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
):
    """Load the config, train, and return the :class:`~flowlet.training.trainer.TrainResult`.

    The run folder is under the output-folder contract (:mod:`flowlet.data.outputs`): locked, never an input,
    and a non-empty folder this command did not create only with ``overwrite``.
    """
    from flowlet.data.outputs import output_folder
    from flowlet.training.config import load_train_config
    from flowlet.training.trainer import Trainer

    config_path = resolve_config_path(config_file)
    config = load_train_config(config_path, overrides)
    run_dir = Path(config.runtime.run_dir)
    with output_folder(
        run_dir,
        command="flowlet-train",
        inputs=[config_path, config.data.source],
        overwrite=overwrite,
        legacy=lambda folder: (folder / "checkpoints" / "state.pt").is_file(),  # a run of an earlier version
    ):
        handler = _setup_logging(run_dir, int(os.environ.get("RANK", "0")) == 0)
        try:
            trainer = Trainer(config)
            try:
                return trainer.fit(resume=resume, stop_after=stop_after)
            finally:
                from flowlet.training.distributed import shutdown_distributed

                shutdown_distributed(trainer.dist)
        finally:
            if handler is not None:  # the log file is closed before a failed run's folder may be removed
                logging.getLogger().removeHandler(handler)
                handler.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``flowlet-train``; returns the exit status."""
    args = _parser().parse_args(argv)
    from flowlet.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # logging is set up per run folder by run_training
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.run_dir:
        overrides.append(f"runtime.run_dir={args.run_dir}")
    from flowlet.training.config import ConfigError

    def body() -> int:
        result = run_training(
            args.config, overrides, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite
        )
        logger.info(
            "done: %d steps, best val loss %s, run folder %s",
            result.step,
            result.best_val_loss,
            result.run_dir,
        )
        return 0

    return run_cli(
        "flowlet-train",
        body,
        interrupted="rerun with --resume to continue from the saved state",
        errors=(ConfigError,),
    )


if __name__ == "__main__":
    sys.exit(main())
