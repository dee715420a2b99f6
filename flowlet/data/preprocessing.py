"""Pure intensity and geometry operations on 3D arrays: normalisation, centred padding and cropping, reorientation.

Nothing here reads or writes files. :func:`robust_normalize`, :func:`centre_pad` and :func:`centre_crop` reproduce
the official training and export steps (spec §4-5) exactly, so that released checkpoints see the inputs they were
trained on; the optional ``mask`` and ``crop_larger`` arguments are improvements that are off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from nibabel import orientations

from flowlet.data.grid import Grid, resample_to_grid
from flowlet.data.nifti import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "PadResult",
    "centre_crop",
    "centre_pad",
    "crop_start",
    "minmax_to_unit",
    "otsu_threshold",
    "reorient_to_ras",
    "resample_like",
    "robust_normalize",
    "zscore",
]

#: Below this intensity range a volume is treated as constant (official rule).
_MIN_RANGE = 1e-8


@dataclass(frozen=True)
class PadResult:
    """Output of :func:`centre_pad`.

    Attributes:
        array: the padded array, shape ``target``.
        pad_width: ``((before, after), ...)`` per axis, as accepted by :func:`numpy.pad`.
    """

    array: np.ndarray
    pad_width: tuple[tuple[int, int], ...]


def _check_mask(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume shape {x.shape}")
    if not mask.any():
        raise ValueError("mask is empty; expected at least one voxel inside the brain")
    return mask


def robust_normalize(
    x: np.ndarray, lower: float = 0.5, upper: float = 99.5, *, mask: np.ndarray | None = None
) -> np.ndarray:
    """Clip to the volume's own percentiles and map linearly to ``[-1, 1]`` (official training normalisation).

    ``y = 2 (clip(x, lo, hi) - lo) / (hi - lo) - 1`` is computed in float64 and cast to float32 at the end, as
    the official code does under NumPy 2; a volume whose range is below 1e-8 maps to zeros.

    Args:
        x: ``(X, Y, Z)`` array (any shape works).
        lower: lower percentile (0-100).
        upper: upper percentile (0-100).
        mask: optional boolean array of ``x.shape``; percentiles are then taken inside the mask only
            (background excluded). The whole volume is still mapped.

    Returns:
        float32 array of ``x.shape``.

    Example:
        >>> robust_normalize(np.arange(10.0), 0, 100)[[0, -1]].tolist()
        [-1.0, 1.0]
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}"
        )
    # float64 throughout: the official percentiles are float64, and float32 percentiles differ in the last bit.
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    mask = _check_mask(x, mask)
    sample = x if mask is None else x[mask]
    p_lo = float(np.percentile(sample, lower))
    p_hi = float(np.percentile(sample, upper))
    if p_hi - p_lo < _MIN_RANGE:
        return np.zeros(x.shape, dtype=np.float32)
    clipped = np.clip(x, p_lo, p_hi)
    return (2.0 * (clipped - p_lo) / (p_hi - p_lo) - 1.0).astype(np.float32)


def minmax_to_unit(x: np.ndarray) -> np.ndarray:
    """Map ``x`` linearly onto ``[0, 1]`` (float32); a constant array maps to zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < _MIN_RANGE:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def zscore(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation (inside ``mask`` when given); float32.

    A constant array (std below 1e-8) is only centred.
    """
    x = np.asarray(x, dtype=np.float64)
    mask = _check_mask(x, mask)
    sample = x if mask is None else x[mask]
    mean, std = float(sample.mean()), float(sample.std())
    if std < _MIN_RANGE:
        return (x - mean).astype(np.float32)
    return ((x - mean) / std).astype(np.float32)


