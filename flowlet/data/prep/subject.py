"""Preprocess one raw T1w scan into the model's space, and verify a previous run's outputs.

Steps: read (validated) → reorient to RAS → N4 bias correction inside a head mask → brain extraction by
registration of the packaged brain template (intensity brain mask, template mask carried back) → brain-to-brain
affine → resampling onto the MNI grid → brain mask → QC measures and the pass/fail verdict → QC picture. Outputs
are written atomically; the JSON sidecar is written last and marks the scan as finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from flowlet.data.grid import Grid, mni_grid, resample_array, same_grid
from flowlet.data.io import sha256_file, write_json_atomic
from flowlet.data.nifti import NiftiError, load_volume, save_volume, voxel_volume_mm3
from flowlet.data.prep import ants_backend
from flowlet.data.prep.measures import (
    QcLimits,
    dice,
    head_mask,
    intensity_brain_mask,
    mutual_information,
    normalized_cross_correlation,
    qc_problems,
    refine_brain_mask,
    scale_factors,
)
from flowlet.data.prep.montage import write_scan_montage
from flowlet.data.preprocessing import reorient_to_ras

logger = logging.getLogger(__name__)

__all__ = [
    "REJECTED_DIR",
    "SPACE_LABELS",
    "PrepConfig",
    "RegisteredScan",
    "ScanJob",
    "ScanResult",
    "output_names",
    "prepare_scan",
    "read_prep_record",
    "register_scan",
    "scan_measures",
    "template_mask_in_native",
    "verify_scan",
]

#: BIDS ``space-`` label of each registration template (the grid is the FSL MNI152 bounding box).
SPACE_LABELS: dict[str, str] = {
    "icbm152-t1": "MNI152NLin2009aSym",
    "mni152-t1-brain": "MNI152NLin6Asym",
    "icbm152-2009c-brain": "MNI152NLin2009cAsym",
}
_SIDECAR_KEY = "FlowletPrep"


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


@dataclass(frozen=True)
class ScanJob:
    """One scan to process.

    Attributes:
        subject_id: without ``sub-``.
        session_id: without ``ses-``, or ``n/a``.
        source: the raw T1w file.
        relative_dir: its folder relative to the data set root (``sub-01/ses-1/anat``), reused in the output.
        stem: its name without ``_T1w.nii[.gz]`` (keeps ``acq-``/``run-`` entities).
    """

    subject_id: str
    session_id: str
    source: Path
    relative_dir: str
    stem: str


@dataclass(frozen=True)
class ScanResult:
    """Outcome of one scan: status ``ok``, ``rejected`` (processed, failed QC) or ``failed`` (could not be
    processed), the reason, QC measures and output paths."""

    job: ScanJob
    status: str
    reason: str = ""
    resumed: bool = False
    qc: dict[str, float] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


#: Where scans that fail QC are written (outside ``sub-*``, so that the cohort does not see them).
REJECTED_DIR = "qc/rejected"
MONTAGE_DIR = "qc/scans"


def output_names(job: ScanJob, config: PrepConfig, *, rejected: bool = False) -> dict[str, str]:
    """Output paths relative to the output root: ``image``, ``mask``, ``xfm``, the ``sidecar`` and the QC
    ``montage``; under ``qc/rejected/`` for a scan that failed QC (``rejected=True``)."""
    base = f"{REJECTED_DIR + '/' if rejected else ''}{job.relative_dir}/{job.stem}"
    entities = f"space-{config.space}_res-{config.resolution_label}"
    return {
        "image": f"{base}_{entities}_desc-preproc_T1w.nii.gz",
        "mask": f"{base}_{entities}_desc-brain_mask.nii.gz",
        "xfm": f"{base}_from-T1w_to-{config.space}_mode-image_xfm.json",
        "sidecar": f"{base}_{entities}_desc-preproc_T1w.json",
        "montage": f"{MONTAGE_DIR}/{job.stem}_qc.png",
    }


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


def prepare_scan(
    job: ScanJob, out_dir: Path, config: PrepConfig, *, keep_rejected: bool = False
) -> ScanResult:
    """Process one scan and write its outputs; bad input gives a ``failed`` result, never an exception.

    A scan that breaks a QC limit (``config.qc``) is ``rejected``: its outputs go to ``qc/rejected/`` (outside
    the cohort) unless ``keep_rejected``. The image, mask and transform are written first, the sidecar (with the
    QC measures and verdict, the settings and the input's SHA-256) last, so a scan interrupted half-way has no
    sidecar and is processed again on resume. A QC montage is written for every scan that got that far.
    """
    start = time.perf_counter()
    try:
        volume = reorient_to_ras(load_volume(job.source))
        result = register_scan(volume.data, volume.affine, config)
    except (NiftiError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        reason = str(exc) if isinstance(exc, NiftiError) else f"{type(exc).__name__}: {exc}"
        logger.warning("%s: failed: %s", job.source, reason)
        return ScanResult(job, "failed", reason=reason, seconds=time.perf_counter() - start)
    problems = qc_problems(result.qc, config.qc)
    status = "rejected" if problems else "ok"
    reason = "; ".join(problems)
    if problems:
        logger.warning("%s: rejected by QC: %s", job.source, reason)
    names = output_names(job, config, rejected=bool(problems) and not keep_rejected)
    stale = output_names(job, config, rejected=not (bool(problems) and not keep_rejected))
    paths = {key: out_dir / rel for key, rel in names.items()}
    grid = config.grid
    save_volume(paths["image"], result.image, grid.affine, dtype=np.float32)
    save_volume(paths["mask"], result.mask.astype(np.uint8), grid.affine, dtype=np.uint8)
    write_json_atomic(paths["xfm"], _transform_record(result.transform, job, config))
    label = f"{job.stem}: {'REJECTED ' + reason if problems else 'passed'}"
    head = result.moved if result.moved is not None else result.image
    write_scan_montage(paths["montage"], head, result.mask, label, failed=bool(problems))
    seconds = time.perf_counter() - start
    write_json_atomic(paths["sidecar"], _sidecar(job, config, result.qc, names, seconds, status, reason))
    # A scan that moved between the cohort and qc/rejected (new limits, new input) leaves nothing behind.
    for key in ("sidecar", "image", "mask", "xfm"):
        (out_dir / stale[key]).unlink(missing_ok=True)
    return ScanResult(job, status, reason=reason, qc=result.qc, outputs=names, seconds=seconds)


def _transform_record(transform: np.ndarray, job: ScanJob, config: PrepConfig) -> dict[str, Any]:
    return {
        "Description": "Affine map from template world (mm, RAS) to the subject's scanner world (mm, RAS); "
        "the subject image on the template grid is sampled at matrix @ template_affine @ voxel",
        "FromSpace": config.space,
        "ToSpace": "T1w",
        "Source": job.source.name,
        "matrix": np.round(transform, 10).tolist(),
        # Native volume = template-space volume × this (the Jacobian of an affine is constant).
        "determinant": voxel_volume_mm3(transform),
        "inverse": np.round(np.linalg.inv(transform), 10).tolist(),
    }


def _sidecar(
    job: ScanJob,
    config: PrepConfig,
    qc: dict[str, float],
    names: dict[str, str],
    seconds: float,
    status: str,
    reason: str,
) -> dict:
    return {
        "SkullStripped": True,
        "SpatialReference": config.space,
        "Sources": [f"bids:raw:{job.relative_dir}/{job.source.name}"],
        _SIDECAR_KEY: {
            "config": config.to_dict(),
            "input_sha256": sha256_file(job.source),
            "outputs": names,
            "qc": qc,
            "status": status,
            "reason": reason,
            "seconds": seconds,
        },
    }


def read_prep_record(image: str | Path) -> dict[str, Any] | None:
    """The ``flowlet-prep`` record (settings, QC measures incl. ``affine_determinant``, verdict) in the JSON
    sidecar of a preprocessed image, or None when the image has no such sidecar (e.g. a phantom)."""
    image = Path(image)
    name = image.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)] + ".json"
            break
    sidecar = image.with_name(name)
    if sidecar == image or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))[_SIDECAR_KEY]
        record["qc"] = {str(k): float(v) for k, v in record["qc"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{sidecar}: not a readable flowlet-prep sidecar ({type(exc).__name__}: {exc})"
        ) from exc
    return record


def verify_scan(
    job: ScanJob, out_dir: Path, config: PrepConfig, *, keep_rejected: bool = False
) -> ScanResult | None:
    """A finished scan's result if every output is present and valid and was made from this input with these
    settings, else None (the scan is then processed again). Rejected scans are looked for in ``qc/rejected/``
    (or in place with ``keep_rejected``)."""
    for rejected in (False, True):
        names = output_names(job, config, rejected=rejected and not keep_rejected)
        found = _verified(job, out_dir, config, names)
        if found is None:
            continue
        qc, seconds = found
        # The verdict is taken again with the current limits; a scan on the wrong side is processed again.
        problems = qc_problems(qc, config.qc)
        if bool(problems) != rejected:
            continue
        status = "rejected" if problems else "ok"
        return ScanResult(
            job, status, reason="; ".join(problems), resumed=True, qc=qc, outputs=names, seconds=seconds
        )
    return None


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that change a scan's outputs (QC limits only change its verdict).

    Records written before ``registration_voxel_size`` existed registered on the output grid; the effective
    registration voxel size is compared, so finished 2 mm scans stay valid and coarser ones are redone.
    """
    settings = {k: v for k, v in config.items() if k != "qc"}
    voxel = float(settings.get("voxel_size", 2.0))
    settings["registration_voxel_size"] = min(voxel, float(settings.get("registration_voxel_size", voxel)))
    return settings


def _verified(job: ScanJob, out_dir: Path, config: PrepConfig, names: dict[str, str]):
    sidecar = out_dir / names["sidecar"]
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))[_SIDECAR_KEY]
        same = _settings(record["config"]) == _settings(config.to_dict())
        if not same or record["input_sha256"] != sha256_file(job.source):
            return None
        grid = config.grid
        for key in ("image", "mask"):
            volume = load_volume(out_dir / names[key])
            if not same_grid(volume.affine, volume.shape, grid.affine, grid.shape):
                return None
        json.loads((out_dir / names["xfm"]).read_text(encoding="utf-8"))["matrix"]
        qc = {str(k): float(v) for k, v in record["qc"].items()}
    except (OSError, ValueError, KeyError, TypeError, NiftiError):
        return None
    return qc, float(record.get("seconds", 0.0))
