"""``flowlet-generate``: sample synthetic brains from a FlowLet checkpoint (official or toolkit format).

Accepts the official ``scripts/generate.py`` flags and writes the official layout (spec §4, §8)::

    <output_dir>/<key>_<value:.2f>[_<key2>_<v2>]/FlowLet_synthetic_brain_<i>.nii.gz

or, with ``--ages-linspace``, the official ``generate_linear.py`` layout::

    <output_dir>/<prefix>_<suffix>_AgeLin_<min:.1f>-<max:.1f>_N<N>_Steps<steps>/<prefix>_<suffix>_AGE_<age:.2f>_sample_<i>.nii.gz

With ``--ablation`` other than ``baseline`` alone, the condition folders go under ``<output_dir>/<Suffix>/`` with the
official mode suffixes (``Baseline``, ``FiLM_Only``, ``CrossAttn_Only``, ``Unconditional``). Writes
``generation.json`` (resolved settings, checkpoint sha256, one record per file with its seed).
Sample ``i`` of every folder starts from the same seeded noise, so conditions and ablation modes are paired.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.arguments import (
    MAX_GUIDANCE,
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
from pipelines.checkpoint_args import add_checkpoint_arguments, hub_provenance, load_checkpoint
from pipelines.cli import run_cli

logger = logging.getLogger("flowlet.generate")

EXAMPLE = """example:
  flowlet-generate --checkpoint_path runs/base/fmw_best_slim.pth --output_dir synth \\
      --generation_conditions "Age=45" "Age=75" --num_synthetic 10 --seed 1234 --batch_size 4
  flowlet-generate --checkpoint_path rfm-91-base --output_dir synth --generation_conditions "Age=70"
  flowlet-generate --checkpoint_path model.pth --output_dir lin --ages-linspace 20 80 100 \\
      --ablation baseline film_only --solver heun --num_flow_steps 25
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowlet-generate",
        description="Generate age-conditioned synthetic brain MRI volumes from a FlowLet checkpoint.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(p, official_spelling=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that flowlet-generate did not create (files of the same name are "
        "replaced, no other file is deleted); a folder it created is rerun without it",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--generation_conditions",
        nargs="+",
        metavar="KEY=VALUE",
        help='one item per output folder; several keys in one item: "Age=45 Sex=1"',
    )
    what.add_argument(
        "--ages-linspace",
        "--ages_linspace",
        nargs=3,
        type=finite_float(),
        metavar=("MIN", "MAX", "N"),
        help="N ages evenly spaced in [MIN, MAX], one sample each (official generate_linear)",
    )
    p.add_argument(
        "--num_synthetic",
        type=bounded_int(None, MAX_SAMPLES),
        default=10,
        help="samples per condition (default 10)",
    )
    p.add_argument(
        "--num_flow_steps",
        type=bounded_int(1, MAX_STEPS),
        help="solver steps (default: the config's value, else 100, for euler; 10 for the other solvers)",
    )
    p.add_argument(
        "--solver",
        help="euler | heun | midpoint | rk4 (default: euler for an official checkpoint when --num_flow_steps "
        "is given, as the official script; else midpoint: 10 steps on the cosine grid = 20 network calls)",
    )
    p.add_argument(
        "--time-grid",
        "--time_grid",
        help="uniform | shifted | cosine (default: uniform for euler, as the official sampler; else cosine)",
    )
    p.add_argument(
        "--save_size",
        type=volume_axis,
        nargs=3,
        help="export crop (default: the checkpoint's, else 91 109 91)",
    )
    p.add_argument("--model_input_size", type=int, nargs=3, help="ignored: read from the checkpoint config")
    p.add_argument("--seed", type=seed_int, default=1234)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (cuda falls back to cpu)")
    p.add_argument(
        "--batch_size",
        type=batch_size_arg,
        default="auto",
        help="samples per network call, or auto (default): the largest batch that fits 80%% of the free GPU "
        "memory (probed), 4 on a CPU",
    )
    p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--ablation",
        nargs="+",
        default=["baseline"],
        help="baseline film_only crossattn_only unconditional, or all",
    )
    p.add_argument(
        "--guidance-scale",
        "--guidance_scale",
        type=finite_float(0, MAX_GUIDANCE),
        default=1.0,
        help="classifier-free guidance",
    )
    p.add_argument(
        "--affine",
        default="mni",
        choices=("mni", "identity"),
        help="mni: real MNI 2 mm/1 mm header (default); identity: official 1 mm identity",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="CUDA autocast dtype of the network (fp16 = the official CUDA behaviour); the state stays fp32",
    )
    p.add_argument("--filename_prefix", default="FlowLet", help="prefix of the --ages-linspace layout")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def parse_condition_items(items: Sequence[str]) -> list[dict[str, float]]:
    """``["Age=45 Sex=1", "Age=75"]`` -> ``[{"Age": 45.0, "Sex": 1.0}, {"Age": 75.0}]``."""
    groups = []
    for item in items:
        group = {}
        for token in item.split():
            key, sep, value = token.partition("=")
            try:
                if not sep or not key:
                    raise ValueError
                group[key] = float(value)
            except ValueError:
                raise ValueError(
                    f"--generation_conditions: expected KEY=NUMBER, got {token!r} in {item!r}"
                ) from None
            if not math.isfinite(group[key]):
                raise ValueError(
                    f"--generation_conditions: {key} must be a finite number, got {value!r} in {item!r}"
                )
        groups.append(group)
    return groups


