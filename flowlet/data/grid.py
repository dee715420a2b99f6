"""Voxel grids in MNI space and world-space resampling onto them.

A :class:`Grid` is a shape plus a voxel-to-world affine. :func:`mni_grid` gives the MNI152 bounding box
(FSL's ``MNI152_T1_1mm`` extent, x flipped) at any voxel size; at 2 mm it is the official OpenBHB grid
``91×109×91`` with affine ``[[-2,0,0,90],[0,2,0,-126],[0,0,2,-72],[0,0,0,1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from flowlet.data.nifti import Volume, validate_affine, voxel_volume_mm3

__all__ = [
    "MNI_2MM_AFFINE",
    "MNI_VOXEL_SIZES",
    "Grid",
    "find_mni_grid",
    "mni_grid",
    "resample_to_grid",
    "same_grid",
]

# Voxel sizes of the MNI152 grids that scans come in (FSL 1/2 mm, CAT12 1.5 mm, 3 mm, demo 4 mm).
MNI_VOXEL_SIZES = (1.0, 1.5, 2.0, 3.0, 4.0)

MNI_2MM_AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]],
    dtype=np.float64,
)
#: World coordinates (mm) of voxel (0, 0, 0) of every MNI grid, and the extent of the 1 mm box.
_MNI_ORIGIN = (90.0, -126.0, -72.0)
_MNI_EXTENT_MM = (181.0, 217.0, 181.0)
_AFFINE_DECIMALS = 4


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: shape and voxel-to-world affine (mm).

    Equality and hashing use the shape and the affine rounded to 1e-4 mm, so grids can key caches.

    Attributes:
        shape: ``(X, Y, Z)``.
        affine: ``(4, 4)`` float64 voxel-to-world matrix.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"grid shape must be three positive integers, got {self.shape}")
        affine = validate_affine(self.affine, source="grid").copy()
        affine.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)

    def _key(self) -> tuple:
        return (self.shape, tuple(np.round(self.affine, _AFFINE_DECIMALS).ravel().tolist()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³ (``|det(affine[:3, :3])|``)."""
        return voxel_volume_mm3(self.affine)

    @property
    def voxel_sizes(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def mni_grid(voxel_size: float = 2.0) -> Grid:
    """The MNI152 bounding box at ``voxel_size`` mm (isotropic, x flipped, voxel 0 at (90, −126, −72)).

    Sizes 1, 2 and 4 give ``(182, 218, 182)``, ``(91, 109, 91)`` and ``(46, 55, 46)``; any other size keeps the
    box and uses ``floor(extent / size) + 1`` voxels per axis.

    Example:
        >>> mni_grid(2).shape
        (91, 109, 91)
    """
    size = float(voxel_size)
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"voxel_size must be a positive number of mm, got {voxel_size!r}")
    shape = tuple(int(np.floor(extent / size + 1e-9)) + 1 for extent in _MNI_EXTENT_MM)
    affine = np.diag([-size, size, size, 1.0])
    affine[:3, 3] = _MNI_ORIGIN
    return Grid(shape=shape, affine=affine)  # type: ignore[arg-type]


def find_mni_grid(affine: np.ndarray, shape: tuple[int, ...]) -> Grid | None:
    """The MNI152 grid (one of :data:`MNI_VOXEL_SIZES`) that ``(affine, shape)`` describes, or None."""
    for size in MNI_VOXEL_SIZES:
        grid = mni_grid(size)
        if same_grid(affine, shape, grid.affine, grid.shape):
            return grid
    return None


def same_grid(
    affine_a: np.ndarray,
    shape_a: tuple[int, ...],
    affine_b: np.ndarray,
    shape_b: tuple[int, ...],
    atol: float = 1e-3,
) -> bool:
    """True when two (affine, shape) pairs describe the same voxel grid within ``atol`` mm."""
    if tuple(int(s) for s in shape_a[:3]) != tuple(int(s) for s in shape_b[:3]):
        return False
    return bool(np.allclose(np.asarray(affine_a, float), np.asarray(affine_b, float), atol=atol))


def _grid_to_source(source_affine: np.ndarray, grid: Grid) -> np.ndarray:
    """``(4, 4)`` matrix mapping target voxel indices to source voxel indices."""
    return np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ grid.affine


def resample_array(
    data: np.ndarray,
    source_affine: np.ndarray,
    grid: Grid,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
) -> np.ndarray:
    """Resample a 3D or 4D array (4th axis = channels) in world space onto ``grid``; outside = 0.

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` array on ``source_affine``.
        source_affine: ``(4, 4)`` voxel-to-world matrix of ``data``.
        grid: target grid.
        interpolation: ``"linear"`` (float32 output) or ``"nearest"`` (keeps the dtype, e.g. integer labels).

    Returns:
        ``grid.shape`` (plus the channel axis for 4D input).
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolation '{interpolation}'; choose from ['linear', 'nearest']")
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"expected a 3D or 4D array, got shape {data.shape}")
    matrix = _grid_to_source(source_affine, grid)
    order = 1 if interpolation == "linear" else 0
    if order == 1:
        data = data.astype(np.float32, copy=False)
    if data.ndim == 3:
        return _affine_resample(data, matrix, grid.shape, order)
    channels = [_affine_resample(data[..., c], matrix, grid.shape, order) for c in range(data.shape[3])]
    return np.stack(channels, axis=-1)


def _affine_resample(
    data: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int], order: int
) -> np.ndarray:
    if np.allclose(matrix, np.eye(4)) and data.shape == shape:
        return data.copy()
    out = ndimage.affine_transform(
        data,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=0,
        prefilter=False,
        output=data.dtype,
    )
    return out


def resample_to_grid(
    volume: Volume, grid: Grid, *, interpolation: Literal["linear", "nearest"] = "linear"
) -> Volume:
    """Resample ``volume`` in world space onto ``grid`` (voxels outside the source are 0).

    Args:
        volume: source image with its affine.
        grid: target grid.
        interpolation: ``"linear"`` for intensities/probabilities, ``"nearest"`` for integer label maps
            (the dtype is kept).

    Returns:
        A :class:`~flowlet.data.nifti.Volume` on ``grid`` (``data.shape == grid.shape``).

    Example:
        >>> vol = resample_to_grid(load_volume("t1.nii.gz"), mni_grid(2))  # doctest: +SKIP
    """
    data = resample_array(volume.data, volume.affine, grid, interpolation=interpolation)
    return Volume(data=data, affine=np.array(grid.affine), path=volume.path)
