"""Register one scan onto the MNI grid and score the registration; no files are touched.

N4 bias correction inside a head mask → brain extraction by registration of the packaged brain template
(intensity brain mask, template mask carried back) → brain-to-brain affine → resampling onto the MNI grid → brain
mask → QC measures (see ``docs/prep.md`` for their meaning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowlet.data.grid import Grid, resample_array
from flowlet.data.nifti import voxel_volume_mm3
from flowlet.data.prep import ants_backend
from flowlet.data.prep.config import PrepConfig
from flowlet.data.prep.measures import (
    dice,
    head_mask,
    intensity_brain_mask,
    mutual_information,
    normalized_cross_correlation,
    refine_brain_mask,
    scale_factors,
)

__all__ = ["RegisteredScan", "register_scan", "scan_measures", "template_mask_in_native"]


def _template_inputs(
    config: PrepConfig, grid: Grid | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template, its brain mask and the grid affine, on ``grid`` (default the output grid)."""
    from flowlet.data.templates import brain_mask, load_template

    grid = grid or config.grid
    return np.asarray(load_template(config.template, grid).data), np.asarray(brain_mask(grid)), grid.affine


@dataclass(frozen=True)
class RegisteredScan:
    """A scan on the MNI grid.

    Attributes:
        image: ``config.grid.shape`` float32, bias-corrected, zero outside the brain.
        mask: ``config.grid.shape`` boolean brain mask.
        transform: ``(4, 4)`` map from template world to subject world (mm, RAS).
        qc: QC measures (see :func:`flowlet.data.prep.qc.qc_table`).
        moved: ``config.grid.shape`` float32 bias-corrected head on the grid (before masking), for the montage.
    """

    image: np.ndarray
    mask: np.ndarray
    transform: np.ndarray
    qc: dict[str, float]
    moved: np.ndarray | None = None


def _native_grid(data: np.ndarray, affine: np.ndarray) -> Grid:
    return Grid(tuple(int(n) for n in data.shape[:3]), np.asarray(affine, dtype=np.float64))


