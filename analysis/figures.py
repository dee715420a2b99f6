"""PNG figures of the evaluation: volume-versus-age curves, privacy histograms, measured-versus-true volumes.

Every function draws one figure, writes it atomically and closes it; matplotlib is imported lazily with the
non-interactive Agg backend so that no display is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.metrics.trajectory import linear_fit
from flowlet.data.figures import pyplot
from flowlet.data.io import atomic_path
from flowlet.data.keys import AGE

__all__ = ["plot_privacy", "plot_trajectories", "plot_volume_agreement"]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return path


def plot_trajectories(
    sets: Mapping[str, pd.DataFrame],
    regions: Sequence[tuple[str, str]],
    path: str | os.PathLike,
    *,
    value: str = "volume_mm3",
) -> Path:
    """Volume-versus-age scatter and least-squares line of each set (e.g. real, synthetic), one panel per region.

    Args:
        sets: label → tidy volumetrics table with ``region``, ``tissue``, ``age`` and ``value``.
        regions: ``(region, tissue)`` pairs to draw.
        path: PNG destination.
        value: plotted column.
    """
    plt = pyplot()
    n = max(len(regions), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (region, tissue) in zip(axes[0], regions):
        for k, (label, table) in enumerate(sets.items()):
            part = table[(table["region"] == region) & (table["tissue"] == tissue)]
            colour = f"C{k}"
            ax.scatter(part[AGE], part[value] / 1000.0, s=10, alpha=0.6, color=colour, label=label)
            fit = linear_fit(part[AGE].to_numpy(), part[value].to_numpy())
            if np.isfinite(fit["slope"]):
                x = np.linspace(part[AGE].min(), part[AGE].max(), 50)
                ax.plot(
                    x,
                    (fit["intercept"] + fit["slope"] * x) / 1000.0,
                    color=colour,
                    label=f"{label}: {fit['slope']:+.3g} mm³/y",
                )
        ax.set_title(f"{region} ({tissue})")
        ax.set_xlabel("age (years)")
        ax.set_ylabel("volume (cm³)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_privacy(
    baseline: np.ndarray, synthetic: np.ndarray, threshold: float, path: str | os.PathLike
) -> Path:
    """Histograms of nearest-training-image correlations: held-out real (baseline) versus synthetic."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    values = np.concatenate([np.ravel(baseline), np.ravel(synthetic)])
    bins = np.linspace(float(values.min()), float(max(values.max(), threshold)) + 1e-6, 30)
    ax.hist(baseline, bins=bins, alpha=0.6, label="held-out real → train")
    ax.hist(synthetic, bins=bins, alpha=0.6, label="synthetic → train")
    ax.axvline(threshold, color="k", linestyle="--", label=f"flag threshold {threshold:.4f}")
    ax.set_xlabel("nearest-neighbour correlation")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_volume_agreement(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    truth: str = "volume_true_mm3",
    measured: str = "volume_mm3",
    panel: str = "structure",
) -> Path:
    """Measured versus true volume, one panel per structure, with the identity line and Pearson r."""
    plt = pyplot()
    groups = list(dict.fromkeys(table[panel]))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(3.8 * max(len(groups), 1), 3.6), squeeze=False)
    for ax, name in zip(axes[0], groups):
        part = table[table[panel] == name]
        x, y = part[truth].to_numpy() / 1000.0, part[measured].to_numpy() / 1000.0
        ax.scatter(x, y, s=10)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
        r = np.corrcoef(x, y)[0, 1] if x.size > 1 else np.nan
        ax.set_title(f"{name}: r = {r:.3f}")
        ax.set_xlabel("true (cm³)")
        ax.set_ylabel("measured (cm³)")
    return _save(fig, path)
