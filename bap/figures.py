"""Figures of brain-age results, written to PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data.bins import label_start
from flowlet.data.io import atomic_path

__all__ = ["plot_bins"]


def plot_bins(
    bins: pd.DataFrame, path: str | Path, *, reference: pd.DataFrame | None = None, title: str | None = None
) -> Path:
    """Per-bin test MAE with 95 % CI bars, every arm on one axis (points slightly offset per arm).

    ``reference`` (optional; columns ``age_bin``, ``mae_years``, ``mae_low_years``, ``mae_high_years`` and
    ``label``) is drawn as a grey dashed line with its band, e.g. a ridge regression on true region volumes.
    """
    from flowlet.data.figures import pyplot

    plt = pyplot()

    per_bin = bins[bins["age_bin"] != "all"]
    labels = sorted(dict.fromkeys(per_bin["age_bin"]), key=label_start)
    arms = list(dict.fromkeys(per_bin["arm"]))
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 4, 4.2))
    x0 = np.arange(len(labels))
    if reference is not None and not reference.empty:
        ref = reference[reference["age_bin"] != "all"].set_index("age_bin").reindex(labels)
        ax.fill_between(x0, ref["mae_low_years"], ref["mae_high_years"], color="0.85", step=None, zorder=0)
        ax.plot(x0, ref["mae_years"], "--", color="0.4", label=str(reference["label"].iloc[0]), zorder=1)
    width = 0.6 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        rows = per_bin[per_bin["arm"] == arm].set_index("age_bin").reindex(labels)
        x = x0 + (i - (len(arms) - 1) / 2) * width
        err = np.vstack(
            [rows["mae_years"] - rows["mae_low_years"], rows["mae_high_years"] - rows["mae_years"]]
        )
        ax.errorbar(x, rows["mae_years"], yerr=err, fmt="o-", ms=4, capsize=2, lw=1, label=arm, zorder=2)
    ax.set_xticks(x0, labels)
    ax.set_xlabel("age bin (years)")
    ax.set_ylabel("test MAE (years), 95 % CI")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