def condition_folder(group: dict[str, float]) -> str:
    """Official folder name: keys sorted, ``<key>_<value:.2f>`` joined by ``_``."""
    return "_".join(f"{k}_{group[k]:.2f}" for k in sorted(group))


def _ablations(names: Sequence[str]) -> list[str]:
    from flowlet.guidance import ABLATIONS

    names = list(ABLATIONS) if "all" in names else list(dict.fromkeys(names))
    for name in names:
        if name not in ABLATIONS:
            raise ValueError(f"--ablation: unknown mode '{name}'; choose from {[*ABLATIONS, 'all']}")
    return names


def resolve_sampling(args: argparse.Namespace, bundle):
    """Build the :class:`~flowlet.sampling.SamplingConfig` for one ablation from the flags and the bundle."""
    from flowlet.batching import auto_batch_size
    from flowlet.sampling import SamplingConfig

    solver = args.solver
    if solver is None:
        official_euler = bundle.source_format == "official" and args.num_flow_steps is not None
        solver = "euler" if official_euler else SamplingConfig.solver
    steps = args.num_flow_steps
    if steps is None:
        steps = (bundle.num_flow_steps or 100) if solver == "euler" else SamplingConfig.num_steps
    config = SamplingConfig(
        solver=solver,
        num_steps=steps,
        guidance_scale=args.guidance_scale,
        batch_size=1 if args.batch_size == "auto" else args.batch_size,
        time_grid=args.time_grid,
        device=resolve_device(args.device),
        autocast_dtype=None if args.precision == "fp32" else args.precision,
    )
    if args.batch_size == "auto":
        config = dataclasses.replace(config, batch_size=auto_batch_size(bundle, config))
    return config


@dataclasses.dataclass
class Job:
    """One output folder: raw conditions per sample, seeds and file paths (relative to the output dir)."""

    ablation: str
    conditions: dict[str, list[float]]
    seeds: list[int]
    files: list[str]


def plan_jobs(args: argparse.Namespace, bundle, ablations: list[str], steps: int) -> list[Job]:
    """All folders and files to write, in order."""
    import numpy as np

    from flowlet.guidance import get_ablation
    from flowlet.sampling import sample_seeds

    jobs = []
    if args.ages_linspace is not None:
        lo, hi, n = args.ages_linspace
        if n != int(n) or not 1 <= n <= MAX_SAMPLES or not lo < hi:
            raise ValueError(
                f"--ages-linspace: need MIN < MAX and an integer N in [1, {MAX_SAMPLES}], got {lo:g} {hi:g} {n:g}"
            )
        n = int(n)
        if "Age" not in bundle.condition_ranges:
            raise ValueError(
                f"--ages-linspace needs an 'Age' condition range; the checkpoint has {sorted(bundle.condition_ranges)}"
            )
        ages = [float(a) for a in np.linspace(lo, hi, n)]  # as the official generate_linear
        width = len(str(n - 1))
        for name in ablations:
            tag = f"{args.filename_prefix}_{get_ablation(name).suffix}"
            folder = f"{tag}_AgeLin_{lo:.1f}-{hi:.1f}_N{n}_Steps{steps}"
            files = [f"{folder}/{tag}_AGE_{a:.2f}_sample_{i:0{width}d}.nii.gz" for i, a in enumerate(ages)]
            jobs.append(Job(name, {"Age": ages}, sample_seeds(args.seed, n), files))
        return jobs
    if args.num_synthetic < 1:
        raise ValueError(f"--num_synthetic must be >= 1, got {args.num_synthetic}")
    known = set(bundle.model_config.condition_names)
    seeds = sample_seeds(args.seed, args.num_synthetic)
    for group in parse_condition_items(args.generation_conditions):
        dropped = sorted(set(group) - known)
        if dropped:
            logger.warning(
                "conditions %s are not model conditions %s and are dropped", dropped, sorted(known)
            )
        group = {k: v for k, v in group.items() if k in known}
        if not group and known:
            raise ValueError(f"--generation_conditions: no item names a model condition {sorted(known)}")
        folder = condition_folder(group) or "unconditional"
        for name in ablations:
            base = folder if ablations == ["baseline"] else f"{get_ablation(name).suffix}/{folder}"
            files = [f"{base}/FlowLet_synthetic_brain_{i}.nii.gz" for i in range(args.num_synthetic)]
            jobs.append(Job(name, {k: [v] * args.num_synthetic for k, v in group.items()}, seeds, files))
    return jobs


