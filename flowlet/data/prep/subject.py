"""Preprocess one raw T1w scan into the model's space, and verify a previous run's outputs.

Steps: read (validated) → reorient to RAS → register onto the MNI grid with QC measures
(:func:`flowlet.data.prep.register.register_scan`) → the pass/fail verdict → QC picture. Outputs are written
atomically; the JSON sidecar is written last and marks the scan as finished.
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

from flowlet.data.grid import same_grid
from flowlet.data.io import sha256_file, write_json_atomic
from flowlet.data.nifti import NiftiError, load_volume, save_volume, voxel_volume_mm3
from flowlet.data.prep.config import PrepConfig
from flowlet.data.prep.measures import qc_problems
from flowlet.data.prep.montage import write_scan_montage
from flowlet.data.prep.register import register_scan
from flowlet.data.preprocessing import reorient_to_ras

logger = logging.getLogger(__name__)

__all__ = [
    "REJECTED_DIR",
    "ScanJob",
    "ScanResult",
    "output_names",
    "prepare_scan",
    "read_prep_record",
    "verify_scan",
]

_SIDECAR_KEY = "FlowletPrep"


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
    # With keep_rejected every scan has one place, read once; else each place holds one verdict.
    for rejected in (False,) if keep_rejected else (False, True):
        names = output_names(job, config, rejected=rejected)
        found = _verified(job, out_dir, config, names)
        if found is None:
            continue
        qc, seconds = found
        # The verdict is taken again with the current limits; a scan on the wrong side is processed again.
        problems = qc_problems(qc, config.qc)
        if not keep_rejected and bool(problems) != rejected:
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
