"""The augmentation's age histograms: real, synthetic and combined against the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowlet.augment.plan import AugmentationPlan
from flowlet.data.io import atomic_path


def plot_histograms(plan: AugmentationPlan, path: str | Path) -> Path:
    """Write a PNG with the real, synthetic and combined counts per bin and the target level."""
    from flowlet.data.figures import pyplot

    plt = pyplot()

    table = plan.table
    x = np.arange(len(table))
    target = table["target_proportion"].to_numpy() * table["combined_count"].sum()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(table)), 3.6), dpi=110)
    ax.bar(x, table["real_count"], color="#3b6ea5", label="real")
    ax.bar(x, table["synthetic_count"], bottom=table["real_count"], color="#e39b3a", label="synthetic")
    ax.step(
        np.append(x, x[-1] + 1) - 0.5,
        np.append(target, target[-1]),
        where="post",
        color="k",
        lw=1.2,
        ls="--",
        label="target",
    )
    ax.set_xticks(x, table["bin"], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("age bin (years)")
    ax.set_ylabel("brains")
    ax.set_title(f"age histogram: real + synthetic vs target ({plan.target})", fontsize=10)
    top = max(float(np.max(target)), float(table["combined_count"].max()), 1.0)
    ax.set_ylim(0, 1.3 * top)  # room above the bars for the target line and the legend
    ax.legend(fontsize=8, ncols=3, loc="upper center")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
