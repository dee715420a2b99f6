"""The settings of ``flowlet-prep``: grids, template, N4 and registration schedules, QC limits.

Every setting is written into each scan's sidecar, so a changed setting re-runs a scan (see
:func:`flowlet.data.prep.subject.verify_scan`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from flowlet.data.grid import Grid, mni_grid
from flowlet.data.prep.measures import QcLimits

__all__ = ["SPACE_LABELS", "PrepConfig"]

#: BIDS ``space-`` label of each registration template (the grid is the FSL MNI152 bounding box).
SPACE_LABELS: dict[str, str] = {
    "icbm152-t1": "MNI152NLin2009aSym",
    "mni152-t1-brain": "MNI152NLin6Asym",
    "icbm152-2009c-brain": "MNI152NLin2009cAsym",
}


@dataclass(frozen=True)
class PrepConfig:
    """Settings of ``flowlet-prep`` (written into every sidecar; a changed setting re-runs a scan).

    Attributes:
        voxel_size: output grid in mm (``mni_grid``; 2 gives the official 91×109×91).
        template: registration template, one of :data:`SPACE_LABELS`.
        n4: run N4 bias-field correction.
        n4_iterations: N4 iterations per fitting level.
        n4_shrink: N4 down-sampling factor.
        affine_iterations: registration iterations per level, coarse to fine.
        affine_shrink: registration shrink factors per level.
        affine_smoothing: registration smoothing sigmas (voxels) per level.
        sampling_rate: fraction of template voxels sampled by the metric.
        metric_margin_mm: the metric is evaluated within the template brain mask dilated by this margin.
        brain_extraction: strip the head before registering (False registers the whole image to the brain
            template, which is right only for input that is already skull-stripped: a raw head is squeezed into
            the brain box or lands beside it).
        extraction_passes: brain-to-brain registrations after the first fit to the roughly stripped head, each
            stripping the head with the template mask carried back by the previous fit.
        mask_margin_mm: half-width of the border band where the brain mask follows the subject's intensities
            (0: the registered template brain mask, the most accurate on real heads).
        registration_voxel_size: the affine is fitted to the template on a grid no coarser than this (mm), whatever
            the output grid: a 4 mm template is too coarse for the extraction passes (at 4 mm, 8 of the 30
            ``ixi-dev`` heads came out squeezed or shifted, all rejected by QC; the same scans register at 2 mm).
        seed: registration sampling seed, at least 1 (ANTs seeds from the clock when given 0).
        qc: pass/fail limits; a scan that breaks one is rejected.
    """

    voxel_size: float = 2.0
    template: str = "icbm152-t1"
    n4: bool = True
    n4_iterations: tuple[int, ...] = (50, 50, 30, 20)
    n4_shrink: int = 4
    affine_iterations: tuple[int, ...] = (1000, 500, 250, 100)
    affine_shrink: tuple[int, ...] = (6, 4, 2, 1)
    affine_smoothing: tuple[float, ...] = (3.0, 2.0, 1.0, 0.0)
    sampling_rate: float = 0.25
    metric_margin_mm: float = 6.0
    brain_extraction: bool = True
    extraction_passes: int = 1
    mask_margin_mm: float = 0.0
    registration_voxel_size: float = 2.0
    seed: int = 1
    qc: QcLimits = dataclasses.field(default_factory=QcLimits)

    def __post_init__(self) -> None:
        if self.template not in SPACE_LABELS:
            raise ValueError(f"unknown template '{self.template}'; choose from {sorted(SPACE_LABELS)}")
        if not self.voxel_size > 0 or not self.registration_voxel_size > 0:
            raise ValueError(
                "voxel_size and registration_voxel_size must be positive numbers of mm, got "
                f"{self.voxel_size!r} and {self.registration_voxel_size!r}"
            )
        levels = {len(self.affine_iterations), len(self.affine_shrink), len(self.affine_smoothing)}
        if len(levels) != 1:
            raise ValueError(
                "affine_iterations, affine_shrink and affine_smoothing must have the same length"
            )
        if int(self.seed) < 1:
            raise ValueError(
                f"seed must be a positive integer (0 means 'from the clock' to ANTs), got {self.seed}"
            )
        if int(self.extraction_passes) < 0 or self.mask_margin_mm < 0:
            raise ValueError("extraction_passes and mask_margin_mm must not be negative")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")

    @property
    def grid(self) -> Grid:
        return mni_grid(self.voxel_size)

    @property
    def registration_grid(self) -> Grid:
        """The template grid the affine is fitted on: the output grid, or a finer one (``registration_voxel_size``)."""
        return mni_grid(min(self.voxel_size, self.registration_voxel_size))

    @property
    def space(self) -> str:
        return SPACE_LABELS[self.template]

    @property
    def resolution_label(self) -> str:
        """``res-`` entity value: ``2`` for 2 mm, ``1p5`` for 1.5 mm."""
        return f"{self.voxel_size:g}".replace(".", "p")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))