def _as_shape(target: Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    shape = tuple(int(t) for t in target)
    if len(shape) != ndim:
        raise ValueError(f"{name} {shape} has {len(shape)} axes; the array has {ndim}")
    if any(t < 1 for t in shape):
        raise ValueError(f"{name} {shape} must be positive on every axis")
    return shape


def crop_start(src: Sequence[int], dst: Sequence[int]) -> tuple[int, ...]:
    """Start index per axis of a centred crop from ``src`` to ``dst``: ``floor((src - dst) / 2)``.

    This is the official export crop and exactly undoes :func:`centre_pad` (which puts ``floor(pad/2)`` first).
    """
    src_t, dst_t = tuple(int(s) for s in src), tuple(int(d) for d in dst)
    if len(src_t) != len(dst_t):
        raise ValueError(f"shapes {src_t} and {dst_t} have different numbers of axes")
    if any(d > s for s, d in zip(src_t, dst_t)):
        raise ValueError(f"cannot crop shape {src_t} to the larger shape {dst_t}")
    return tuple((s - d) // 2 for s, d in zip(src_t, dst_t))


def centre_crop(x: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """Crop ``x`` to ``target`` around its centre (start = ``floor((src - dst) / 2)``); returns a view."""
    x = np.asarray(x)
    shape = _as_shape(target, x.ndim, "target")
    starts = crop_start(x.shape, shape)
    return x[tuple(slice(s, s + t) for s, t in zip(starts, shape))]


def centre_pad(
    x: np.ndarray,
    target: Sequence[int],
    mode: Literal["edge", "constant", "reflect", "symmetric"] = "edge",
    *,
    crop_larger: bool = False,
) -> PadResult:
    """Pad ``x`` to ``target``, ``floor(pad/2)`` before and the rest after (official: replicate/"edge").

    Args:
        x: array, e.g. ``(91, 109, 91)``.
        target: output shape, e.g. ``(112, 112, 112)``.
        mode: :func:`numpy.pad` mode; ``"constant"`` pads with zeros.
        crop_larger: centre-crop axes longer than ``target`` first instead of refusing them (the official code
            drops such volumes). The reported ``pad_width`` is then that of the padding step only.

    Returns:
        :class:`PadResult` with the ``target``-shaped array and the pad widths.

    Raises:
        ValueError: ``x`` is larger than ``target`` on an axis and ``crop_larger`` is false.
    """
    x = np.asarray(x)
    shape = _as_shape(target, x.ndim, "target")
    larger = [i for i, (s, t) in enumerate(zip(x.shape, shape)) if s > t]
    if larger and not crop_larger:
        raise ValueError(
            f"array of shape {tuple(x.shape)} is larger than the target {shape} on axes {larger}; "
            "pass crop_larger=True to centre-crop it"
        )
    if larger:
        x = centre_crop(x, tuple(min(s, t) for s, t in zip(x.shape, shape)))
    pad_width = tuple(((t - s) // 2, (t - s) - (t - s) // 2) for s, t in zip(x.shape, shape))
    return PadResult(array=np.pad(x, pad_width, mode=mode), pad_width=pad_width)


def reorient_to_ras(volume: Volume) -> Volume:
    """Permute and flip the voxel axes so that they point closest to RAS+, updating the affine.

    The world coordinates of every voxel are unchanged; only the storage order changes (no resampling).

    Args:
        volume: a 3D :class:`Volume`.

    Returns:
        A new :class:`Volume` whose affine is closest to diagonal with positive entries.
    """
    current = orientations.io_orientation(volume.affine)
    ras = orientations.axcodes2ornt(("R", "A", "S"))
    transform = orientations.ornt_transform(current, ras)
    if np.array_equal(transform, ras):
        return volume
    data = orientations.apply_orientation(volume.data, transform)
    # inv_ornt_aff maps new voxel indices to old ones, so world = old_affine @ it.
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.data.shape)
    return Volume(data=np.ascontiguousarray(data), affine=affine, path=volume.path)


def resample_like(
    volume: Volume, grid: Grid | Volume, *, interpolation: Literal["linear", "nearest"] = "linear"
) -> Volume:
    """Resample ``volume`` onto ``grid`` in world space (thin wrapper of :func:`flowlet.data.grid.resample_to_grid`).

    Args:
        volume: source image.
        grid: a :class:`flowlet.data.grid.Grid`, or a :class:`Volume` whose shape and affine define the grid.
        interpolation: ``"linear"`` for intensities, ``"nearest"`` for label images.
    """
    if isinstance(grid, Volume):
        grid = Grid(shape=grid.shape, affine=np.asarray(grid.affine, dtype=np.float64))
    return resample_to_grid(volume, grid, interpolation=interpolation)


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Threshold that maximises the between-class variance of ``values`` (Otsu 1979).

    Args:
        values: any array of intensities (flattened).
        bins: histogram bins.

    Returns:
        The threshold; values above it form the bright class. A constant array returns its value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])
