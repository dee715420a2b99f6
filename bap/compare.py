"""Compare training arms (real-only, oversampling, re-weighting, synthetic ratios) on the same real test scans.

Every arm × seed shares the subject split (``data.split_seed``) and the list of training seeds, so the test scans
and the initialisations are paired across arms, and every arm takes the same number of optimiser steps
(``train.epoch_size: real``; see :mod:`bap.arms`). Statistics are keyed by scan: arms are joined on
(subject_id, session_id), never by row position, and a comparison whose arms were evaluated on different scans
fails with the scans named. Outputs in ``out_dir``::

    <arm>/seed-<s>/...          one training run each (see :mod:`bap.train`)
    test_predictions.csv        arm, ratio, seed, subject_id, session_id, age, pred, pred_corrected
    comparison_bins.csv/.md     per arm, overall and per age bin: MAE [95 % CI], seed SD, paired difference
                                against the baseline arm [95 % CI], its seed SD, p values (Holm over bins), verdict
    comparison.csv/.md          the overall rows, one per arm
    comparison_bins.png         per-bin MAE with 95 % CIs, every arm on one axis

Training seeds and test subjects are both random: a conclusion should hold for another draw of either. Every CI
and p value therefore resamples seeds and subjects together (:func:`bap.resampling.crossed_bootstrap`). A bootstrap
over subjects of seed-averaged errors is narrower, because it treats the trained networks as fixed, and it let a
verdict flip with the thread count of the machine. An effect is *called* (``verdict`` ``better`` / ``worse``) only
when its 95 % CI excludes 0, it exceeds the seed-to-seed SD of the per-seed differences, for an age bin its
Holm-adjusted p value over the bins of that arm is below 0.05, and there are at least 20 test subjects and 3 seeds
(:mod:`bap.verdicts`); otherwise the verdict is ``no detectable effect`` (or ``too few to call``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bap import resampling
from bap.arms import Arm, parse_arms, ratios_to_arms
from bap.config import BapConfig, replace
from bap.data import SOURCE, prepare_data
from bap.figures import plot_bins
from bap.train import train
from bap.verdicts import holm, verdict
from flowlet.data import keys
from flowlet.data.bins import age_bin_labels, inverse_frequency_weights, label_start
from flowlet.data.io import write_table_atomic, write_text_atomic
from flowlet.data.markdown import markdown_table

logger = logging.getLogger(__name__)

__all__ = [
    "ComparisonResult",
    "arm_statistics",
    "compare_predictions",
    "holm",
    "paired_errors",
    "run_comparison",
    "seed_scan_errors",
]

#: Identifies one test scan.
SCAN = [keys.SUBJECT_ID, keys.SESSION_ID]


@dataclass(frozen=True)
class ComparisonResult:
    """Tables of a comparison (also written to ``out_dir``)."""

    out_dir: Path
    predictions: pd.DataFrame
    bins: pd.DataFrame
    summary: pd.DataFrame


def run_comparison(
    cfg: BapConfig,
    real: pd.DataFrame,
    out_dir: str | Path,
    *,
    ratios: Sequence[float] | None = None,
    arms: Sequence[Arm] | str | None = None,
    n_seeds: int = 1,
    synthetic: pd.DataFrame | None = None,
    filtered_synthetic: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    bin_width: float | None = None,
    progress: bool = True,
) -> ComparisonResult:
    """Train every arm with seeds ``cfg.train.seed + k`` (``k < n_seeds``) and compare them.

    Args:
        cfg: base configuration (``data.synthetic_ratio``, ``train.seed`` and ``train.epoch_size`` are set per run).
        real: real cohort table.
        out_dir: output folder.
        ratios: the older spelling: synthetic ratios, 0 = ``real`` (used when ``arms`` is not given).
        arms: :class:`bap.arms.Arm` list or a ``"real,oversample,reweight,synthetic:0.5"`` string; the first
            ``real`` arm (else the first arm) is the baseline of the paired differences.
        n_seeds: number of training seeds per arm.
        synthetic: synthetic cohort table (for ``synthetic:R`` arms).
        filtered_synthetic: filtered synthetic cohort table (for ``synthetic-filtered:R`` arms).
        test: optional external test cohort.
        bin_width: age-bin width of the oversampling target, the loss weights and the tables (default
            ``cfg.eval.bin_width``).
        progress: progress bars.
    """
    out_dir = Path(out_dir)
    if arms is None:
        if not ratios:
            raise ValueError("no arms to compare")
        arms = ratios_to_arms(list(ratios))
    elif isinstance(arms, str):
        arms = parse_arms(arms)
    arms = list(arms)
    if not arms:
        raise ValueError("no arms to compare")
    width = float(bin_width if bin_width is not None else cfg.eval.bin_width)
    pools = {arm.label: filtered_synthetic if arm.kind == "synthetic-filtered" else synthetic for arm in arms}
    for arm in arms:
        if arm.synthetic and pools[arm.label] is None:
            what = "filtered synthetic" if arm.kind == "synthetic-filtered" else "synthetic"
            raise ValueError(f"arm {arm.label!r} needs a {what} cohort, and none was given")
    if cfg.train.epoch_size != "real":
        logger.info(
            "comparison: train.epoch_size = real for every arm (the same optimiser steps in all arms)"
        )
    memo: dict[str, np.ndarray] = {}
    frames = []
    for arm in arms:
        augment = cfg.data.augment or arm.kind == "oversample"
        if augment and not cfg.data.augment:
            logger.warning(
                "arm oversample: random flips and shifts switched on so that repeated scans differ; the other "
                "arms train without them (set data.augment: true to give every arm the same augmentation)"
            )
        for k in range(n_seeds):
            seed = cfg.train.seed + k
            run_cfg = replace(
                cfg,
                data={"synthetic_ratio": float(arm.ratio), "augment": augment},
                train={"seed": seed, "epoch_size": "real"},
            )
            data = prepare_data(real, run_cfg.data, synthetic=pools[arm.label], test=test, memo=memo)
            train_ages = data.table[keys.AGE].to_numpy(float)[data.indices("train")]
            weights = (
                inverse_frequency_weights(train_ages, width)
                if arm.kind in ("oversample", "reweight")
                else None
            )
            logger.info("comparison: arm %s, seed %d", arm.label, seed)
            result = train(
                run_cfg,
                data,
                out_dir / arm.label.replace(":", "-") / f"seed-{seed}",
                progress=progress,
                draw_weights=weights if arm.kind == "oversample" else None,
                loss_weights=weights if arm.kind == "reweight" else None,
            )
            pred = result.predictions
            rows = pred[(pred[keys.SPLIT] == "test") & (pred[SOURCE] == "real")].drop(
                columns=[keys.SPLIT, SOURCE]
            )
            frames.append(rows.assign(arm=arm.label, ratio=float(arm.ratio), seed=seed))
    predictions = pd.concat(frames, ignore_index=True)
    return compare_predictions(
        predictions, out_dir, bin_width=width, n_boot=cfg.eval.n_boot, seed=cfg.eval.seed
    )


def _with_arm(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions of the older layout (``ratio`` only) get their ``arm`` column."""
    if "arm" in predictions.columns:
        return predictions
    labels = {
        r: a.label
        for r, a in zip(predictions["ratio"].unique(), ratios_to_arms(predictions["ratio"].unique()))
    }
    return predictions.assign(arm=predictions["ratio"].map(labels))


