"""The sections of the study report after its conclusion, one function each, in reading order.

Each function adds a heading and its tables and figures to an :class:`~pipelines.study.html.HtmlReport`; the
numbers are computed elsewhere (the stages' outputs and :mod:`pipelines.study.report`), these only show them.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet import __version__
from flowlet.data import keys
from pipelines.study.config import StudyConfig
from pipelines.study.figures import montage, split_histogram
from pipelines.study.html import HtmlReport
from pipelines.study.runner import StageResult

__all__ = [
    "arms_section",
    "augmentation_section",
    "cohort_section",
    "fidelity_section",
    "generated_section",
    "privacy_section",
    "read_table",
    "reproducibility_section",
]

#: The columns of the per-arm, per-bin table, in the order shown.
BIN_COLUMNS = [
    "arm",
    "age_bin",
    "n",
    "mae_years",
    "mae_low_years",
    "mae_high_years",
    "mae_seed_sd_years",
    "diff_years",
    "diff_low_years",
    "diff_high_years",
    "diff_seed_sd_years",
    "p_holm",
    "verdict",
]


def read_table(path: Path | None, **kwargs) -> pd.DataFrame | None:
    """A CSV or TSV (by suffix) as a DataFrame; None when ``path`` is None or not a file."""
    if path is None or not path.is_file():
        return None
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", **kwargs)


def cohort_section(report: HtmlReport, split: pd.DataFrame, bin_width: float) -> None:
    """Scans, subjects and ages per split, and the age histogram by split."""
    report.heading("Cohort and split")
    counts = (
        split.groupby(keys.SPLIT)
        .agg(
            scans=(keys.SUBJECT_ID, "size"),
            subjects=(keys.SUBJECT_ID, "nunique"),
            age_mean=(keys.AGE, "mean"),
            age_min=(keys.AGE, "min"),
            age_max=(keys.AGE, "max"),
        )
        .reset_index()
    )
    report.table(counts, caption="subject-level split (FlowLet and augmentation see only the training split)")
    report.figure(split_histogram(split, bin_width), caption="age histogram of the real cohort by split")


def augmentation_section(report: HtmlReport, synthetic_dir: Path, target_hist: str) -> None:
    """The augmentation plan and its histograms (as ``flowlet-augment`` wrote them)."""
    report.heading("Augmentation plan")
    plan = read_table(synthetic_dir / "plan.tsv")
    if plan is not None:
        report.table(plan, caption=f"plan: target '{target_hist}', real = training split")
    if (synthetic_dir / "age_histograms.png").is_file():
        report.figure(
            synthetic_dir / "age_histograms.png", caption="real, synthetic and combined against the target"
        )


def generated_section(
    report: HtmlReport, real_train: pd.DataFrame, synthetic: pd.DataFrame, ages: Sequence[float]
) -> None:
    """Real and synthetic brains side by side at the chosen ages."""
    report.heading("Generated brains")
    report.figure(
        montage(real_train, synthetic, list(ages)),
        caption="closest real (training split) and synthetic brain to each age",
    )


def arms_section(
    report: HtmlReport,
    bins: pd.DataFrame,
    *,
    figure_path: Path,
    summary: pd.DataFrame | None,
    sparse: list[str],
    pooled: pd.DataFrame | None,
    reference: pd.DataFrame | None,
) -> None:
    """The brain-age arms compared: per-bin MAE figure (saved to ``figure_path``), overall and per-bin tables."""
    from bap.figures import plot_bins

    report.heading("Brain-age prediction: the arms compared")
    figure = plot_bins(
        bins,
        figure_path,
        reference=reference,
        title="test MAE per age bin, 95 % CI (seeds and subjects resampled), every arm",
    )
    dashed = (
        "ridge regression on the true region volumes (reference)" if reference is not None else "no reference"
    )
    report.figure(figure, caption="per-bin test MAE with 95 % CIs for every arm; dashed: " + dashed)
    if summary is not None:
        report.table(
            summary, caption="overall test MAE (years) per arm, 95 % CI, seed SD; paired difference vs real"
        )
    report.table(
        bins[BIN_COLUMNS],
        caption="per arm and age bin: MAE [95 % CI] and seed SD; difference vs real [95 % CI, unadjusted] and its "
        "seed SD; Holm-adjusted p over bins; verdict",
    )
    if pooled is not None:
        report.table(pooled, caption=f"the sparse bins pooled ({', '.join(sparse)})")
    if reference is not None:
        report.table(
            reference, caption="reference: ridge regression on the true region volumes, same test scans"
        )


def fidelity_section(report: HtmlReport, folder: Path) -> None:
    """The regional evaluation of ``flowlet-eval quality`` (its tables and the volume-age figure)."""
    report.heading("Regional anatomical fidelity")
    for name, caption in (
        ("key_regions.csv", "key regions: volume-age slopes, real vs synthetic"),
        ("image_metrics.csv", "global image metrics"),
        ("roi_global.csv", "ROI metrics on age-matched pairs (paper layout), global"),
    ):
        table = read_table(folder / name)
        if table is not None:
            report.table(table, caption=caption)
    if (folder / "volume_vs_age.png").is_file():
        report.figure(folder / "volume_vs_age.png", caption="regional volume versus age, real and synthetic")


def privacy_section(report: HtmlReport, folder: Path, *, generator_trained: bool) -> None:
    """The memorisation audit of ``flowlet-eval privacy``: flag rate, tables and figures."""
    report.heading("Privacy / memorisation audit")
    info = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    report.paragraph(
        "Each synthetic image's highest correlation with a real training image is compared with the same statistic "
        "for held-out real subjects (the baseline); images above the baseline's high quantile are flagged as "
        f"possible copies. Flag rate: {info.get('flag_rate', float('nan')):.3f}."
    )
    if not generator_trained:
        report.paragraph(
            "The generator was not trained in this study (a shipped or given checkpoint), so the "
            "training split is not its training set: the audit checks for copies of this cohort's "
            "scans only.",
            css_class="warning",
        )
    for name in sorted(folder.glob("*by_age*.csv")):
        report.table(pd.read_csv(name), caption=name.stem.replace("_", " "))
    for png in sorted(folder.glob("*.png")):
        report.figure(png, caption=png.stem.replace("_", " "))


def reproducibility_section(
    report: HtmlReport, results: Mapping[str, StageResult], config: StudyConfig
) -> None:
    """Stage timings and keys, the generator checkpoint's hash, software versions and the resolved config."""
    report.heading("Reproducibility")
    stages = pd.DataFrame(
        [
            {"stage": n, "seconds": round(r.seconds, 1), "reused": r.cached, "key": r.key[:12]}
            for n, r in results.items()
        ]
    )
    report.table(stages, caption="stages (time of the run that produced them; reused = unchanged since)")
    generator = results["generator"].outputs
    report.table(
        pd.DataFrame([{"checkpoint": Path(generator["checkpoint"]).name, "sha256": generator["sha256"]}]),
        caption="generator checkpoint",
    )
    report.table(_versions(), caption="software")
    report.code(json.dumps(config.to_dict(), indent=2))


def _versions() -> pd.DataFrame:
    import monai
    import nibabel
    import torch

    rows = [
        ("flowlet-toolkit", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("monai", monai.__version__),
        ("nibabel", nibabel.__version__),
        ("numpy", np.__version__),
        ("pandas", pd.__version__),
        ("platform", platform.platform()),
    ]
    return pd.DataFrame(rows, columns=["component", "version"])
