"""Evaluation tables in the layout of the paper (per-region and global, mean ± sd), as CSV, Markdown and LaTeX.

Builders return tidy or wide DataFrames; :func:`write_table` writes one DataFrame in the three formats. Markdown
and LaTeX are rendered here (no extra dependency), with LaTeX special characters escaped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.metrics.roi import ROI_METRICS, summarise_roi
from flowlet.data.io import write_table_atomic, write_text_atomic
from flowlet.data.markdown import markdown_table

__all__ = [
    "format_mean_sd",
    "global_roi_table",
    "local_roi_table",
    "per_region_roi_table",
    "region_volume_table",
    "to_latex",
    "to_markdown",
    "write_table",
]

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def format_mean_sd(mean: float, sd: float, *, digits: int = 3) -> str:
    """``"m ± s"`` with ``digits`` significant digits (``"n/a"`` for NaN means)."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    m = f"{mean:.{digits}g}"
    return m if sd is None or not np.isfinite(sd) else f"{m} ± {sd:.{digits}g}"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index not included)."""
    return markdown_table(frame, cell=_cell)


def to_latex(frame: pd.DataFrame, *, caption: str = "", label: str = "") -> str:
    """A ``booktabs`` LaTeX table of ``frame`` with escaped text."""
    header = " & ".join(_escape(str(c)) for c in frame.columns) + r" \\"
    body = [" & ".join(_escape(_cell(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{{'l' * len(frame.columns)}}}",
        r"\toprule",
        header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def _escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def write_table(
    frame: pd.DataFrame, folder: str | os.PathLike, stem: str, *, caption: str = ""
) -> list[Path]:
    """Write ``frame`` as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` in ``folder`` (atomically).

    Returns:
        The three paths.
    """
    folder = Path(folder)
    paths = [folder / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    write_table_atomic(paths[0], frame)
    write_text_atomic(paths[1], (f"**{caption}**\n\n" if caption else "") + to_markdown(frame))
    write_text_atomic(paths[2], to_latex(frame, caption=caption, label=f"tab:{stem}"))
    return paths


def region_volume_table(
    volumes: pd.DataFrame, *, tissues: Sequence[str] = ("gm", "wm", "csf", "all"), digits: int = 4
) -> pd.DataFrame:
    """Per-region mean ± sd of ``volume_mm3`` across subjects, one column per tissue.

    Args:
        volumes: tidy volumetrics table (``region``, ``tissue``, ``volume_mm3``, one row per subject × region × tissue).
        tissues: tissue columns, in order.
        digits: significant digits.

    Returns:
        ``region`` then ``<tissue>_volume_mm3`` columns holding ``"mean ± sd"`` strings.
    """
    stats = volumes.groupby(["region", "tissue"], sort=False)["volume_mm3"].agg(["mean", "std"]).reset_index()
    stats["text"] = [format_mean_sd(m, s, digits=digits) for m, s in zip(stats["mean"], stats["std"])]
    wide = stats.pivot(index="region", columns="tissue", values="text")
    order = list(dict.fromkeys(volumes["region"]))
    wide = wide.reindex(index=order, columns=[t for t in tissues if t in wide.columns])
    wide.columns = [f"{t}_volume_mm3" for t in wide.columns]
    return wide.reset_index()


def global_roi_table(
    rows_by_model: Mapping[str, pd.DataFrame],
    *,
    metrics: Sequence[str] = ROI_METRICS,
    scope: str = "global",
    region: str = "region",
    digits: int = 3,
) -> pd.DataFrame:
    """The paper's GLOBAL (or LOCAL) ROI table: one row per model, one ``mean ± sd`` column per metric.

    Args:
        rows_by_model: model name → per pair × region metric rows (:func:`analysis.metrics.roi_pair_metrics`
            outputs with a ``region`` column).
        metrics: metric columns.
        scope: ``"global"`` (over all pair × region rows) or ``"local"`` (over per-region means).
        region: region column.
        digits: significant digits.
    """
    out = []
    for model, rows in rows_by_model.items():
        summary = summarise_roi(rows, region=region, metrics=metrics)
        summary = summary[summary["scope"] == scope].set_index("metric")
        out.append(
            {
                "model": model,
                **{
                    m: format_mean_sd(summary.loc[m, "mean"], summary.loc[m, "sd"], digits=digits)
                    for m in metrics
                },
            }
        )
    return pd.DataFrame(out, columns=["model", *metrics])


def local_roi_table(rows_by_model: Mapping[str, pd.DataFrame], **kwargs) -> pd.DataFrame:
    """:func:`global_roi_table` with ``scope="local"`` (mean ± sd over per-region means)."""
    return global_roi_table(rows_by_model, scope="local", **kwargs)


def per_region_roi_table(
    rows: pd.DataFrame,
    *,
    keys: Sequence[str] = ("region",),
    metrics: Sequence[str] = ROI_METRICS,
    digits: int = 3,
) -> pd.DataFrame:
    """Per-region ``mean ± sd`` over pairs of every ROI metric (NaN pairs skipped), plus the pair count."""
    grouped = rows.groupby(list(keys), sort=False)
    out = grouped.size().rename("n_pairs").reset_index()
    for metric in metrics:
        agg = grouped[metric].agg(["mean", "std"]).reset_index(drop=True)
        out[metric] = [format_mean_sd(m, s, digits=digits) for m, s in zip(agg["mean"], agg["std"])]
    return out
