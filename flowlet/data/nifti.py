"""NIfTI reading and writing that never drops the affine and never leaves a half-written file.

Reading validates eagerly: nibabel opens a truncated ``.nii.gz`` without complaint and fails only when the voxels
are read, so :func:`load_volume` reads the data before returning. Orientation rule: the affine is nibabel's
``img.affine`` (the sform when its code is set, else the qform); when both are set and disagree, a warning is
logged naming the file.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from flowlet.data.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "NiftiError",
    "Volume",
    "check_header",
    "check_voxel_array",
    "load_volume",
    "max_voxels",
    "save_volume",
    "validate_affine",
    "voxel_volume_mm3",
]

#: Default voxel budget of one image (512³ = 134 million voxels, 512 MiB as float32); ``FLOWLET_MAX_VOXELS``
#: overrides it.
DEFAULT_MAX_VOXELS = 512**3


class NiftiError(ValueError):
    """An image file cannot be used; the message names the file and what was expected."""


@dataclass(frozen=True)
class Volume:
    """A 3D image with its voxel-to-world affine.

    Attributes:
        data: ``(X, Y, Z)`` array.
        affine: ``(4, 4)`` voxel-to-world (mm) matrix.
        path: file it was read from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³ (``|det(affine[:3, :3])|``)."""
        return voxel_volume_mm3(self.affine)


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume in mm³ of one voxel of a voxel-to-world ``(4, 4)`` affine: ``|det(affine[:3, :3])|``.

    Exact for oblique and sheared grids, where the product of the voxel edge lengths is not. For a world-to-world
    transform the same number is its volume scale (the Jacobian of an affine map is constant).

    Example:
        >>> round(voxel_volume_mm3(np.diag([2.0, 3.0, 4.0, 1.0])), 9)
        24.0
    """
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def validate_affine(affine: np.ndarray, *, source: str = "affine") -> np.ndarray:
    """Return ``affine`` as float64 ``(4, 4)`` or raise :class:`NiftiError` if it is unusable."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise NiftiError(f"{source}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{source}: affine contains NaN or Inf")
    det = np.linalg.det(affine[:3, :3])
    if not np.isfinite(det) or abs(det) < 1e-9:
        raise NiftiError(f"{source}: affine is not invertible (det of the 3x3 part = {det:g})")
    return affine


def load_volume(
    path: str | os.PathLike,
    *,
    dtype: np.dtype | type = np.float32,
    allow_non_finite: bool = False,
) -> Volume:
    """Read a 3D NIfTI image, checking everything a later step would trip over.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: dtype of the returned array.
        allow_non_finite: keep NaN/Inf voxels instead of refusing the file.

    Returns:
        The :class:`Volume` with its affine. A 4D image whose 4th axis has length 1 is squeezed to 3D.

    Raises:
        NiftiError: missing, unreadable or truncated file; not 3D; non-finite voxels; unusable affine; and,
            before any voxel is read (:func:`check_header`), more voxels than :func:`max_voxels`, a dtype that is
            not intensities (complex, RGB), or an uncompressed file shorter than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: file not found")
    try:
        with open(path, "rb"):  # nibabel would turn a refused open into "Could not read file"
            pass
        img = nib.load(str(path))
        check_header(img, path)
        data = np.asarray(img.dataobj, dtype=dtype)
    except PermissionError as exc:
        raise NiftiError(f"{path}: cannot read the image: permission denied ({exc.strerror})") from exc
    except (
        EOFError,
        OSError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
        nib.filebasedimages.ImageFileError,
    ) as exc:
        raise NiftiError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}); the file may be truncated "
            "or not a NIfTI file"
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D image, got {data.ndim}D with shape {tuple(data.shape)}")
    if not allow_non_finite and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise NiftiError(f"{path}: {bad} voxels are NaN or Inf; expected finite intensities")
    affine = validate_affine(img.affine, source=str(path))
    _warn_if_sform_qform_disagree(img, path)
    return Volume(data=data, affine=affine, path=path)


