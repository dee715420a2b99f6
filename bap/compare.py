"""Real-only versus real+synthetic: train every ratio × seed on the same split and compare on the same test scans.

Every configuration shares the subject split (``data.split_seed``) and the list of training seeds, so the test
scans and the initialisations are paired across ratios. Per ratio, each test scan's absolute error is averaged over
seeds; MAE confidence intervals and the paired test (ratio vs the first ratio, usually 0 = real only) resample
subjects. Outputs in ``out_dir``::

    ratio-<r>/seed-<s>/...      one training run each (see :mod:`bap.train`)
    test_predictions.csv        ratio, seed, subject_id, session_id, age, pred, pred_corrected
    comparison_bins.csv/.md     overall and per-age-bin MAE with 95 % CIs for each ratio
    comparison.csv/.md          one row per ratio: MAE [CI], corrected MAE, seed SD, paired difference and p values
    comparison_bins.png         per-bin MAE by ratio
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bap import metrics
from bap.config import BapConfig, replace
from bap.data import SOURCE, prepare_data
from bap.train import train
from flowlet.data import keys
from flowlet.data.io import atomic_path, write_table_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["ComparisonResult", "compare_predictions", "markdown_table", "run_comparison"]


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
    ratios: Sequence[float],
    n_seeds: int = 1,
    synthetic: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    progress: bool = True,
) -> ComparisonResult:
    """Train every ``ratio`` with seeds ``cfg.train.seed + k`` (``k < n_seeds``) and compare them.

    Args:
        cfg: base configuration (its ``data.synthetic_ratio`` and ``train.seed`` are overridden per run).
        real: real cohort table.
        out_dir: output folder.
        ratios: synthetic ÷ real training ratios; the first is the baseline of the paired tests.
        n_seeds: number of training seeds per ratio.
        synthetic: synthetic cohort table (needed when a ratio is > 0).
        test: optional external test cohort.
        progress: progress bars.
    """
    out_dir = Path(out_dir)
    if not ratios:
        raise ValueError("no ratios to compare")
    memo: dict[str, np.ndarray] = {}
    frames = []
    for ratio in ratios:
        for k in range(n_seeds):
            seed = cfg.train.seed + k
            run_cfg = replace(cfg, data={"synthetic_ratio": float(ratio)}, train={"seed": seed})
            data = prepare_data(real, run_cfg.data, synthetic=synthetic, test=test, memo=memo)
            logger.info("comparison: ratio %g, seed %d", ratio, seed)
            result = train(run_cfg, data, out_dir / f"ratio-{ratio:g}" / f"seed-{seed}", progress=progress)
            pred = result.predictions
            rows = pred[(pred[keys.SPLIT] == "test") & (pred[SOURCE] == "real")].drop(
                columns=[keys.SPLIT, SOURCE]
            )
            frames.append(rows.assign(ratio=float(ratio), seed=seed))
    predictions = pd.concat(frames, ignore_index=True)
    return compare_predictions(
        predictions, out_dir, bin_width=cfg.eval.bin_width, n_boot=cfg.eval.n_boot, seed=cfg.eval.seed
    )


def _errors_by_ratio(predictions: pd.DataFrame) -> pd.DataFrame:
    frame = predictions.assign(
        abs_error=(predictions["pred"] - predictions[keys.AGE]).abs(),
        gap=predictions["pred"] - predictions[keys.AGE],
        abs_error_corrected=(predictions["pred_corrected"] - predictions[keys.AGE]).abs(),
    )
    scan = ["ratio", keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]
    means = frame.groupby(scan, sort=True)[["abs_error", "gap", "abs_error_corrected"]].mean().reset_index()
    counts = means.groupby("ratio").size()
    if counts.nunique() != 1:
        raise ValueError(f"ratios were evaluated on different test scans: {counts.to_dict()}")
    return means


def compare_predictions(
    predictions: pd.DataFrame,
    out_dir: str | Path,
    *,
    bin_width: float = 10.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> ComparisonResult:
    """Build the comparison tables and plot from long-format test predictions (see module docstring)."""
    out_dir = Path(out_dir)
    errors = _errors_by_ratio(predictions)
    ratios = list(dict.fromkeys(predictions["ratio"]))
    base = errors[errors["ratio"] == ratios[0]].reset_index(drop=True)
    bins, rows = [], []
    for ratio in ratios:
        cur = errors[errors["ratio"] == ratio].reset_index(drop=True)
        groups = cur[keys.SUBJECT_ID].to_numpy()
        table = metrics.per_bin_table(
            cur[keys.AGE],
            cur["abs_error"],
            gap=cur["gap"],
            groups=groups,
            bin_width=bin_width,
            n_boot=n_boot,
            seed=seed,
        )
        bins.append(table.assign(ratio=ratio))
        seed_mae = (
            predictions[predictions["ratio"] == ratio]
            .groupby("seed")
            .apply(lambda g: metrics.mae(g[keys.AGE], g["pred"]), include_groups=False)
        )
        paired = metrics.paired_error_test(
            base["abs_error"], cur["abs_error"], groups=groups, n_boot=n_boot, seed=seed
        )
        overall = table.iloc[0]
        rows.append(
            {
                "ratio": ratio,
                "n_test": int(overall["n"]),
                "n_seeds": int(seed_mae.size),
                "mae_years": overall["mae_years"],
                "mae_low_years": overall["mae_low_years"],
                "mae_high_years": overall["mae_high_years"],
                "mae_corrected_years": float(cur["abs_error_corrected"].mean()),
                "mae_seed_sd_years": float(seed_mae.std(ddof=1)) if seed_mae.size > 1 else float("nan"),
                "diff_vs_baseline_years": paired.diff.estimate,
                "diff_low_years": paired.diff.low,
                "diff_high_years": paired.diff.high,
                "p_bootstrap": paired.p_bootstrap,
                "p_wilcoxon": paired.p_wilcoxon,
            }
        )
    bins_frame = pd.concat(bins, ignore_index=True)
    bins_frame = bins_frame[["ratio", *[c for c in bins_frame.columns if c != "ratio"]]]
    summary = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table_atomic(out_dir / "test_predictions.csv", predictions)
    write_table_atomic(out_dir / "comparison_bins.csv", bins_frame)
    write_table_atomic(out_dir / "comparison.csv", summary)
    write_text_atomic(out_dir / "comparison_bins.md", markdown_table(bins_frame))
    write_text_atomic(out_dir / "comparison.md", markdown_table(summary))
    _plot_bins(bins_frame, out_dir / "comparison_bins.png")
    return ComparisonResult(out_dir, predictions, bins_frame, summary)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """Render a DataFrame as a GitHub Markdown table (floats with ``digits`` decimals)."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _plot_bins(bins: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_bin = bins[bins["age_bin"] != "all"]
    labels = list(dict.fromkeys(per_bin["age_bin"]))
    ratios = list(dict.fromkeys(per_bin["ratio"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 4))
    width = 0.8 / max(len(ratios), 1)
    for i, ratio in enumerate(ratios):
        rows = per_bin[per_bin["ratio"] == ratio].set_index("age_bin").reindex(labels)
        x = np.arange(len(labels)) + (i - (len(ratios) - 1) / 2) * width
        err = np.vstack(
            [rows["mae_years"] - rows["mae_low_years"], rows["mae_high_years"] - rows["mae_years"]]
        )
        ax.bar(x, rows["mae_years"], width, yerr=err, capsize=2, label=f"ratio {ratio:g}")
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_xlabel("age bin (years)")
    ax.set_ylabel("test MAE (years), 95 % CI")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
