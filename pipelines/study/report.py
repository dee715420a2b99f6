"""The study report: one self-contained HTML file plus the tables it shows.

The first section states the conclusion in plain words with its uncertainty, including "no detectable effect"
where that is the answer: the arms (real-only, oversampling, re-weighting, synthetic ratios) ranked by test MAE in
the sparse age bins and overall, each with its paired difference against real-only training (95 % CI of a
bootstrap over training seeds and test subjects) and the seed-to-seed spread of that difference. The sparse bins are fixed from the *training*
histogram before any test result is read (:func:`sparse_bins`); per-bin tests are Holm-adjusted over the bins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bap.verdicts import MIN_SEEDS, MIN_TEST_SUBJECTS, TOO_FEW
from flowlet.data import keys
from flowlet.data.bins import age_bin_labels
from flowlet.data.io import write_table_atomic, write_text_atomic
from pipelines.study import report_sections as sections
from pipelines.study.config import StudyConfig
from pipelines.study.html import HtmlReport
from pipelines.study.report_sections import read_table
from pipelines.study.runner import StageContext

__all__ = [
    "SPARSE_RULE",
    "conclusion_sentences",
    "fidelity_sentences",
    "reference_bins",
    "run_report",
    "sparse_bins",
    "sparse_statistics",
]


def _path(ctx: StageContext, stage: str, key: str) -> Path | None:
    value = ctx.results[stage].outputs.get(key)
    return None if value is None else ctx.study_dir / value


#: The rule that picks the sparse bins, stated in the report.
SPARSE_RULE = (
    "A sparse bin is an age bin that the training split spans but that holds fewer than half the training scans a "
    "uniform histogram would give it (n_bin < N_train / (2 K), K = the bins the training split spans), and that "
    "has at least 2 test scans; the rule reads only the training histogram and the test counts, never a test "
    "result."
)


def sparse_bins(split: pd.DataFrame, bin_width: float, *, min_test: int = 2) -> list[str]:
    """The sparse bins of :data:`SPARSE_RULE`, in age order, labelled by :func:`flowlet.data.bins.age_bin_labels`."""
    train_ages = split.loc[split[keys.SPLIT] == "train", keys.AGE].to_numpy(float)
    test_ages = split.loc[split[keys.SPLIT] == "test", keys.AGE].to_numpy(float)
    if train_ages.size == 0:
        return []
    lows = np.arange(np.floor(train_ages.min() / bin_width), np.floor(train_ages.max() / bin_width) + 1)
    spanned = age_bin_labels(lows * bin_width, bin_width)
    train = pd.Series(age_bin_labels(train_ages, bin_width)).value_counts().reindex(spanned, fill_value=0)
    test = pd.Series(age_bin_labels(test_ages, bin_width), dtype=object).value_counts()
    share = train_ages.size / (2 * len(spanned))
    return [b for b in spanned if train[b] < share and test.get(b, 0) >= min_test]


def sparse_statistics(
    predictions: pd.DataFrame, sparse: list[str], *, bin_width: float, n_boot: int, seed: int
):
    """Every arm on the test scans of the sparse bins pooled (one test per arm, no multiplicity across bins)."""
    from bap.compare import arm_statistics

    if not sparse:
        return None
    inside = np.isin(age_bin_labels(predictions[keys.AGE].to_numpy(float), bin_width), sparse)
    if inside.sum() == 0:
        return None
    table = arm_statistics(predictions[inside], bin_width=bin_width, n_boot=n_boot, seed=seed)
    return table[table["age_bin"] == "all"].reset_index(drop=True)


def reference_bins(split: pd.DataFrame, bin_width: float, *, n_boot: int, seed: int) -> pd.DataFrame | None:
    """Per-bin MAE [95 % CI] of the ridge regression on true region volumes, on the study's test scans."""
    from bap import metrics
    from pipelines.study.reference import REFERENCE_LABEL, ridge_on_true_volumes

    pred = ridge_on_true_volumes(split)
    if pred is None:
        return None
    ages = pred[keys.AGE].to_numpy(float)
    table = metrics.per_bin_table(
        ages,
        np.abs(pred["pred"].to_numpy() - ages),
        gap=pred["pred"].to_numpy() - ages,
        groups=pred[keys.SUBJECT_ID].to_numpy(),
        bin_width=bin_width,
        n_boot=n_boot,
        seed=seed,
    )
    return table.assign(label=REFERENCE_LABEL)


