"""The study report: one self-contained HTML file plus the tables it shows.

The first section states the conclusion in plain words with its uncertainty, including when the answer is "no
detectable effect": per synthetic ratio, the paired difference of test MAE against real-only training (subject-level
bootstrap 95 % CI and Wilcoxon p), overall and in the age bins where real training data were scarcest.
"""

from __future__ import annotations

import json
import platform
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlet import __version__
from flowlet.data import keys
from flowlet.data.io import write_table_atomic, write_text_atomic
from pipelines.study.config import StudyConfig
from pipelines.study.html import HtmlReport
from pipelines.study.runner import StageContext

__all__ = ["bin_effects", "conclusion_sentences", "fidelity_sentences", "run_report"]


def _path(ctx: StageContext, stage: str, key: str) -> Path | None:
    value = ctx.results[stage].outputs.get(key)
    return None if value is None else ctx.study_dir / value


def bin_effects(
    predictions: pd.DataFrame, *, bin_width: float, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per age bin and ratio: MAE of real-only and with synthetic data, and their paired difference with its CI.

    Errors are averaged over training seeds per test scan first, so each scan counts once.
    """
    from bap.metrics import paired_error_test

    frame = predictions.assign(abs_error=(predictions["pred"] - predictions[keys.AGE]).abs())
    scans = (
        frame.groupby(["ratio", keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE])["abs_error"].mean().reset_index()
    )
    ratios = sorted(scans["ratio"].unique())
    base = scans[scans["ratio"] == ratios[0]].sort_values([keys.SUBJECT_ID, keys.SESSION_ID])
    low = np.floor(base[keys.AGE] / bin_width) * bin_width
    base = base.assign(bin=[f"{a:g}-{a + bin_width:g}" for a in low])
    rows = []
    for ratio in ratios[1:]:
        cur = scans[scans["ratio"] == ratio].sort_values([keys.SUBJECT_ID, keys.SESSION_ID])
        for label in [*sorted(base["bin"].unique(), key=lambda b: float(b.split("-")[0])), "all"]:
            mask = np.ones(len(base), bool) if label == "all" else (base["bin"] == label).to_numpy()
            if mask.sum() < 2:
                continue
            test = paired_error_test(
                base["abs_error"].to_numpy()[mask],
                cur["abs_error"].to_numpy()[mask],
                groups=base[keys.SUBJECT_ID].to_numpy()[mask],
                n_boot=n_boot,
                seed=seed,
            )
            rows.append(
                {
                    "ratio": ratio,
                    "age_bin": label,
                    "n_test": int(mask.sum()),
                    "mae_real_only": test.mae_a,
                    "mae_augmented": test.mae_b,
                    "diff_years": test.diff.estimate,
                    "diff_low": test.diff.low,
                    "diff_high": test.diff.high,
                    "p_bootstrap": test.p_bootstrap,
                    "p_wilcoxon": test.p_wilcoxon,
                }
            )
    return pd.DataFrame(rows)


def _verdict(row: pd.Series) -> str:
    if row["diff_high"] < 0:
        return "reduced"
    if row["diff_low"] > 0:
        return "increased"
    return "did not detectably change"


def _training_length_sentence(config) -> str:
    """How training length compares across ratios (``train.epoch_size`` of the resolved BAP config)."""
    from pipelines.study.stages import load_bap_config

    epoch_size = load_bap_config(config.bap.config, config.bap.overrides).train.epoch_size
    if epoch_size == "real":
        return (
            "Every ratio trains for the same number of optimiser steps (each epoch draws as many scans as there are "
            "real training scans from the mixed pool, train.epoch_size: real), so differences are not an effect of "
            "training length. "
        )
    return (
        "Training runs for the same number of epochs at every ratio, so runs with synthetic data also take more "
        "optimiser steps; an effect that disappears when real-only training is given more epochs is an effect of "
        "training length, not of the synthetic brains (train.epoch_size: real removes this). "
    )


#: Below this many test scans in a bin, the conclusion warns that the bin's bootstrap interval is not reliable.
FEW_TEST_SCANS = 10


def conclusion_sentences(effects: pd.DataFrame, sparse_bins: list[str]) -> list[str]:
    """Plain-language findings, one per ratio, overall and for the sparsest bins."""
    sentences = []
    for ratio, group in effects.groupby("ratio", sort=True):
        overall = group[group["age_bin"] == "all"].iloc[0]
        sentences.append(
            f"Adding synthetic brains at ratio {ratio:g} {_verdict(overall)} the overall test MAE: "
            f"{overall['mae_real_only']:.2f} → {overall['mae_augmented']:.2f} years (difference "
            f"{overall['diff_years']:+.2f}, 95 % CI [{overall['diff_low']:+.2f}, {overall['diff_high']:+.2f}], "
            f"Wilcoxon p = {overall['p_wilcoxon']:.3g}, {int(overall['n_test'])} test scans)."
        )
        for label in sparse_bins:
            rows = group[group["age_bin"] == label]
            if rows.empty:
                continue
            row = rows.iloc[0]
            n = int(row["n_test"])
            caveat = (
                f"; only {n} test scans, too few for a reliable bootstrap interval"
                if n < FEW_TEST_SCANS
                else ""
            )
            sentences.append(
                f"  In the sparse bin {label} years it {_verdict(row)} the MAE: {row['mae_real_only']:.2f} → "
                f"{row['mae_augmented']:.2f} (difference {row['diff_years']:+.2f}, 95 % CI "
                f"[{row['diff_low']:+.2f}, {row['diff_high']:+.2f}], n = {n}{caveat})."
            )
    return sentences


def _pace(real: float, synthetic: float) -> str:
    if real * synthetic <= 0:
        return "in the opposite direction to"
    return "more slowly than" if abs(synthetic) < abs(real) else "faster than"


def fidelity_sentences(key_regions: pd.DataFrame) -> list[str]:
    """Plain-language findings of the regional evaluation: every key region whose age slope differs (flagged)."""
    if key_regions is None or key_regions.empty or "flagged" not in key_regions:
        return []
    flagged = key_regions[key_regions["flagged"].astype(str).str.lower() == "true"]
    if flagged.empty:
        return [
            "The regional evaluation finds no key region whose volume-age slope differs between real and synthetic "
            "brains."
        ]
    sentences = []
    for row in flagged.itertuples():
        sentences.append(
            f"The regional evaluation flags {row.region} ({row.tissue}): its volume changes by "
            f"{row.slope_synthetic:+.0f} mm³ per year in the synthetic brains against {row.slope_real:+.0f} in the "
            f"real ones (p = {row.p_value:.2g}), so the synthetic brains age {_pace(row.slope_real, row.slope_synthetic)} "
            "the real ones there; a brain-age model trained on them learns that difference."
        )
    return sentences


def _sparse_bins(split: pd.DataFrame, bin_width: float, count: int = 3, min_test: int = 2) -> list[str]:
    """The ``count`` age bins with the fewest real training scans among those with ``min_test`` test scans or more.

    Bins with fewer test scans have no paired test (``bin_effects`` skips them), so naming them would say nothing.
    """

    def labels(frame: pd.DataFrame) -> pd.Series:
        low = np.floor(frame[keys.AGE] / bin_width) * bin_width
        return pd.Series([f"{a:g}-{a + bin_width:g}" for a in low], dtype=object)

    train = labels(split[split[keys.SPLIT] == "train"]).value_counts()
    test = labels(split[split[keys.SPLIT] == "test"]).value_counts()
    testable = sorted(test[test >= min_test].index, key=lambda b: float(b.split("-")[0]))
    counts = train.reindex(testable, fill_value=0)
    return counts.sort_values(kind="stable").index[:count].tolist()


def _png(fig) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def split_histogram(split: pd.DataFrame, bin_width: float) -> bytes:
    plt = _pyplot()
    edges = np.arange(
        np.floor(split[keys.AGE].min() / bin_width) * bin_width, split[keys.AGE].max() + bin_width, bin_width
    )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    groups = [split.loc[split[keys.SPLIT] == s, keys.AGE] for s in ("train", "val", "test")]
    ax.hist(
        groups,
        bins=edges,
        stacked=True,
        label=["train", "val", "test"],
        color=["#3b6ea5", "#9bb7d4", "#e39b3a"],
    )
    ax.set_xlabel("age (years)")
    ax.set_ylabel("scans")
    ax.set_title("real cohort by split")
    ax.legend(frameon=False)
    fig.tight_layout()
    return _png(fig)


def montage(real: pd.DataFrame, synthetic: pd.DataFrame, ages: list[float]) -> bytes:
    """Mid-sagittal and axial slices of the real and synthetic brains closest to each age."""
    from flowlet.data.cohort import read_image

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2 * len(ages), figsize=(2.2 * 2 * len(ages), 4.8))
    for col, age in enumerate(ages):
        for row, (name, table) in enumerate((("real", real), ("synthetic", synthetic))):
            pick = table.iloc[int(np.argmin(np.abs(table[keys.AGE].to_numpy() - age)))]
            data = read_image(pick[keys.PATH]).data
            data = data / max(float(np.percentile(data, 99.5)), 1e-6)
            x, _, z = (s // 2 for s in data.shape)
            for k, image in enumerate((data[x].T, data[:, :, z + data.shape[2] // 10].T)):
                ax = axes[row, 2 * col + k]
                ax.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"{name}, {pick[keys.AGE]:.0f} y", fontsize=9)
    fig.suptitle(
        "real (top) and synthetic (bottom) brains by age: sagittal and axial mid-slices", fontsize=10
    )
    fig.tight_layout()
    return _png(fig)


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


def _read(path: Path | None, **kwargs) -> pd.DataFrame | None:
    if path is None or not path.is_file():
        return None
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", **kwargs)


def run_report(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    from flowlet.data.cohort import load_cohort
    from pipelines.study.stages import split_table

    report = HtmlReport(config.report.title)
    split = split_table(ctx)
    bap = ctx.results["bap"].outputs
    bin_width = config.augment.bin_width
    predictions = pd.read_csv(  # keep_default_na=False keeps the "n/a" session ids as text
        ctx.study_dir / bap["predictions"],
        dtype={keys.SUBJECT_ID: str, keys.SESSION_ID: str},
        keep_default_na=False,
        na_values=[""],
    )
    effects = bin_effects(predictions, bin_width=bin_width)
    write_table_atomic(ctx.stage_dir / "augmentation_effects.csv", effects)
    sparse = _sparse_bins(split, bin_width)

    report.heading("Conclusion")
    sentences = (
        conclusion_sentences(effects, sparse) if not effects.empty else ["Only one ratio was trained."]
    )
    evaluation = ctx.results["eval"].outputs
    if "quality" in evaluation:
        sentences += fidelity_sentences(_read(ctx.study_dir / evaluation["quality"] / "key_regions.csv"))
    for sentence in sentences:
        report.paragraph(sentence, css_class="conclusion")
    report.paragraph(
        "Differences are augmented minus real-only MAE on the same real test scans (negative = better), averaged over "
        f"{config.bap.seeds} training seed(s); CIs resample test subjects (paired bootstrap). The sparse bins are the "
        f"{len(sparse)} age bins with the fewest real training scans among those with at least 2 test scans. "
        + _training_length_sentence(config)
        + (
            "The cohort is the ageing phantom: a test bed with known ground truth, not real brains; conclusions about "
            "real data need real data."
            if ctx.results["cohort"].outputs.get("phantom")
            else ""
        )
    )

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

    synthetic_dir = ctx.study_dir / ctx.results["augment"].outputs["synthetic"]
    report.heading("Augmentation plan")
    plan = _read(synthetic_dir / "plan.tsv")
    if plan is not None:
        report.table(plan, caption=f"plan: target '{config.augment.target_hist}', real = training split")
    if (synthetic_dir / "age_histograms.png").is_file():
        report.figure(
            synthetic_dir / "age_histograms.png", caption="real, synthetic and combined against the target"
        )

    report.heading("Generated brains")
    synthetic = load_cohort(synthetic_dir).table
    real_train = split[split[keys.SPLIT] == "train"]
    report.figure(
        montage(real_train, synthetic, list(config.report.montage_ages)),
        caption="closest real (training split) and synthetic brain to each age",
    )

    report.heading("Brain-age prediction: real-only versus real + synthetic")
    summary = _read(ctx.study_dir / bap["summary"])
    if summary is not None:
        report.table(
            summary, caption="overall test MAE (years) per synthetic ratio, 95 % CI; paired tests vs ratio 0"
        )
    report.table(effects, caption="paired MAE difference per age bin (augmented − real-only)")
    report.figure(ctx.study_dir / bap["figure"], caption="per-bin test MAE by synthetic ratio")

    if "quality" in evaluation:
        folder = ctx.study_dir / evaluation["quality"]
        report.heading("Regional anatomical fidelity")
        for name, caption in (
            ("key_regions.csv", "key regions: volume-age slopes, real vs synthetic"),
            ("image_metrics.csv", "global image metrics"),
            ("roi_global.csv", "ROI metrics on age-matched pairs (paper layout), global"),
        ):
            table = _read(folder / name)
            if table is not None:
                report.table(table, caption=caption)
        if (folder / "volume_vs_age.png").is_file():
            report.figure(
                folder / "volume_vs_age.png", caption="regional volume versus age, real and synthetic"
            )
    if "privacy" in evaluation:
        folder = ctx.study_dir / evaluation["privacy"]
        report.heading("Privacy / memorisation audit")
        info = (
            json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
        )
        report.paragraph(
            "Each synthetic image's highest correlation with a real training image is compared with the same statistic "
            "for held-out real subjects (the baseline); images above the baseline's high quantile are flagged as "
            f"possible copies. Flag rate: {info.get('flag_rate', float('nan')):.3f}."
        )
        if not ctx.results["generator"].outputs.get("trained", False):
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

    report.heading("Reproducibility")
    stages = pd.DataFrame(
        [
            {"stage": n, "seconds": round(r.seconds, 1), "reused": r.cached, "key": r.key[:12]}
            for n, r in ctx.results.items()
        ]
    )
    report.table(stages, caption="stages (time of the run that produced them; reused = unchanged since)")
    generator = ctx.results["generator"].outputs
    report.table(
        pd.DataFrame([{"checkpoint": Path(generator["checkpoint"]).name, "sha256": generator["sha256"]}]),
        caption="generator checkpoint",
    )
    report.table(_versions(), caption="software")
    report.code(json.dumps(config.to_dict(), indent=2))

    html_path = write_text_atomic(ctx.stage_dir / "report.html", report.render())
    write_text_atomic(ctx.stage_dir / "conclusion.md", "\n".join(sentences) + "\n")
    return {"html": str(html_path.relative_to(ctx.study_dir)), "conclusion": sentences}
