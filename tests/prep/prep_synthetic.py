"""Synthetic raw scans with a known world transform, made from the ageing phantom (helpers for tests/prep)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from flowlet.data.nifti import save_volume
from flowlet.data.phantom import PhantomConfig, make_phantom


def world_transform(
    rotation_deg=(10.0, -6.0, 4.0), shift_mm=(10.0, -8.0, 6.0), scale=(1.05, 0.96, 1.03)
) -> np.ndarray:
    """``(4, 4)`` map from template world to scanner world: rotation · scaling, then shift (mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(scale)
    matrix[:3, 3] = shift_mm
    return matrix


def oblique_grid(
    voxel_mm=(1.0, 1.0, 1.1), tilt_deg=12.0, centre=(8.0, -26.0, 24.0), extent_mm=(190.0, 220.0, 190.0)
):
    """An oblique scanner grid stored LPI (every axis flipped) and tilted about x: ``(shape, affine)``."""
    rotation = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix() @ np.diag([-1.0, -1.0, -1.0])
    shape = tuple(round(e / v) for e, v in zip(extent_mm, voxel_mm))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel_mm)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return shape, affine


def warp_into(data, affine, transform, shape, target_affine, *, order=1) -> np.ndarray:
    """Resample ``data`` (template world) onto a scanner grid, the subject sitting at ``transform`` · template."""
    matrix = np.linalg.inv(affine) @ np.linalg.inv(transform) @ target_affine
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32 if order else data.dtype),
        matrix[:3, :3],
        matrix[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=0,
        prefilter=False,
    )


def bias_field(shape, affine, amplitude=0.3) -> np.ndarray:
    """Smooth multiplicative field, about ±``amplitude`` in log units across the head."""
    points = affine[:3, :3] @ np.indices(shape, dtype=np.float32).reshape(3, -1) + affine[:3, 3:4]
    log_field = amplitude * (points[0] / 90.0 + 0.5 * (points[1] / 110.0) ** 2 - points[2] / 100.0)
    return np.exp(log_field).reshape(shape).astype(np.float32)


@functools.lru_cache(maxsize=4)
def phantom(voxel_size: float):
    """A phantom whose head is the template's size (no head-size or sex offset), so that an affine registration
    to the template should recover exactly the transform applied to it."""
    config = dataclasses.replace(
        PhantomConfig.from_yaml(), voxel_size=voxel_size, head_size_sd=0.0, sex_volume_offset=0.0
    )
    return make_phantom(45.0, sex="F", site=0, seed=7, config=config)


@dataclasses.dataclass(frozen=True)
class RawScan:
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    transform: np.ndarray


def make_raw_scan(voxel_size: float, raw_voxel_mm: tuple[float, float, float]) -> RawScan:
    """The phantom warped by :func:`world_transform`, on an oblique grid, corrupted by a bias field."""
    subject = phantom(voxel_size)
    transform = world_transform()
    shape, affine = oblique_grid(voxel_mm=raw_voxel_mm)
    image = warp_into(subject.image, subject.affine, transform, shape, affine) * bias_field(shape, affine)
    labels = warp_into(subject.labels, subject.affine, transform, shape, affine, order=0)
    return RawScan(image.astype(np.float32), labels, affine, transform)


def write_raw_scan(path: Path, scan: RawScan) -> Path:
    save_volume(path, scan.image, scan.affine)
    return path