def run(args: argparse.Namespace) -> Path:
    """Load the checkpoint, generate every job and write the volumes and ``generation.json``."""
    from flowlet.data.io import remove_stale_temporaries, resolve_inside
    from flowlet.data.outputs import check_outside_inputs, output_folder
    from flowlet.export import resolve_affine

    inputs = [args.checkpoint_path, args.config_path, args.condition_ranges_path]
    check_outside_inputs(args.output_dir, inputs)

    if args.model_input_size is not None:
        logger.warning("--model_input_size is ignored: the input size is read from the checkpoint config")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bundle = load_checkpoint(
        args.checkpoint_path,
        revision=args.revision,
        cache_dir=args.cache_dir,
        config_path=args.config_path,
        condition_ranges_path=args.condition_ranges_path,
    )
    base_config = resolve_sampling(args, bundle)
    save_size = tuple(args.save_size or bundle.save_size or (91, 109, 91))
    affine = resolve_affine(args.affine, save_size, bundle.affine)
    jobs = plan_jobs(args, bundle, _ablations(args.ablation), base_config.num_steps)
    out_dir = Path(args.output_dir)
    for job in jobs:  # refuse a file name that would escape the output folder before anything is written
        for name in job.files:
            resolve_inside(out_dir, name)
    # locked: a second run into the same folder is refused instead of interleaving files
    with output_folder(
        out_dir,
        command="flowlet-generate",
        inputs=inputs,
        overwrite=args.overwrite,
        legacy=lambda folder: (folder / "generation.json").is_file(),  # written by an earlier version
    ):
        remove_stale_temporaries(out_dir)  # left by a killed run; never read, but not to be left lying around
        records = _write_jobs(args, bundle, jobs, base_config, save_size, affine, out_dir)
        _write_metadata(args, bundle, base_config, save_size, affine, out_dir, records)
    logger.info("wrote %d volumes and generation.json to %s", len(records), out_dir)
    return out_dir


def _write_jobs(args, bundle, jobs, base_config, save_size, affine, out_dir: Path) -> list[dict]:
    from flowlet.data.io import resolve_inside
    from flowlet.data.nifti import save_volume
    from flowlet.export import decode_and_export
    from flowlet.sampling import iter_generate

    records = []
    for job in jobs:
        config = dataclasses.replace(base_config, ablation=job.ablation)
        logger.info("%s: %d samples with %s", Path(job.files[0]).parent, len(job.files), config)
        for batch in iter_generate(bundle, job.conditions, job.seeds, config, progress=not args.no_progress):
            volumes = decode_and_export(batch.wavelets, save_size, clamp=config.clamp)
            for vol, i in zip(volumes, batch.indices):
                save_volume(resolve_inside(out_dir, job.files[i]), vol, affine)
                conds = {k: v[i] for k, v in job.conditions.items()}
                records.append(
                    {
                        "file": job.files[i],
                        "seed": job.seeds[i],
                        "sample_index": i,
                        "ablation": job.ablation,
                        "conditions": conds,
                    }
                )
    return records


def _write_metadata(args, bundle, base_config, save_size, affine, out_dir: Path, records: list[dict]) -> None:
    import numpy as np

    from flowlet import __version__
    from flowlet.data.io import write_json_atomic

    meta = {
        "toolkit_version": __version__,
        "command": ["flowlet-generate", *sys.argv[1:]]
        if args.argv is None
        else ["flowlet-generate", *args.argv],
        "checkpoint": str(args.checkpoint_path),
        "checkpoint_sha256": bundle.provenance.get("checkpoint_sha256"),
        "checkpoint_source": hub_provenance(bundle) or None,
        "source_format": bundle.source_format,
        "model_input_size": list(bundle.model_input_size),
        "condition_ranges": {k: list(v) for k, v in bundle.condition_ranges.items()},
        "sampling": dataclasses.asdict(base_config),
        "ablations": _ablations(args.ablation),
        "seed": args.seed,
        "seed_rule": "sample i uses torch.Generator().manual_seed(flowlet.sampling.sample_seed(seed, i)) on the CPU",
        "save_size": list(save_size),
        "affine_kind": args.affine,
        "affine": np.asarray(affine).tolist(),
        "outputs": records,
    }
    write_json_atomic(out_dir / "generation.json", meta)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    setup_cli()

    def body() -> int:
        run(args)  # CheckpointError and NiftiError are ValueErrors: user errors for run_cli
        return 0

    return run_cli("flowlet-generate", body)


if __name__ == "__main__":
    raise SystemExit(main())
