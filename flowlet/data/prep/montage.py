"""QC pictures: one three-plane montage per scan (head with the brain mask outlined) and a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowlet.data.figures import pyplot
from flowlet.data.io import atomic_path

__all__ = ["write_contact_sheet", "write_scan_montage"]

_COLUMNS = 6


def _slices(data: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    x, y, z = centre
    return [data[x, :, :], data[:, y, :], data[:, :, z]]


def write_scan_montage(path: Path, head: np.ndarray, mask: np.ndarray, title: str, *, failed: bool) -> Path:
    """Sagittal, coronal and axial slices through the mask's centre of the head on the template grid, with the
    brain mask outlined (green when the scan passed QC, red when it did not).

    Args:
        path: PNG to write (atomically).
        head: ``(X, Y, Z)`` the bias-corrected head resampled onto the grid (not masked, so that skull left
            inside the mask or brain cut off by it shows).
        mask: ``(X, Y, Z)`` boolean brain mask on the grid.
        title: label printed above the slices (subject, QC verdict).
        failed: draw the outline and title in red.
    """
    plt = pyplot()
    head = np.asarray(head, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    centre = (
        [round(float(c)) for c in np.argwhere(mask).mean(axis=0)]
        if mask.any()
        else [s // 2 for s in head.shape]
    )
    positive = head[head > 0]
    vmax = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    colour = "red" if failed else "lime"
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax, image, outline in zip(axes, _slices(head, centre), _slices(mask, centre)):
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        if outline.any() and not outline.all():
            ax.contour(outline.T.astype(float), levels=[0.5], colors=colour, linewidths=0.8, origin="lower")
        ax.set_axis_off()
    fig.suptitle(title, fontsize=8, color="red" if failed else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def write_contact_sheet(path: Path, montages: Sequence[Path], titles: Sequence[str]) -> Path | None:
    """All per-scan montages on one page (six per row), for a first look at a whole run; None when empty."""
    if not montages:
        return None
    plt = pyplot()
    rows = -(-len(montages) // _COLUMNS)
    fig, axes = plt.subplots(rows, _COLUMNS, figsize=(3.2 * _COLUMNS, 1.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, montage, title in zip(axes.ravel(), montages, titles):
        ax.imshow(plt.imread(str(montage)))
        ax.set_title(title, fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
