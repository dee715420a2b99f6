"""Tissue maps: the CSF/GM/WM probabilities of one image, how an image gets onto a grid, and maps from labels.

:class:`TissueMaps` is what every segmenter returns (:class:`analysis.segmentation.TissueSegmenter` from a T1w
image, :class:`LabelTissueSegmenter` from a tissue label image) and what the region volumes are computed from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from flowlet.data.nifti import Volume, voxel_volume_mm3

if TYPE_CHECKING:
    from flowlet.data.grid import Grid

logger = logging.getLogger(__name__)

__all__ = ["TISSUES", "LabelTissueSegmenter", "TissueMaps", "on_grid"]

#: Tissue classes, in the order of hard labels 1, 2, 3.
TISSUES: tuple[str, ...] = ("csf", "gm", "wm")


@dataclass(frozen=True)
class TissueMaps:
    """Tissue probability maps of one image.

    Attributes:
        probabilities: ``{"csf", "gm", "wm"}`` → ``(X, Y, Z)`` float32 in [0, 1] (their sum is the probability of
            brain tissue, ≤ 1; 0 outside the mask).
        mask: ``(X, Y, Z)`` bool brain mask.
        affine: ``(4, 4)`` voxel-to-world matrix of the maps.
        intensity: ``(X, Y, Z)`` float32 image the maps were computed from (on the same grid).
        means: fitted class means (image units), by class (background, csf, gm, wm); empty for maps read from
            labels (:class:`LabelTissueSegmenter`).
        variances: fitted class variances, by class; empty when ``means`` is.
        log_bias: ``(X, Y, Z)`` estimated log multiplicative bias field (0 outside the mask), if any.
        pve: ``{"csf", "gm", "wm"}`` → ``(X, Y, Z)`` linear partial-volume fractions (:meth:`as_pve`), where the
            segmenter models mixed voxels and was asked for them (``TissueSegmenter(pve=True)``); else None.
    """

    probabilities: dict[str, np.ndarray]
    mask: np.ndarray
    affine: np.ndarray
    intensity: np.ndarray
    means: dict[str, float] = field(default_factory=dict)
    variances: dict[str, float] = field(default_factory=dict)
    log_bias: np.ndarray | None = None
    pve: dict[str, np.ndarray] | None = None

    def class_means(self) -> np.ndarray:
        """``(4,)`` means of background, CSF, GM, WM (for starting another EM)."""
        return np.array([self.means[k] for k in ("background", *TISSUES)])

    def class_variances(self) -> np.ndarray:
        """``(4,)`` variances of background, CSF, GM, WM."""
        return np.array([self.variances[k] for k in ("background", *TISSUES)])

    @property
    def voxel_volume_mm3(self) -> float:
        return voxel_volume_mm3(self.affine)

    def hard_labels(self) -> np.ndarray:
        """``(X, Y, Z)`` uint8: 0 where background is most likely (or outside the mask), else 1 + argmax over
        :data:`TISSUES`."""
        stack = np.stack([self.probabilities[t] for t in TISSUES])
        background = 1.0 - stack.sum(0)
        best = stack.argmax(0)
        brain = self.mask & (np.take_along_axis(stack, best[None], 0)[0] > background)
        return np.where(brain, best + 1, 0).astype(np.uint8)

    def as_labels(self) -> TissueMaps:
        """The same maps with every voxel given wholly to its most likely class (:meth:`hard_labels`).

        Volumes then become voxel counts × voxel volume, as in label-based tools (FreeSurfer, MUSE/DLMUSE):
        a voxel that is 60 % GM and 40 % CSF counts as one GM voxel instead of 0.6.
        """
        hard = self.hard_labels()
        return replace(
            self, probabilities={t: (hard == k + 1).astype(np.float32) for k, t in enumerate(TISSUES)}
        )

    def as_pve(self) -> TissueMaps:
        """The same maps with the linear partial-volume fractions as probabilities.

        A voxel whose most likely class is a mixture of two adjacent classes (CSF/GM, GM/WM, background/CSF)
        is split between them in proportion to where its bias-corrected intensity lies between their means
        (Santago & Gage 1993, as in FSL FAST); other voxels keep their expected fractions.
        """
        if self.pve is None:
            raise ValueError(
                "these tissue maps have no partial-volume fractions (a segmenter with pve=True, "
                "partial_volume=True and method='gmm' makes them); use volumes 'fractions' or 'labels'"
            )
        return replace(self, probabilities=dict(self.pve), pve=None)

    def volumes_mm3(self) -> dict[str, float]:
        """Total volume of each tissue: Σ probability × voxel volume."""
        return {
            t: float(self.probabilities[t].sum(dtype=np.float64) * self.voxel_volume_mm3) for t in TISSUES
        }


def on_grid(volume: Volume, grid: Grid, *, interpolation: str = "linear") -> Volume:
    """Return ``volume`` on ``grid``, resampling (and logging that it did) when it is not already there.

    Args:
        volume: the image.
        grid: a :class:`flowlet.data.grid.Grid`.
        interpolation: ``"linear"`` for intensities, ``"nearest"`` for labels.
    """
    from flowlet.data.grid import resample_to_grid, same_grid

    if same_grid(volume.affine, volume.shape, grid.affine, grid.shape):
        return volume
    logger.warning(
        "%s: image grid %s differs from the atlas/template grid %s; resampling (%s) onto it",
        volume.path or "image",
        volume.shape,
        grid.shape,
        interpolation,
    )
    return resample_to_grid(volume, grid, interpolation=interpolation)


class LabelTissueSegmenter:
    """Tissue maps from a discrete tissue label image (ground truth, or an external segmentation).

    Args:
        mapping: tissue → label values, e.g. ``{"csf": [1], "gm": [2], "wm": [3]}``.
    """

    #: Label images must be resampled with nearest-neighbour interpolation.
    interpolation = "nearest"

    def __init__(self, mapping: dict[str, list[int]] | None = None) -> None:
        self.mapping = mapping or {"csf": [1], "gm": [2], "wm": [3]}

    def fit(self, X=None, y=None) -> LabelTissueSegmenter:
        unknown = sorted(set(self.mapping) - set(TISSUES))
        if unknown:
            raise ValueError(f"mapping: unknown tissue(s) {unknown}; choose from {list(TISSUES)}")
        self.grid_ = None
        return self

    def transform(self, volume: Volume) -> TissueMaps:
        """One-hot tissue maps of the label image ``volume`` (its own grid)."""
        labels = np.rint(np.asarray(volume.data)).astype(np.int64)
        maps = {t: np.isin(labels, self.mapping.get(t, [])).astype(np.float32) for t in TISSUES}
        mask = np.any(np.stack(list(maps.values())) > 0, axis=0)
        return TissueMaps(
            probabilities=maps,
            mask=mask,
            affine=np.asarray(volume.affine, np.float64),
            intensity=np.asarray(volume.data, np.float32),
        )