def _ci(row, prefix: str) -> str:
    return f"[{row[prefix + '_low_years']:.2f}, {row[prefix + '_high_years']:.2f}]"


def _effect(row) -> str:
    return (
        f"{row['diff_years']:+.2f} y, 95 % CI [{row['diff_low_years']:+.2f}, {row['diff_high_years']:+.2f}], "
        f"seed SD {row['diff_seed_sd_years']:.2f}"
    )


def _ranking(rows: pd.DataFrame) -> str:
    ranked = rows.sort_values("mae_years", kind="stable")
    return "; ".join(f"{r['arm']} {r['mae_years']:.2f} {_ci(r, 'mae')}" for _, r in ranked.iterrows())


def _verdicts(rows: pd.DataFrame) -> str:
    parts = []
    for _, r in rows[rows["verdict"] != "baseline"].iterrows():
        parts.append(f"{r['arm']} {_effect(r)}: {r['verdict']}")
    return "; ".join(parts)


def conclusion_sentences(
    bins: pd.DataFrame, sparse: list[str], pooled_sparse: pd.DataFrame | None, reference: pd.DataFrame | None
) -> list[str]:
    """Plain-language findings: the arms ranked in the sparse bins (pooled, then bin by bin) and overall."""
    overall = bins[bins["age_bin"] == "all"]
    n_seeds = int(overall["n_seeds"].max()) if not overall.empty else 0
    sentences = []
    if pooled_sparse is not None and not pooled_sparse.empty:
        best = _best(pooled_sparse)
        sentences.append(
            f"In the sparse age bins ({', '.join(sparse)}; {int(pooled_sparse['n'].iloc[0])} test scans), "
            f"test MAE in years, best first: {_ranking(pooled_sparse)}. Against real-only training: "
            f"{_verdicts(pooled_sparse)}. {best}"
        )
        for label in sparse:
            rows = bins[bins["age_bin"] == label]
            if rows.empty:
                continue
            called = rows[rows["verdict"].isin(["better", "worse"])]
            verdict = (
                "; ".join(
                    f"{r['arm']} {r['verdict']} ({_effect(r)}, Holm p {r['p_holm']:.3g})"
                    for _, r in called.iterrows()
                )
                if not called.empty
                else "no arm differs detectably from real-only training after the Holm adjustment over bins"
            )
            sentences.append(
                f"  Bin {label} ({int(rows['n'].iloc[0])} test scans): {_ranking(rows)}; {verdict}."
            )
    else:
        sentences.append(
            "No age bin of the training split is sparse by the stated rule, or none can be tested."
        )
    best = _best(overall)
    sentences.append(
        f"Overall ({int(overall['n'].iloc[0])} test scans), best first: {_ranking(overall)}. Against real-only "
        f"training: {_verdicts(overall)}. {best}"
    )
    if reference is not None:
        row = reference[reference["age_bin"] == "all"].iloc[0]
        sentences.append(
            f"Reference: a ridge regression on the phantoms' true region volumes reaches {row['mae_years']:.2f} "
            f"{_ci(row, 'mae')} years on the same test scans."
        )
    sentences.append(
        f"An effect is called only when its 95 % CI excludes 0 and it is larger than the seed-to-seed SD of the "
        f"difference ({n_seeds} training seeds); per-bin effects also need a Holm-adjusted p < 0.05 over the bins; "
        f"and none is called with fewer than {MIN_TEST_SUBJECTS} test subjects or {MIN_SEEDS} training seeds "
        f"('{TOO_FEW}')."
    )
    return sentences


def _best(rows: pd.DataFrame) -> str:
    better = rows[rows["verdict"] == "better"].sort_values("diff_years")
    if better.empty and (rows["verdict"] == TOO_FEW).any():
        return (
            f"Too few test subjects or training seeds to call any effect here (at least {MIN_TEST_SUBJECTS} "
            f"and {MIN_SEEDS} are needed): read these numbers as a check that the pipeline runs."
        )
    if better.empty:
        return "No arm beats real-only training detectably here (no detectable effect)."
    names = ", ".join(better["arm"])
    return f"Detectably better than real-only training: {names}."


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


