"""The figures of the study report, drawn off screen and returned as PNG bytes."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.bins import width_edges
from flowlet.data.figures import pyplot

__all__ = ["montage", "split_histogram"]


def _png(fig) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def split_histogram(split: pd.DataFrame, bin_width: float) -> bytes:
    plt = pyplot()
    edges = width_edges(split[keys.AGE].to_numpy(float), bin_width)
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

    plt = pyplot()
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
