"""``flowlet-study`` and ``flowlet-demo``: run the end-to-end augmentation study."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.arguments import (
    bounded_int,
    setup_cli,
)
from pipelines.cli import run_cli

logger = logging.getLogger("flowlet.study")

EXAMPLE = """examples:
  flowlet-study --config configs/study/openbhb-paper.yaml --out studies/openbhb
  flowlet-study --config my-study.yaml --out studies/mine --from bap     # rerun BAP and everything after it
  flowlet-demo --out demo-study                                          # the demo on the phantom cohort
"""


def build_parser(prog: str = "flowlet-study", *, demo: bool = False) -> argparse.ArgumentParser:
    from pipelines.study.stages import STAGE_NAMES

    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run the demo study on the embedded phantom cohort (configs/study/demo.yaml)."
            if demo
            else "Run an augmentation study: cohort -> split -> generator -> augmentation -> brain-age comparison "
            "-> region evaluation -> report. Unchanged stages are reused on rerun."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if not demo:
        p.add_argument("--config", required=True, help="study YAML (a path, or a packaged name like 'demo')")
    p.add_argument("--out", default="demo-study" if demo else None, required=not demo, help="study folder")
    p.add_argument(
        "--from", dest="force_from", choices=STAGE_NAMES, help="rerun this stage and all later ones"
    )
    p.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    p.add_argument(
        "--threads", type=bounded_int(0, 1024), default=0, help="torch CPU threads (0 = torch default)"
    )
    return p


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return path
    from configs import config_path

    return config_path("study", name)


def run(
    config_name: str, out: str, *, force_from: str | None = None, until: str | None = None, threads: int = 0
) -> int:
    import torch

    from flowlet.data.io import write_json_atomic
    from flowlet.data.outputs import output_folder
    from pipelines.study.config import load_study_config
    from pipelines.study.runner import run_stages
    from pipelines.study.stages import build_stages

    if threads:
        torch.set_num_threads(threads)
    path = _config_path(config_name)
    config = load_study_config(path)
    study_dir = Path(out)
    g = config.generator
    inputs = [path, config.cohort.path, g.checkpoint, g.train_config, g.config_path, g.condition_ranges_path]
    start = time.perf_counter()
    # A study reruns into its own folder (unchanged stages are reused); any other non-empty folder is refused.
    with output_folder(
        study_dir,
        command="flowlet-study",
        inputs=inputs,
        legacy=lambda folder: (folder / "study_config.json").is_file(),  # a study of an earlier version
    ):
        write_json_atomic(study_dir / "study_config.json", {"source": str(path), **config.to_dict()})
        results = run_stages(
            study_dir,
            build_stages(config),
            config.to_dict(),
            force_from=force_from,
            stop_after=until,
            lock=False,
        )
    total = time.perf_counter() - start
    for name, result in results.items():
        state = "reused" if result.cached else f"{result.seconds:7.1f} s"
        print(f"  {name:10s} {state}")
    print(f"study finished in {total:.1f} s: {study_dir}")
    report = results.get("report")
    if report is not None:
        print(f"report: {study_dir / report.outputs['html']}")
    return 0


def _main(argv: Sequence[str] | None, *, demo: bool) -> int:
    prog = "flowlet-demo" if demo else "flowlet-study"
    args = build_parser(prog, demo=demo).parse_args(argv)
    setup_cli(datefmt="%H:%M:%S")
    return run_cli(
        prog,
        lambda: run(
            "demo" if demo else args.config,
            args.out,
            force_from=args.force_from,
            until=args.until,
            threads=args.threads,
        ),
        interrupted="rerun the same command: finished stages are reused",
        errors=(RuntimeError,),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv, demo=False)


def demo_main(argv: Sequence[str] | None = None) -> int:
    return _main(argv, demo=True)


if __name__ == "__main__":
    raise SystemExit(main())