def max_voxels() -> int:
    """The voxel budget of one image: ``FLOWLET_MAX_VOXELS`` (default :data:`DEFAULT_MAX_VOXELS` = 512³).

    Raises:
        ValueError: the variable is set but not a positive integer.
    """
    text = os.environ.get("FLOWLET_MAX_VOXELS", "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"FLOWLET_MAX_VOXELS: expected a positive integer number of voxels, got {text!r}")
    return value


def check_voxel_array(shape: tuple[int, ...], dtype: np.dtype, path: str | os.PathLike) -> None:
    """Refuse, before any voxel is read, an image too large for the budget or of a type that is not intensities.

    Raises:
        NiftiError: naming the file, the shape or dtype found and what is accepted.
    """
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind == "V":
        raise NiftiError(
            f"{path}: voxels of type {dtype} (RGB or another multi-channel type); expected one grey value per voxel"
        )
    if dtype.kind not in "iuf":
        raise NiftiError(
            f"{path}: voxels of type {dtype}; expected real intensities (integer or floating point), "
            "not complex, boolean or text"
        )
    voxels = math.prod(int(s) for s in shape)
    budget = max_voxels()
    if voxels > budget:
        raise NiftiError(
            f"{path}: the header declares shape {tuple(int(s) for s in shape)} = {voxels} voxels, more than the "
            f"budget of {budget} (FLOWLET_MAX_VOXELS); refused before reading"
        )
    if voxels == 0:
        raise NiftiError(f"{path}: the header declares an empty image, shape {tuple(int(s) for s in shape)}")


def check_header(img: nib.spatialimages.SpatialImage, path: Path) -> None:
    """Check a NIfTI header against the voxel budget and (uncompressed files) the file size, allocating nothing.

    Raises:
        NiftiError: too many voxels, an empty shape, a non-intensity dtype, or an uncompressed file shorter than
            the voxel data its header declares.
    """
    header = img.header
    dtype = header.get_data_dtype()
    check_voxel_array(img.shape, dtype, path)
    if not path.name.endswith(".nii"):
        return  # compressed: the size on disk says nothing (a short stream fails when read); pairs: data elsewhere
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))  # the proxy knows the real offset
    needed = offset + math.prod(int(s) for s in img.shape) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise NiftiError(
            f"{path}: the header declares {needed} bytes (shape {tuple(img.shape)}, {dtype}, offset {offset}) "
            f"but the file has {size}; the file is truncated or its header is wrong"
        )


def _warn_if_sform_qform_disagree(img: nib.spatialimages.SpatialImage, path: Path) -> None:
    header = getattr(img, "header", None)
    if header is None or not hasattr(header, "get_sform"):
        return
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    if s_code and q_code and not np.allclose(sform, qform, atol=1e-3):
        logger.warning("%s: sform and qform disagree; using the sform (code %d)", path, int(s_code))


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write a 3D image atomically (temporary file, then rename), with the affine as sform and qform.

    Args:
        path: destination, ``.nii`` or ``.nii.gz``.
        data: ``(X, Y, Z)`` array.
        affine: ``(4, 4)`` voxel-to-world matrix in mm.
        dtype: on-disk dtype.

    Returns:
        The destination path.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim != 3:
        raise NiftiError(f"{path}: refusing to write a {data.ndim}D array; expected 3D")
    affine = validate_affine(affine, source=str(path))
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1 if _is_identity(affine) else 4)
    img.set_qform(affine, code=1 if _is_identity(affine) else 4)
    with atomic_path(path) as tmp:
        _save_deterministic(img, tmp)
    return path


def _is_identity(affine: np.ndarray) -> bool:
    return bool(np.allclose(affine, np.eye(4)))


def _save_deterministic(img: nib.Nifti1Image, tmp: Path) -> None:
    """Save so that identical data give identical bytes (gzip without a timestamp or file name)."""
    if tmp.name.endswith(".gz"):
        raw = img.to_bytes()
        with (
            open(tmp, "wb") as handle,
            gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="", compresslevel=6) as gz,
        ):
            gz.write(raw)
    else:
        nib.save(img, str(tmp))
