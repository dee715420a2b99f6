"""Reproduce the shipped 4 mm demo checkpoint and its quality check with one command.

Steps (each skipped when its output already exists, so an interrupted run continues where it stopped):

1. the phantom cohort: 200 subjects at 4 mm, seed 0 (``flowlet-phantoms --n 200 --voxel-size 4 --seed 0``);
2. training with ``configs/flowlet/demo.yaml`` and the shipped recipe :data:`SHIPPED_RECIPE` (batch 8, a
   4000-step schedule run to :data:`SHIPPED_STEPS`; resumable; on CUDA when available, about 7 minutes on one H200);
3. the best checkpoint (fixed-noise validation loss, EMA weights) copied to ``flowlet/assets/demo-4mm.pt``;
4. the quality check: generate at ages 20, 40, 60, 80 (several seeds each), ventricle volume versus age, intensity
   histogram versus the phantoms; figures and ``quality.json`` in ``--docs``.

Example::

    python -m pipelines.make_demo_checkpoint --work demo-work
    python -m pipelines.make_demo_checkpoint --work demo-work --check-only --checkpoint flowlet/assets/demo-4mm.pt
    python -m pipelines.make_demo_checkpoint --work demo-work --ablate 100
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "make_figures", "run_quality_check"]

logger = logging.getLogger("flowlet.demo_checkpoint")

ROOT = Path(__file__).resolve().parents[1]
AGES = (20.0, 40.0, 60.0, 80.0)

#: Overrides of ``configs/flowlet/demo.yaml`` that made the shipped checkpoint: batch 8, a 4000-step cosine
#: schedule, validation (and so ``best.pt``) every 500 steps.
SHIPPED_RECIPE = [
    "training.batch_size=8",
    "training.max_steps=4000",
    "training.val_every=500",
    "training.save_every=500",
    "training.keep_every=0",
]
#: The run stops here; the shipped weights are the EMA weights of ``best.pt`` (lowest validation loss: the last
#: validation, at step 4000, for the shipped checkpoint).
SHIPPED_STEPS = 4000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_demo_checkpoint",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m pipelines.make_demo_checkpoint --work demo-work",
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for the cohort and the training run")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "flowlet" / "assets" / "demo-4mm.pt",
        help="where to write the checkpoint (default: flowlet/assets/demo-4mm.pt)",
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="folder for figures and quality.json"
    )
    parser.add_argument(
        "--check-only", action="store_true", help="skip cohort and training; check --checkpoint"
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to check (default: --out)")
    parser.add_argument(
        "--device",
        default="auto",
        help="training device: auto (cuda when available, else cpu; about 7 min on one H200, an estimated 7 h on 2 CPU cores)",
    )
    parser.add_argument("--seeds", type=int, default=8, help="samples per age (default 8)")
    parser.add_argument(
        "--solver", default="midpoint", help="ODE solver (default midpoint, on the cosine grid)"
    )
    parser.add_argument("--steps", type=int, default=10, help="solver steps (default 10)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=2.0,
        help="classifier-free guidance scale (default 2: the demo was trained with condition dropout 0.1)",
    )
    parser.add_argument(
        "--ablate",
        type=int,
        metavar="STEPS",
        help="instead: train every ablation variant for STEPS steps and write docs/demo-ablations.tsv",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="training config override (changes the result; for experiments)",
    )
    return parser


def _train(work: Path, overrides: list[str], stop_after: int | None = SHIPPED_STEPS) -> Path:
    from configs import config_path
    from flowlet.data.phantom import write_phantom_cohort
    from flowlet.training.config import load_train_config
    from flowlet.training.trainer import Trainer

    cohort = work / "phantoms-4mm"
    if not (cohort / "participants.tsv").is_file():
        write_phantom_cohort(cohort, 200, voxel_size=4, seed=0, progress=False)
    cfg = load_train_config(
        config_path("flowlet", "demo"),
        [f"data.source={cohort}", f"runtime.run_dir={work / 'run'}", *SHIPPED_RECIPE, *overrides],
    )
    result = Trainer(cfg).fit(resume=True, stop_after=stop_after)
    logger.info("training finished at step %d (best val loss %s)", result.step, result.best_val_loss)
    return result.run_dir / "checkpoints" / "best.pt"


def run_quality_check(
    checkpoint: Path, cohort: Path, *, seeds_per_age: int, solver: str, steps: int, guidance: float
):
    """Generate at :data:`AGES` and score against the phantom cohort; returns (report, volumes, bundle)."""
    from analysis.generator_check import (
        VentricleVolumeMeter,
        quality_check,
        reference_images,
        ventricle_region,
    )
    from flowlet.checkpoint import load_bundle
    from flowlet.data.cohort import load_cohort
    from flowlet.data.nifti import voxel_volume_mm3
    from flowlet.export import decode_and_export
    from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds

    bundle = load_bundle(checkpoint)
    ages = [a for a in AGES for _ in range(seeds_per_age)]
    seeds = sample_seeds(2024, len(ages))
    config = SamplingConfig(solver=solver, num_steps=steps, guidance_scale=guidance, batch_size=4)
    volumes = decode_and_export(
        generate_wavelets(bundle, ages, seeds, config, progress=False), bundle.save_size
    )
    table = load_cohort(cohort).table
    reference = reference_images(list(table["path"]), bundle.model_input_size, bundle.save_size)
    affine = np.asarray(bundle.affine)
    region = ventricle_region(bundle.save_size, affine)
    meter = VentricleVolumeMeter(region, voxel_volume_mm3(affine)).fit(reference)
    report = quality_check(volumes, ages, seeds, reference, table["age"].to_numpy(), meter)
    return report, volumes, bundle


def make_figures(report, volumes: np.ndarray, ages: list[float], docs: Path) -> list[Path]:
    """Mid-slice montage by age and ventricle volume versus age (PNG files in ``docs/figures``)."""
    from flowlet.data.figures import pyplot

    plt = pyplot()

    from flowlet.data.io import atomic_path

    out_dir = docs / "figures"
    unique = sorted(set(ages))
    per_age = len(ages) // len(unique)
    fig, axes = plt.subplots(len(unique), 3, figsize=(6, 2.1 * len(unique)))
    for row, age in enumerate(unique):
        vol = volumes[ages.index(age)]
        cx, cy, cz = (s // 2 for s in vol.shape)
        views = (np.rot90(vol[:, :, cz]), np.rot90(vol[:, cy, :]), np.rot90(vol[cx, :, :]))
        for col, (view, name) in enumerate(zip(views, ("axial", "coronal", "sagittal"))):
            ax = axes[row, col]
            ax.imshow(view, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        axes[row, 0].set_ylabel(f"age {age:g}", fontsize=9)
    fig.suptitle(f"demo-4mm: first seed of {per_age} per age", fontsize=9)
    fig.tight_layout()
    montage = out_dir / "demo-montage.png"
    with atomic_path(montage) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ref = report.reference
    ax.scatter(
        ref["age"], ref["ventricle_volume_mm3"] / 1000, s=8, c="0.6", label="phantoms (training cohort)"
    )
    s = report.samples
    ax.scatter(s["age"], s["ventricle_volume_mm3"] / 1000, s=18, c="C3", label="generated")
    ax.plot(unique, s.groupby("age")["ventricle_volume_mm3"].mean() / 1000, c="C3")
    ax.set_xlabel("age (years; conditioned age for generated)")
    ax.set_ylabel("lateral-ventricle CSF (cm³)")
    ax.set_title(f"Spearman ρ (generated) = {report.spearman_rho:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = out_dir / "demo-ventricles-vs-age.png"
    with atomic_path(plot) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [montage, plot]


#: Ablations on the demo configuration: name -> overrides of configs/flowlet/demo.yaml.
ABLATIONS: dict[str, list[str]] = {
    "demo (all improvements)": [],
    "official switches": [
        "model.time_scale=1.0",
        "model.skip_kernel_size=3",
        "flow.time_sampler=uniform",
        "flow.time_sampler_options={}",
        "flow.condition_dropout=0.0",
    ],
    "- t·1000 (raw t)": ["model.time_scale=1.0"],
    "- 1×1 skips (3×3×3)": ["model.skip_kernel_size=3"],
    "- logit-normal t (uniform)": ["flow.time_sampler=uniform", "flow.time_sampler_options={}"],
    "- condition dropout (0)": ["flow.condition_dropout=0.0"],
    "+ spatial cross-attention (4 tokens)": ["model.num_context_tokens=4"],
}


def _ablation_fidelity(checkpoint: Path, cohort: Path, overrides: list[str]) -> dict[str, float]:
    """Age fidelity of one ablation run: ventricle-vs-age Spearman ρ at guidance 1 (and 2 where the run was
    trained with condition dropout), 3 seeds x 4 ages, midpoint x 10 on the cosine grid, and the intensity
    histogram distance to the phantoms."""
    out = {}
    guided = "flow.condition_dropout=0.0" not in overrides
    for scale in (1.0, 2.0) if guided else (1.0,):
        report, _, _ = run_quality_check(
            checkpoint, cohort, seeds_per_age=3, solver="midpoint", steps=10, guidance=scale
        )
        out[f"rho_guidance_{scale:g}"] = report.spearman_rho
        if scale == 1.0:
            out["hist_wasserstein_1"] = report.histogram["wasserstein_1"]
    out.setdefault("rho_guidance_2", float("nan"))
    return out


def run_ablations(work: Path, steps: int, docs: Path) -> Path:
    """Train every :data:`ABLATIONS` variant for ``steps`` steps (one after another, one process) and tabulate.

    All variants share the cohort, split, seed, data order, noise and the fixed validation draws, so the final
    validation losses differ only by the switch. EMA is off so that the raw weights are compared, and the warm-up
    is shortened to 10 steps so that short runs reach the full learning rate. Each run is then sampled for the
    age-fidelity columns (:func:`_ablation_fidelity`).
    """
    import pandas as pd

    from configs import config_path
    from flowlet.data.cohort import load_cohort
    from flowlet.data.io import write_table_atomic
    from flowlet.training.config import load_train_config
    from flowlet.training.trainer import Trainer

    cohort = load_cohort(work / "phantoms-4mm")
    rows = []
    for name, overrides in ABLATIONS.items():
        run = work / "ablations" / name.translate(str.maketrans({c: "_" for c in " ()·×+-,"}))
        cfg = load_train_config(
            config_path("flowlet", "demo"),
            [
                f"runtime.run_dir={run}",
                f"training.max_steps={steps}",
                f"training.val_every={steps}",
                "training.ema_decay=0.0",
                "training.warmup_steps=10",
                "training.keep_every=0",
                "runtime.progress=false",
                *overrides,
            ],
        )
        trainer = Trainer(cfg, cohort=cohort)
        result = trainer.fit(resume=True)
        params = sum(p.numel() for p in trainer.model.parameters())
        metrics = pd.read_csv(run / "metrics.csv")
        last = metrics.dropna(subset=["val_loss"]).iloc[-1]
        rows.append(
            {
                "variant": name,
                "overrides": " ".join(overrides),
                "params": params,
                "steps": result.step,
                "val_loss": last["val_loss"],
                "val_loss_lll": last["val_loss_lll"],
                "val_loss_detail": last["val_loss_detail"],
                "train_loss_last_window": metrics["train_loss"].dropna().iloc[-1],
                "s_per_step": 1.0 / metrics["it_per_s"].dropna().median(),
            }
        )
        rows[-1].update(
            _ablation_fidelity(run / "checkpoints" / "latest.pt", work / "phantoms-4mm", overrides)
        )
        logger.info("ablation %s: %s", name, rows[-1])
        table = pd.DataFrame(rows)
        write_table_atomic(docs / "demo-ablations.tsv", table)
    return docs / "demo-ablations.tsv"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    from pipelines.arguments import setup_cli

    setup_cli()
    from flowlet.data.io import write_json_atomic
    from flowlet.sampling import default_time_grid

    if args.ablate:
        run_ablations(args.work, args.ablate, args.docs)
        return 0
    if not args.check_only:
        from pipelines.arguments import resolve_device

        device = resolve_device(args.device)
        extra = [f"runtime.device={device}"] + (
            ["runtime.num_threads=4", "data.num_workers=6"] if device != "cpu" else []
        )
        best = _train(args.work, [*extra, *args.overrides])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.out)
        logger.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 2**20)
    checkpoint = args.checkpoint or args.out
    report, volumes, bundle = run_quality_check(
        checkpoint,
        args.work / "phantoms-4mm",
        seeds_per_age=args.seeds,
        solver=args.solver,
        steps=args.steps,
        guidance=args.guidance,
    )
    ages = report.samples["age"].tolist()
    figures = make_figures(report, volumes, ages, args.docs)
    summary = {
        **report.summary(),
        "checkpoint": str(checkpoint),
        "solver": args.solver,
        "steps": args.steps,
        "time_grid": default_time_grid(args.solver),
        "guidance_scale": args.guidance,
        "seeds_per_age": args.seeds,
        "train_step": bundle.provenance.get("step"),
        "figures": [str(f) for f in figures],
    }
    write_json_atomic(args.docs / "demo-quality.json", summary)
    logger.info("quality: %s", {k: v for k, v in summary.items() if k != "figures"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