def template_mask_in_native(
    prior: np.ndarray, grid_affine: np.ndarray, transform: np.ndarray, data: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    """The template brain mask carried into the subject's scanner grid by a template → subject transform."""
    carried = resample_array(prior.astype(np.float32), transform @ grid_affine, _native_grid(data, affine))
    return carried > 0.5


def register_scan(data: np.ndarray, affine: np.ndarray, config: PrepConfig) -> RegisteredScan:
    """Bias-correct, brain-extract and register an image (RAS) and put it on the MNI grid; no files are touched.

    Brain extraction by template registration, in three steps:

    1. a rough brain mask from the subject's intensities (:func:`intensity_brain_mask`: tissue eroded off the
       skull, the largest piece grown back) and an affine fit of the brain template to that roughly stripped head;
    2. the template brain mask carried back into the scanner grid by that fit, dilated by one voxel, strips the
       head again, now in the template's shape;
    3. the brain-to-brain affine of the template to this stripped brain (all levels): the final transform.

    The brain mask on the grid is the template brain mask, adjusted at its border to the subject's intensities
    when ``config.mask_margin_mm`` > 0.

    Args:
        data: ``(X, Y, Z)`` raw intensities.
        affine: ``(4, 4)`` RAS affine.
        config: settings.

    Returns:
        :class:`RegisteredScan` on ``config.grid``.
    """
    reg_grid = config.registration_grid
    template, prior, grid_affine = _template_inputs(config, reg_grid)
    data = np.clip(np.asarray(data, dtype=np.float32), 0, None)
    head = head_mask(data)
    if config.n4:
        field = ants_backend.n4_bias_field(
            data, affine, head, iterations=config.n4_iterations, shrink=config.n4_shrink
        )
        data = data / np.maximum(field, np.float32(1e-3))
    rough = intensity_brain_mask(data, head)
    if not rough.any():
        raise ValueError("no brain-like tissue found (the image is empty or has no contrast)")
    margin = max(1, round(config.metric_margin_mm / min(reg_grid.voxel_sizes)))
    fixed_mask = ndimage.binary_dilation(prior, iterations=margin)

    def fit(moving: np.ndarray, levels: int) -> np.ndarray:
        return ants_backend.register_affine(
            template,
            grid_affine,
            moving,
            affine,
            fixed_mask=fixed_mask,
            iterations=config.affine_iterations[:levels],
            shrink=config.affine_shrink[:levels],
            smoothing=config.affine_smoothing[:levels],
            sampling_rate=config.sampling_rate,
            seed=config.seed,
        )

    n_levels = len(config.affine_iterations)
    if config.brain_extraction:
        transform, passes = fit(data * rough, max(1, n_levels - 1)), config.extraction_passes
    else:  # the whole image straight onto the brain template: only for input that is already skull-stripped
        transform, passes = fit(data, n_levels), 0
    for _ in range(passes):
        carried = template_mask_in_native(prior, grid_affine, transform, data, affine)
        stripped = ndimage.binary_dilation(carried, iterations=1)
        transform = fit(data * stripped, n_levels)
    # The subject placed in template space is the same array with affine M⁻¹ · A; resample that onto the grid.
    moved = resample_array(data, np.linalg.inv(transform) @ affine, config.grid)
    prior = _template_inputs(config)[1] if reg_grid != config.grid else prior
    if config.mask_margin_mm > 0:
        mask = refine_brain_mask(moved, prior, max(1, round(config.mask_margin_mm / config.voxel_size)))
    else:
        mask = np.array(prior, dtype=bool)
    image = np.where(mask, moved, 0).astype(np.float32)
    qc = scan_measures(data, affine, transform, config, rough=rough, moved=moved, mask=mask)
    return RegisteredScan(image, mask, transform, qc, moved)


def scan_measures(
    data: np.ndarray,
    affine: np.ndarray,
    transform: np.ndarray,
    config: PrepConfig,
    *,
    rough: np.ndarray | None = None,
    moved: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """QC measures of a registration of a (bias-corrected) scan; see ``docs/prep.md`` for their meaning.

    Any transform can be scored, so a deliberately wrong one can be checked to fail.

    Args:
        data: ``(X, Y, Z)`` scan intensities (RAS), as registered.
        affine: its ``(4, 4)`` affine.
        transform: ``(4, 4)`` template world → subject world.
        config: settings (grid, template).
        rough: the subject's intensity brain mask (computed when None).
        moved: ``data`` on the grid (computed when None).
        mask: the produced brain mask on the grid (the template mask when None).
    """
    template, prior, _ = _template_inputs(config)
    if rough is None:
        rough = intensity_brain_mask(data)
    if moved is None:
        moved = resample_array(data, np.linalg.inv(transform) @ affine, config.grid)
    if mask is None:
        mask = np.asarray(prior, dtype=bool)
    to_grid = np.linalg.inv(transform) @ affine
    rough_on_grid = resample_array(rough.astype(np.float32), to_grid, config.grid) > 0.5
    scales = scale_factors(transform)
    det = voxel_volume_mm3(transform)  # the volume scale of the template-to-subject map
    voxel_mm3 = config.grid.voxel_volume_mm3
    band = ndimage.binary_dilation(prior, iterations=2)
    return {
        "ncc": normalized_cross_correlation(moved, template, prior),
        "mutual_information_nats": mutual_information(moved, template, band),
        "brain_mask_dice": dice(rough_on_grid, prior),
        "affine_determinant": det,
        "scale_max": float(scales[0]),
        "scale_min": float(scales[-1]),
        "brain_volume_mni_mm3": float(mask.sum()) * voxel_mm3,
        # An affine has a constant Jacobian, so the native volume is the template-space volume times |det M|.
        "brain_volume_mm3": float(mask.sum()) * voxel_mm3 * det,
        "template_mask_dice": dice(mask, prior),
    }
