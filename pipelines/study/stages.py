"""The study's stages. Each reads earlier results from the study folder and writes into its own folder.

Paths recorded in a stage's outputs are relative to the study folder, so a study folder can be moved.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.io import write_table_atomic
from pipelines.study.config import StudyConfig, load_bap_config
from pipelines.study.runner import Stage, StageContext

logger = logging.getLogger(__name__)

STAGE_NAMES = ("cohort", "split", "generator", "augment", "bap", "eval", "report")


def _rel(ctx: StageContext, path: Path) -> str:
    return str(Path(path).resolve().relative_to(ctx.study_dir.resolve()))


def _abs(ctx: StageContext, relative: str) -> Path:
    return ctx.study_dir / relative


def cohort_fingerprint(path: str) -> str:
    """Hash of a user's cohort: its table (paths, ages, ...) and each image's size and modification time."""
    from flowlet.data.cohort import load_cohort

    table = load_cohort(path).table
    digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    for image in table[keys.PATH]:
        stat = Path(image).stat()
        digest.update(f"{image}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def run_cohort(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    """The training cohort and, when the study has a ``test`` section, the external test cohort."""
    from flowlet.data.cohort import load_cohort

    section = config.cohort
    if section.phantoms is not None:
        from flowlet.data.phantom import write_phantom_cohort

        p = section.phantoms
        folder = ctx.stage_dir / "data"
        write_phantom_cohort(
            folder, p.n, age_hist=p.age_hist, voxel_size=p.voxel_size, sites=p.sites, seed=p.seed
        )
        cohort = load_cohort(folder)
        outputs = {"cohort": _rel(ctx, folder), "n_scans": len(cohort), "phantom": True}
    else:
        cohort = load_cohort(section.path)
        outputs = {"cohort": str(Path(section.path).resolve()), "n_scans": len(cohort), "phantom": False}
    if config.test is not None:
        outputs.update(_test_cohort(ctx, config, cohort.table))
    return outputs


def balanced_test_ages(train_ages: np.ndarray, *, per_bin: int, bin_width: float, seed: int) -> np.ndarray:
    """``per_bin`` ages in every ``bin_width``-year bin that ``train_ages`` span, uniform inside each bin and
    clipped to the range of ``train_ages`` (so the test cohort never asks the model to extrapolate)."""
    low, high = float(np.min(train_ages)), float(np.max(train_ages))
    rng = np.random.default_rng(seed)
    ages = []
    edge = np.floor(low / bin_width) * bin_width
    while edge <= high:
        lo, hi = max(edge, low), min(edge + bin_width, high)
        ages.append(rng.uniform(lo, hi, size=per_bin) if hi > lo else np.full(per_bin, lo))
        edge += bin_width
    return np.round(np.concatenate(ages), 2)


def _test_cohort(ctx: StageContext, config: StudyConfig, train: pd.DataFrame) -> dict[str, Any]:
    from flowlet.data.cohort import load_cohort

    t = config.test
    if t.phantoms is not None:
        from flowlet.data.phantom import write_phantom_cohort

        p, own = t.phantoms, config.cohort.phantoms
        ages = balanced_test_ages(
            train[keys.AGE].to_numpy(float), per_bin=p.per_bin, bin_width=p.bin_width, seed=p.seed
        )
        folder = ctx.stage_dir / "test"
        voxel = (
            p.voxel_size if p.voxel_size is not None else own.voxel_size if own else round(_voxel_size(train))
        )
        write_phantom_cohort(
            folder,
            len(ages),
            voxel_size=voxel,
            sites=p.sites if p.sites is not None else own.sites if own else 3,
            seed=p.seed,
            ages=ages.tolist(),
            label_prefix=p.label_prefix,
            progress=False,
        )
        test = load_cohort(folder)
        location = _rel(ctx, folder)
    else:
        test = load_cohort(t.path)
        location = str(Path(t.path).resolve())
    check_disjoint_subjects(train, test.table, where=location)
    return {"test": location, "n_test_scans": len(test)}


def check_disjoint_subjects(train: pd.DataFrame, test: pd.DataFrame, *, where: str = "test cohort") -> None:
    """Refuse a test cohort that shares subject ids with the training cohort, naming the ids."""
    shared = sorted(set(train[keys.SUBJECT_ID].astype(str)) & set(test[keys.SUBJECT_ID].astype(str)))
    if shared:
        raise ValueError(
            f"{where}: {len(shared)} subject id(s) of the test cohort are also in the training cohort: "
            f"{shared[:10]}{' ...' if len(shared) > 10 else ''}; the two cohorts must have different subjects "
            "(rename them, e.g. with a prefix)"
        )


def stage_output(ctx: StageContext, stage: str, name: str) -> Path:
    """The path that an earlier stage recorded under ``name`` (relative paths are inside the study folder)."""
    value = ctx.results[stage].outputs[name]
    path = Path(value)
    return path if path.is_absolute() else _abs(ctx, value)


def run_split(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    from flowlet.data.cohort import load_cohort
    from flowlet.data.splits import split_subjects

    cohort = load_cohort(stage_output(ctx, "cohort", "cohort"))
    s = config.split
    fractions = dict(zip(("train", "val", "test"), s.fractions))
    external = "test" in ctx.results["cohort"].outputs
    if external:  # the external cohort is the test set: the training cohort gives train and val only
        total = fractions["train"] + fractions["val"]
        fractions = {"train": fractions["train"] / total, "val": fractions["val"] / total}
    split = split_subjects(
        cohort.table, fractions, seed=s.seed, age_bin_width=s.age_bin_width, stratify_site=s.stratify_site
    )
    table = cohort.table.assign(**{keys.SPLIT: split.to_numpy()})
    if external:
        test = load_cohort(stage_output(ctx, "cohort", "test")).table
        check_disjoint_subjects(cohort.table, test)
        table = pd.concat([table, test.assign(**{keys.SPLIT: "test"})], ignore_index=True)
    path = write_table_atomic(ctx.stage_dir / "split.tsv", table)
    counts = table.groupby(keys.SPLIT)[keys.SUBJECT_ID].nunique().to_dict()
    return {"split": _rel(ctx, path), "subjects": {k: int(v) for k, v in counts.items()}}


def split_table(ctx: StageContext) -> pd.DataFrame:
    """The real cohort with its ``split`` column (read back through the cohort reader, which validates it)."""
    from flowlet.data.cohort import load_cohort

    return load_cohort(_abs(ctx, ctx.results["split"].outputs["split"])).table


def run_generator(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    from flowlet.assets import resolve_checkpoint
    from flowlet.data.io import sha256_file

    g = config.generator
    if g.checkpoint is not None:
        path = resolve_checkpoint(g.checkpoint)
        return {
            "checkpoint": str(path.resolve()),
            "sha256": sha256_file(path),
            "trained": False,
            "config_path": g.config_path,
            "condition_ranges_path": g.condition_ranges_path,
        }
    path = train_generator(ctx, config)
    return {
        "checkpoint": _rel(ctx, path),
        "sha256": sha256_file(path),
        "trained": True,
        "config_path": None,
        "condition_ranges_path": None,
    }


def train_generator(ctx: StageContext, config: StudyConfig) -> Path:
    """Train FlowLet on the study's training split only (its own validation subjects come from that split).

    The run resumes exactly if the stage was interrupted (``flowlet-train --resume`` semantics).
    """
    from pipelines.train import run_training

    table = split_table(ctx)
    rows = table.loc[table[keys.SPLIT] == "train", list(keys.COHORT_COLUMNS)]
    source = write_table_atomic(ctx.stage_dir / "train_split.tsv", rows)
    overrides = [
        *config.generator.train_overrides,
        f"data.source={source}",
        f"runtime.run_dir={ctx.stage_dir / 'run'}",
    ]
    result = run_training(config.generator.train_config, overrides, resume=True)
    best = Path(result.run_dir) / "checkpoints" / "best.pt"
    return best if best.is_file() else Path(result.run_dir) / "checkpoints" / "latest.pt"


def run_augment(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    from dataclasses import fields

    from pipelines.augment import AugmentOptions, GenerationSettings, augment

    a = config.augment
    table = split_table(ctx)
    train_ages = table.loc[table[keys.SPLIT] == "train", keys.AGE].to_numpy(dtype=float)
    generator = ctx.results["generator"].outputs
    folder = ctx.stage_dir / "synthetic"
    options = AugmentOptions(
        checkpoint=str(stage_output(ctx, "generator", "checkpoint")),
        out=str(folder),
        **{f.name: getattr(a, f.name) for f in fields(GenerationSettings)},
        config_path=generator.get("config_path"),
        condition_ranges_path=generator.get("condition_ranges_path"),
        overwrite=True,  # the stage reruns because its settings changed or it was killed: same settings resume
    )
    plan, result = augment(train_ages, options)
    return {
        "synthetic": _rel(ctx, folder),
        "n_synthetic": int(plan.budget),
        "max_min_ratio": plan.max_min_ratio(),
        "generated": result.generated,
    }


def run_bap(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    from bap.compare import run_comparison
    from bap.config import replace
    from flowlet.data.cohort import load_cohort

    b = config.bap
    bap_config = replace(load_bap_config(b.config, b.overrides), data={"split_column": keys.SPLIT})
    real = split_table(ctx)
    arms = b.arm_list()
    synthetic = filtered = None
    if any(a.kind == "synthetic" for a in arms):
        synthetic = load_cohort(_abs(ctx, ctx.results["augment"].outputs["synthetic"])).table
    if any(a.kind == "synthetic-filtered" for a in arms):
        filtered = load_cohort(b.filtered_synthetic).table
    result = run_comparison(
        bap_config,
        real,
        ctx.stage_dir,
        arms=arms,
        n_seeds=b.seeds,
        synthetic=synthetic,
        filtered_synthetic=filtered,
        bin_width=config.augment.bin_width,
    )
    return {
        "summary": _rel(ctx, ctx.stage_dir / "comparison.csv"),
        "bins": _rel(ctx, ctx.stage_dir / "comparison_bins.csv"),
        "predictions": _rel(ctx, ctx.stage_dir / "test_predictions.csv"),
        "figure": _rel(ctx, ctx.stage_dir / "comparison_bins.png"),
        "n_test_scans": int(
            result.predictions[[keys.SUBJECT_ID, keys.SESSION_ID]].drop_duplicates().shape[0]
        ),
    }


def _voxel_size(table: pd.DataFrame) -> float:
    from nibabel.affines import voxel_sizes

    from flowlet.data.cohort import read_image

    zooms = voxel_sizes(
        read_image(table[keys.PATH].iloc[0]).affine
    )  # column norms: right for oblique grids too
    return float(np.round(zooms.mean(), 3))


def run_eval(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    """Region fidelity (quality) and the memorisation audit (privacy) of ``flowlet-eval``, called in-process.

    Real reference = the training split (what the synthetic brains were generated to resemble); the privacy
    audit's held-out baseline = the test split. Errors propagate as they were raised.
    """
    from pipelines.eval.common import eval_output, load_config
    from pipelines.eval.privacy import run_privacy
    from pipelines.eval.quality import run_quality

    e = config.eval
    table = split_table(ctx)
    columns = [c for c in keys.COHORT_COLUMNS if c in table.columns]
    real_train = write_table_atomic(
        ctx.stage_dir / "real_train.tsv", table.loc[table[keys.SPLIT] == "train", columns]
    )
    real_test = write_table_atomic(
        ctx.stage_dir / "real_test.tsv", table.loc[table[keys.SPLIT] == "test", columns]
    )
    synthetic = str(_abs(ctx, ctx.results["augment"].outputs["synthetic"]))
    eval_config = load_config(atlas=e.atlas, voxel_size=_voxel_size(table))
    outputs: dict[str, Any] = {}
    if e.quality:
        folder = ctx.stage_dir / "quality"
        with eval_output(folder, (real_train, synthetic)):
            run_quality(real_train, synthetic, folder, eval_config, e.measure_options())
        outputs["quality"] = _rel(ctx, folder)
    if e.privacy:
        folder = ctx.stage_dir / "privacy"
        with eval_output(folder, (synthetic, real_train, real_test)):
            run_privacy(
                real_train, real_test, synthetic, folder, eval_config, limit=e.max_images, progress=False
            )
        outputs["privacy"] = _rel(ctx, folder)
    return outputs


def build_stages(config: StudyConfig) -> list[Stage]:
    """The study's stages in order, each bound to ``config``."""

    def bind(fn):
        return lambda ctx: fn(ctx, config)

    fingerprint = None
    paths = [p for p in (config.cohort.path, config.test.path if config.test else None) if p is not None]
    if paths:

        def fingerprint() -> str:
            return "|".join(cohort_fingerprint(path) for path in paths)

    from pipelines.study.report import run_report  # the report module imports this one

    stages = [
        Stage("cohort", bind(run_cohort), config_sections=("cohort", "test"), fingerprint=fingerprint),
        Stage("split", bind(run_split), depends=("cohort",), config_sections=("split",)),
        Stage("generator", bind(run_generator), depends=("split",), config_sections=("generator",)),
        Stage("augment", bind(run_augment), depends=("split", "generator"), config_sections=("augment",)),
        Stage("bap", bind(run_bap), depends=("split", "augment"), config_sections=("bap",)),
        Stage("eval", bind(run_eval), depends=("split", "augment"), config_sections=("eval",)),
        Stage("report", bind(run_report), depends=STAGE_NAMES[:-1], config_sections=("report",)),
    ]
    if tuple(stage.name for stage in stages) != STAGE_NAMES:
        raise RuntimeError(f"build_stages builds {[s.name for s in stages]}, STAGE_NAMES says {STAGE_NAMES}")
    return stages