def run_report(ctx: StageContext, config: StudyConfig) -> dict[str, Any]:
    """Write ``report.html``, ``conclusion.md`` and the pooled sparse-bin and reference tables of the study."""
    from flowlet.data.cohort import load_cohort
    from pipelines.study.stages import split_table

    split = split_table(ctx)
    bap = ctx.results["bap"].outputs
    bins = pd.read_csv(ctx.study_dir / bap["bins"])
    sparse, pooled, reference = _findings(ctx, config, split)
    evaluation = ctx.results["eval"].outputs
    sentences = conclusion_sentences(bins, sparse, pooled, reference)
    if "quality" in evaluation:
        sentences += fidelity_sentences(read_table(ctx.study_dir / evaluation["quality"] / "key_regions.csv"))

    report = HtmlReport(config.report.title)
    report.heading("Conclusion")
    for sentence in sentences:
        report.paragraph(sentence, css_class="conclusion")
    report.paragraph(_method(ctx, config))
    sections.cohort_section(report, split, config.augment.bin_width)
    synthetic_dir = ctx.study_dir / ctx.results["augment"].outputs["synthetic"]
    sections.augmentation_section(report, synthetic_dir, config.augment.target_hist)
    real_train = split[split[keys.SPLIT] == "train"]
    sections.generated_section(
        report, real_train, load_cohort(synthetic_dir).table, config.report.montage_ages
    )
    sections.arms_section(
        report,
        bins,
        figure_path=ctx.stage_dir / "mae_by_bin.png",
        summary=read_table(ctx.study_dir / bap["summary"]),
        sparse=sparse,
        pooled=pooled,
        reference=reference,
    )
    if "quality" in evaluation:
        sections.fidelity_section(report, ctx.study_dir / evaluation["quality"])
    if "privacy" in evaluation:
        trained = ctx.results["generator"].outputs.get("trained", False)
        sections.privacy_section(report, ctx.study_dir / evaluation["privacy"], generator_trained=trained)
    sections.reproducibility_section(report, ctx.results, config)

    html_path = write_text_atomic(ctx.stage_dir / "report.html", report.render())
    write_text_atomic(ctx.stage_dir / "conclusion.md", "\n".join(sentences) + "\n")
    return {"html": str(html_path.relative_to(ctx.study_dir)), "conclusion": sentences}


def _findings(ctx: StageContext, config: StudyConfig, split: pd.DataFrame):
    """``(sparse bins, pooled sparse-bin statistics, reference per-bin table)``; the two tables are also written."""
    from pipelines.study.stages import load_bap_config

    bin_width = config.augment.bin_width
    predictions = pd.read_csv(  # keep_default_na=False keeps the "n/a" session ids as text
        ctx.study_dir / ctx.results["bap"].outputs["predictions"],
        dtype={keys.SUBJECT_ID: str, keys.SESSION_ID: str},
        keep_default_na=False,
        na_values=[""],
    )
    eval_cfg = load_bap_config(config.bap.config, config.bap.overrides).eval
    sparse = sparse_bins(split, bin_width)
    pooled = sparse_statistics(
        predictions, sparse, bin_width=bin_width, n_boot=eval_cfg.n_boot, seed=eval_cfg.seed
    )
    reference = reference_bins(split, bin_width, n_boot=eval_cfg.n_boot, seed=eval_cfg.seed)
    if pooled is not None:
        write_table_atomic(ctx.stage_dir / "sparse_bins_pooled.csv", pooled)
    if reference is not None:
        write_table_atomic(ctx.stage_dir / "reference_ridge_bins.csv", reference)
    return sparse, pooled, reference


def _method(ctx: StageContext, config: StudyConfig) -> str:
    """How the conclusion's numbers are computed, and what the cohort can and cannot tell."""
    cohort = ctx.results["cohort"].outputs
    return (
        "MAE is the mean absolute error on the real test scans, each scan's error first averaged over the "
        f"{config.bap.seeds} training seed(s); 95 % CIs resample the training seeds and the test subjects together "
        "(crossed bootstrap), so they hold the seed-to-seed spread of the trained networks; differences are arm minus "
        "real-only on the same scans, joined by (subject, session) (negative = better). "
        + SPARSE_RULE
        + " Per-bin CIs are unadjusted; per-bin calls use Holm-adjusted bootstrap p values over the bins of each "
        "arm. Every arm trains for the same number of optimiser steps (each epoch draws as many scans as there are "
        "real training scans). "
        + (
            "The test scans come from a separate cohort (the study's test section), never from the training "
            "cohort. "
            if cohort.get("test")
            else ""
        )
        + (
            "The cohort is the ageing phantom: a test bed with known ground truth, not real brains; conclusions about "
            "real data need real data."
            if cohort.get("phantom")
            else ""
        )
    )
