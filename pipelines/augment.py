"""``flowlet-augment``: fill the under-represented age bins of a cohort with synthetic brains."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from pipelines.arguments import (
    MAX_GUIDANCE,
    MAX_RATIO,
    MAX_SAMPLES,
    MAX_STEPS,
    batch_size_arg,
    bounded_int,
    finite_float,
    resolve_device,
    seed_int,
    setup_cli,
    thread_count,
    volume_axis,
)
from pipelines.augment_gate import add_gate_arguments, build_gate, gate_options, gate_settings
from pipelines.checkpoint_args import add_checkpoint_arguments, hub_provenance, load_checkpoint
from pipelines.cli import RESUME_HINT, run_cli

logger = logging.getLogger("flowlet.augment")

EXAMPLE = """examples:
  flowlet-augment --real phantoms --checkpoint demo --out synth --target-hist uniform --synthetic-ratio 0.5
  flowlet-augment --real cohort.tsv --checkpoint rfm-91-base/flowlet_rfm_91_base.pth --out synth \\
      --target-hist match:test/participants.tsv --bin-width 10 --dry-run
  flowlet-augment ... --shard 0/4        # one of four parallel jobs; their union equals one run
  torchrun --standalone --nproc_per_node 8 -m pipelines.augment ... --batch-size 8   # one shard per GPU
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowlet-augment",
        description="Generate exactly the synthetic brains needed so that real + synthetic follows a target age "
        "histogram; writes a BIDS derivatives folder readable as a cohort.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--real", required=True, help="real cohort: BIDS folder, CSV/TSV, official catalog")
    add_checkpoint_arguments(p, official_spelling=False)
    p.add_argument("--out", required=True, help="output folder (BIDS derivatives)")
    p.add_argument(
        "--target-hist", default="uniform", help="uniform | match:FILE | gaussian:MEAN,SD | FILE.tsv"
    )
    p.add_argument(
        "--bin-width", type=finite_float(0.1, 120), default=5.0, help="age bin width in years (default 5)"
    )
    p.add_argument(
        "--bins",
        type=finite_float(0, 120),
        nargs="+",
        help="explicit bin edges in years (overrides --bin-width)",
    )
    p.add_argument("--synthetic-ratio", type=finite_float(None, MAX_RATIO), help="total synthetic = R x real")
    p.add_argument(
        "--max-synthetic",
        type=bounded_int(None, MAX_SAMPLES),
        help="upper bound on the number of synthetic brains",
    )
    p.add_argument(
        "--min-per-bin",
        type=bounded_int(None, MAX_SAMPLES),
        default=0,
        help="every bin holds at least this many brains in total",
    )
    p.add_argument("--allow-extrapolation", action="store_true", help="allow ages outside the training range")
    p.add_argument(
        "--seed", type=seed_int, default=0, help="base seed; sample i uses a seed derived from (seed, i)"
    )
    p.add_argument("--solver", default="midpoint", help="euler | heun | midpoint | rk4 (default midpoint)")
    p.add_argument(
        "--steps",
        type=bounded_int(1, MAX_STEPS),
        default=10,
        help="solver steps (default 10 = 20 network calls)",
    )
    p.add_argument("--time-grid", help="uniform | shifted | cosine (default: uniform for euler, else cosine)")
    p.add_argument(
        "--guidance-scale",
        type=finite_float(0, MAX_GUIDANCE),
        default=1.0,
        help="classifier-free guidance scale (1 = none)",
    )
    p.add_argument(
        "--batch-size",
        type=batch_size_arg,
        default=8,
        help="brains per network call (default 8; memory grows linearly), or auto: the largest batch that fits "
        "80%% of the free GPU memory. Shards must use the same batch size, so give a number with --shard",
    )
    p.add_argument(
        "--save-size", type=volume_axis, nargs=3, help="exported shape (default: the checkpoint's)"
    )
    p.add_argument(
        "--affine", default="mni", choices=("mni", "identity"), help="affine of the written volumes"
    )
    p.add_argument(
        "--shard",
        help="I/N: generate only the batches with batch index %% N == I (batches of --batch-size samples in "
        "sample order: the union of shards equals one unsharded run with the same --batch-size and --threads); "
        "run shards 0..N-1 into one --out. Default: RANK/WORLD_SIZE under torchrun (one process per GPU, "
        "each on cuda:LOCAL_RANK), else 0/1",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="if --out holds brains generated with other settings, delete them and generate again "
        "(without it such a folder is refused; same settings resume)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_gate_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli("%(levelname)s %(name)s: %(message)s")
    return run_cli("flowlet-augment", lambda: run(args), interrupted=RESUME_HINT)


@dataclass(frozen=True)
class GenerationSettings:
    """What to generate: the target histogram, the budget and the sampler (shared by ``flowlet-augment`` and a
    study's ``augment`` section, which changes some defaults)."""

    target_hist: str = "uniform"
    bin_width: float = 5.0
    synthetic_ratio: float | None = None
    max_synthetic: int | None = None
    min_per_bin: int = 0
    allow_extrapolation: bool = False
    seed: int = 0
    solver: str = "midpoint"
    steps: int = 10
    time_grid: str | None = None
    guidance_scale: float = 1.0
    batch_size: int | str = 8

    def sampling_config(self, **runtime):
        """The sampler settings as a :class:`flowlet.sampling.SamplingConfig` (which checks them); ``"auto"``
        batches start at 1 until :func:`flowlet.sampling.auto_batch_size` sizes them. ``runtime``: device and
        precision."""
        from flowlet.sampling import SamplingConfig

        return SamplingConfig(
            solver=self.solver,
            num_steps=self.steps,
            time_grid=self.time_grid,
            guidance_scale=self.guidance_scale,
            batch_size=1 if self.batch_size == "auto" else self.batch_size,
            **runtime,
        )


@dataclass(frozen=True, kw_only=True)
class AugmentOptions(GenerationSettings):
    """Everything an augmentation needs besides the real ages (the CLI flags, as a config)."""

    checkpoint: str
    out: str
    bins: tuple[float, ...] | None = None
    save_size: tuple[int, int, int] | None = None
    affine: str = "mni"
    shard: str = "0/1"
    device: str = "auto"
    config_path: str | None = None
    condition_ranges_path: str | None = None
    revision: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    overwrite: bool = False
    gate_bap: str | None = None
    gate_age_tolerance: float = 10.0
    gate_volumes: str | None = None
    gate_volume_tolerance: float = 3.0
    gate_max_tries: int = 3
    gate_max_reject_fraction: float = 0.5


def plan_augmentation(real_ages, options: AugmentOptions):
    """The plan for ``real_ages`` (years) under ``options``."""
    from flowlet.augment.plan import age_bins, make_plan
    from flowlet.augment.targets import parse_target

    edges = age_bins(real_ages, bin_width=options.bin_width, edges=options.bins)
    target = parse_target(options.target_hist, edges)
    if target.edges is not None:
        edges = target.edges
    return make_plan(
        real_ages,
        edges,
        target.proportions,
        target=options.target_hist,
        synthetic_ratio=options.synthetic_ratio,
        max_synthetic=options.max_synthetic,
        min_per_bin=options.min_per_bin,
        target_counts=target.counts,
    )


def augment(real_ages, options: AugmentOptions, *, locked: bool = False, plan=None):
    """Plan and generate; returns ``(plan, AugmentResult)``. Reruns resume (see ``flowlet.augment.writer``).

    ``locked``: the caller holds this shard's lock on ``options.out`` already (:func:`run` does).
    ``plan``: :func:`plan_augmentation` of ``real_ages`` and ``options``, when the caller has made it already.
    """
    import numpy as np

    from flowlet.augment.figures import plot_histograms
    from flowlet.augment.plan import draw_ages
    from flowlet.augment.writer import parse_shard, sample_table, write_augmentation
    from flowlet.batching import auto_batch_size
    from flowlet.export import resolve_affine

    shard = parse_shard(options.shard)
    plan = plan if plan is not None else plan_augmentation(real_ages, options)
    bundle = load_checkpoint(
        options.checkpoint,
        revision=options.revision,
        cache_dir=options.cache_dir,
        config_path=options.config_path,
        condition_ranges_path=options.condition_ranges_path,
    )
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 0xA6E]))
    ages = draw_ages(
        plan,
        rng,
        age_range=bundle.condition_ranges.get("Age"),
        allow_extrapolation=options.allow_extrapolation,
    )
    samples = sample_table(plan, ages, seed=options.seed, solver=options.solver, steps=options.steps)
    save_size = tuple(options.save_size or bundle.save_size or bundle.model_input_size)
    affine = resolve_affine(options.affine, save_size, bundle.affine)
    device = resolve_device(options.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one process per GPU of the node
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    sampling = options.sampling_config(
        device=device, autocast_dtype="bf16" if device.startswith("cuda") else None
    )
    if options.batch_size == "auto":
        if shard.count > 1:
            raise ValueError(
                "--batch-size auto cannot be combined with --shard: give every shard the same number"
            )
        sampling = replace(sampling, batch_size=auto_batch_size(bundle, sampling))
    generated_by = {
        "Description": "synthetic brains generated to reach a target age histogram",
        "Checkpoint": Path(bundle.provenance["checkpoint_file"]).name,
        "CheckpointSHA256": bundle.provenance["checkpoint_sha256"],
        "Config": {
            "target_hist": options.target_hist,
            "bin_edges": [float(e) for e in plan.edges],
            "seed": options.seed,
            "synthetic_ratio": options.synthetic_ratio,
            "max_synthetic": options.max_synthetic,
            "min_per_bin": options.min_per_bin,
            "save_size": list(save_size),
            "affine": options.affine,
            "sampling": {k: v for k, v in asdict(sampling).items() if k not in {"device", "autocast_dtype"}},
        },
    }
    if hub_provenance(bundle):  # which published file and commit (the hash above decides resuming)
        generated_by["CheckpointSource"] = hub_provenance(bundle)
    settings = gate_settings(options)  # hashes the brain-age checkpoint: once
    if settings is not None:
        generated_by["Config"]["gate"] = settings
    result = write_augmentation(
        options.out,
        bundle,
        plan,
        samples,
        sampling,
        save_size=save_size,
        affine=affine,
        generated_by=generated_by,
        shard=shard,
        progress=options.progress,
        replace=options.overwrite,
        lock=not locked,
        gate=build_gate(options, affine),
    )
    plot_histograms(plan, Path(options.out) / "age_histograms.png")
    return plan, result


def shard_from_environment(env: Mapping[str, str] = os.environ) -> str:
    """``RANK/WORLD_SIZE`` when started by ``torchrun`` (every process takes one shard), else ``0/1``."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return f"{env['RANK']}/{env['WORLD_SIZE']}"
    return "0/1"


def _flag_errors(function, *args, **kwargs):
    """Call ``function``; a planning error names the command's flags instead of the library's parameters."""
    from flowlet.augment.plan import PlanError, with_flags

    try:
        return function(*args, **kwargs)
    except PlanError as err:
        raise PlanError(with_flags(str(err))) from None


def run(args: argparse.Namespace) -> int:
    from flowlet.data.cohort import load_cohort

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = AugmentOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        **{f.name: getattr(args, f.name) for f in fields(GenerationSettings)},
        bins=tuple(args.bins) if args.bins else None,
        save_size=tuple(args.save_size) if args.save_size else None,
        affine=args.affine,
        shard=args.shard or shard_from_environment(),
        overwrite=args.overwrite,
        device=args.device,
        config_path=args.config_path,
        condition_ranges_path=args.condition_ranges_path,
        revision=args.revision,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        **gate_options(args),
    )
    from flowlet.augment.writer import parse_shard, shard_lock_name
    from flowlet.data.outputs import check_outside_inputs, output_folder

    inputs = _inputs(args)
    check_outside_inputs(args.out, inputs)  # before reading anything, and for --dry-run too
    ages = load_cohort(args.real).ages
    plan = _flag_errors(plan_augmentation, ages, options)
    print(plan.table.to_string(index=False))
    print(f"synthetic brains: {plan.budget}; combined max/min bin ratio: {plan.max_min_ratio():.3f}")
    if args.dry_run:
        return 0
    with output_folder(
        args.out,
        command="flowlet-augment",
        inputs=inputs,
        overwrite=args.overwrite,
        lock=shard_lock_name(parse_shard(options.shard)),
        legacy=_is_augmentation,
    ) as folder:
        # Replacing earlier brains deletes their subject folders: only in a folder this command wrote.
        options = replace(options, overwrite=options.overwrite and folder.own)
        _, result = _flag_errors(augment, ages, options, locked=True, plan=plan)
    print(
        f"wrote {result.generated} brains ({result.skipped} already complete) of {result.total} to {result.out_dir}"
    )
    return 0


def _is_augmentation(folder: Path) -> bool:
    """Whether ``folder`` holds an augmentation of an earlier version (its description names the toolkit)."""
    import json

    try:
        description = json.loads((folder / "dataset_description.json").read_text(encoding="utf-8"))
        generated_by = description["GeneratedBy"][0]
        return generated_by["Name"] == "flowlet-toolkit" and "CheckpointSHA256" in generated_by
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def _inputs(args: argparse.Namespace) -> list[str | None]:
    """Every path the command reads (the output may be none of them, nor inside or around one)."""
    target = args.target_hist.split(":", 1)[1] if args.target_hist.startswith("match:") else args.target_hist
    return [args.real, args.checkpoint, args.config_path, args.condition_ranges_path, target]


if __name__ == "__main__":
    raise SystemExit(main())