def paired_errors(predictions: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Absolute errors per scan and arm, averaged over seeds, one row per scan with one column per arm.

    The arms are joined on (subject_id, session_id); row order plays no part.

    Returns:
        Index (subject_id, session_id); columns ``age`` and one column per arm.

    Raises:
        ValueError: a scan listed twice for one arm and seed, arms evaluated on different scans or with different
            seeds, or a scan whose age differs between arms; the message names the arms and scans.
    """
    frame = _with_arm(predictions)
    arms = list(dict.fromkeys(frame["arm"])) if arms is None else list(arms)
    age = _scan_ages(frame, arms)
    frame = frame.assign(abs_error=(frame["pred"] - frame[keys.AGE]).abs())
    wide = frame.pivot_table(index=SCAN, columns="arm", values="abs_error", aggfunc="mean")[arms]
    wide.columns.name = None
    return pd.concat([age, wide], axis=1).sort_index()


def _scan_ages(frame: pd.DataFrame, arms: list[str]) -> pd.Series:
    """The age of every scan, sorted by scan, once the checks of :func:`paired_errors` pass."""
    dup = frame.duplicated(["arm", "seed", *SCAN], keep=False)
    if dup.any():
        rows = (
            frame.loc[dup, ["arm", "seed", *SCAN]].drop_duplicates().head(5).to_records(index=False).tolist()
        )
        raise ValueError(f"test predictions list a scan more than once for one arm and seed: {rows}")
    scans = {arm: set(map(tuple, frame.loc[frame["arm"] == arm, SCAN].to_numpy().tolist())) for arm in arms}
    seeds = {arm: sorted(frame.loc[frame["arm"] == arm, "seed"].unique().tolist()) for arm in arms}
    first = arms[0]
    for arm in arms[1:]:
        if scans[arm] != scans[first]:
            missing = sorted(scans[first] - scans[arm])
            extra = sorted(scans[arm] - scans[first])
            raise ValueError(
                f"arms {first!r} and {arm!r} were evaluated on different test scans: {len(missing)} scan(s) of "
                f"{first!r} are missing from {arm!r} (e.g. {missing[:5]}) and {len(extra)} are only in {arm!r} "
                f"(e.g. {extra[:5]}); paired comparisons need the same (subject_id, session_id) set"
            )
        if seeds[arm] != seeds[first]:
            raise ValueError(
                f"arms {first!r} and {arm!r} were trained with different seeds: {seeds[first]} vs {seeds[arm]}"
            )
    ages = frame.groupby(SCAN)[keys.AGE].nunique()
    if (ages > 1).any():
        raise ValueError(f"scans with different ages in different arms: {ages[ages > 1].index[:5].tolist()}")
    return frame.groupby(SCAN)[keys.AGE].first()


def _sd(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def seed_scan_errors(
    predictions: pd.DataFrame, arms: Sequence[str], scans: pd.Index
) -> dict[str, np.ndarray]:
    """Absolute errors of each arm as a ``(seeds, scans)`` matrix, seeds ascending, columns in the order of ``scans``.

    Raises:
        ValueError: a scan of ``scans`` has no prediction for some seed of an arm.
    """
    errors = predictions.assign(abs_error=(predictions["pred"] - predictions[keys.AGE]).abs())
    # One pivot for every arm: seeds × (arm, subject_id, session_id).
    table = errors.pivot_table(index="seed", columns=["arm", *SCAN], values="abs_error", aggfunc="mean")
    matrices = {}
    for arm in arms:
        matrix = table[arm].sort_index().reindex(columns=scans)
        if matrix.isna().to_numpy().any():
            missing = matrix.columns[matrix.isna().any(axis=0)].tolist()[:5]
            raise ValueError(f"arm {arm!r}: some seeds have no prediction for scans {missing}")
        matrices[arm] = matrix.to_numpy(np.float64)
    return matrices


def arm_statistics(
    predictions: pd.DataFrame,
    *,
    baseline: str | None = None,
    bin_width: float = 10.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per arm and age bin (``all`` first): MAE with a 95 % CI and its seed SD, the paired difference against
    ``baseline`` with its CI, seed SD, bootstrap p (at least ``1 / n_boot``), Holm-adjusted p over the bins, and
    verdict.

    Training seeds and test subjects are both random factors: every CI and p value comes from
    :func:`bap.resampling.crossed_bootstrap`, which resamples seeds (paired across arms: seed ``k`` of every arm shares
    its split and initialisation) and subjects. The seed SD is the standard deviation over seeds of the per-seed MAE
    (or of the per-seed difference). The Wilcoxon p compares seed-averaged errors scan by scan.
    """
    frame = _with_arm(predictions)
    arms = list(dict.fromkeys(frame["arm"]))
    baseline = baseline if baseline is not None else ("real" if "real" in arms else arms[0])
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not among the arms {arms}")
    scan_ages = _scan_ages(frame, [baseline, *[a for a in arms if a != baseline]])
    subjects = scan_ages.index.get_level_values(keys.SUBJECT_ID).to_numpy()
    ages = scan_ages.to_numpy(float)
    bins = age_bin_labels(ages, bin_width)
    labels = ["all", *sorted(set(bins), key=label_start)]
    errors = seed_scan_errors(frame, arms, scan_ages.index)
    ratios = frame.groupby("arm")["ratio"].first() if "ratio" in frame.columns else pd.Series(0.0, index=arms)
    rows = []
    n_subjects = {
        label: int(np.unique(subjects if label == "all" else subjects[bins == label]).size)
        for label in labels
    }
    for arm in arms:
        for label in labels:
            mask = np.ones(ages.size, bool) if label == "all" else bins == label
            groups = subjects[mask]
            err = errors[arm][:, mask]
            ci = resampling.crossed_bootstrap(err, groups=groups, n_boot=n_boot, seed=seed)
            row = {
                "arm": arm,
                "ratio": float(ratios.get(arm, 0.0)),
                "age_bin": label,
                "n": int(mask.sum()),
                "n_seeds": int(err.shape[0]),
                "mae_years": ci.estimate,
                "mae_low_years": ci.low,
                "mae_high_years": ci.high,
                "mae_seed_sd_years": _sd(err.mean(axis=1)),
            }
            if arm == baseline:
                row.update(diff_years=0.0, diff_low_years=0.0, diff_high_years=0.0, diff_seed_sd_years=0.0)
                row.update(p_bootstrap=1.0, p_wilcoxon=1.0)
            else:
                diff = err - errors[baseline][:, mask]
                paired = resampling.crossed_bootstrap(diff, groups=groups, n_boot=n_boot, seed=seed)
                row.update(
                    diff_years=paired.estimate,
                    diff_low_years=paired.low,
                    diff_high_years=paired.high,
                    diff_seed_sd_years=_sd(diff.mean(axis=1)),
                    p_bootstrap=paired.p_value,
                    p_wilcoxon=_wilcoxon(diff.mean(axis=0)),
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for arm in arms:
        if arm == baseline:
            continue
        rows_bins = (table["arm"] == arm) & (table["age_bin"] != "all")
        table.loc[rows_bins, "p_holm"] = holm(table.loc[rows_bins, "p_bootstrap"].to_numpy())
    table["verdict"] = [
        "baseline"
        if r.arm == baseline
        else verdict(
            r.diff_years,
            r.diff_low_years,
            r.diff_high_years,
            r.diff_seed_sd_years,
            r.p_bootstrap if r.age_bin == "all" else r.p_holm,
            n_subjects=n_subjects[r.age_bin],
            n_seeds=r.n_seeds,
        )
        for r in table.itertuples()
    ]
    return table


def _wilcoxon(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-scan differences (1 when all are 0 or fewer than 2 scans)."""
    if differences.size < 2 or np.allclose(differences, 0.0):
        return 1.0
    return float(stats.wilcoxon(differences).pvalue)


def compare_predictions(
    predictions: pd.DataFrame,
    out_dir: str | Path,
    *,
    bin_width: float = 10.0,
    n_boot: int = 1000,
    seed: int = 0,
    baseline: str | None = None,
) -> ComparisonResult:
    """Build the comparison tables and plot from long-format test predictions (see module docstring)."""
    out_dir = Path(out_dir)
    predictions = _with_arm(predictions)
    bins_frame = arm_statistics(predictions, baseline=baseline, bin_width=bin_width, n_boot=n_boot, seed=seed)
    summary = (
        bins_frame[bins_frame["age_bin"] == "all"].drop(columns=["age_bin", "p_holm"]).reset_index(drop=True)
    )
    corrected = (
        predictions.assign(err=(predictions["pred_corrected"] - predictions[keys.AGE]).abs())
        .groupby(["arm", *SCAN])["err"]
        .mean()
        .groupby("arm")
        .mean()
    )
    summary.insert(
        summary.columns.get_loc("mae_seed_sd_years"), "mae_corrected_years", summary["arm"].map(corrected)
    )
    summary = summary.rename(columns={"n": "n_test", "diff_years": "diff_vs_baseline_years"})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table_atomic(out_dir / "test_predictions.csv", predictions)
    write_table_atomic(out_dir / "comparison_bins.csv", bins_frame)
    write_table_atomic(out_dir / "comparison.csv", summary)
    write_text_atomic(out_dir / "comparison_bins.md", markdown_table(bins_frame))
    write_text_atomic(out_dir / "comparison.md", markdown_table(summary))
    plot_bins(bins_frame, out_dir / "comparison_bins.png")
    return ComparisonResult(out_dir, predictions, bins_frame, summary)
