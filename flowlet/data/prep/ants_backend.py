"""The only module that talks to ANTs (``antspyx``, the ``prep`` extra): N4 and affine registration.

Images cross the boundary as ``(data, affine)`` pairs in nibabel's RAS+ world; ANTs works in LPS+, so affines are
flipped on the way in and transforms on the way out. Transforms come back as a ``(4, 4)`` RAS matrix, which the
rest of the package applies with SciPy: the saved transform is exactly the one used to resample.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Sequence
from types import ModuleType

import numpy as np

__all__ = ["ANTS_MISSING", "ants_affine_to_ras", "n4_bias_field", "register_affine", "require_ants"]

ANTS_MISSING = (
    "flowlet-prep needs ANTs for bias correction and registration; install the 'prep' extra: "
    'pip install "flowlet-toolkit[prep]" (it provides antspyx)'
)
#: RAS <-> LPS: negate x and y.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
_THREADS_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
#: A registration level is used only if the shrunk fixed image keeps at least this many voxels per axis.
_MIN_LEVEL_VOXELS = 10


def require_ants(threads: int | None = None) -> ModuleType:
    """Import ``ants``; raise a clear ImportError naming the extra when it is missing.

    Args:
        threads: ITK threads for this process. ITK reads the variable once, at its first multi-threaded call,
            so this only takes effect before ANTs has done any work in the process.
    """
    if threads is not None:
        os.environ[_THREADS_VAR] = str(int(threads))
    try:
        return importlib.import_module("ants")
    except ImportError as exc:
        raise ImportError(ANTS_MISSING) from exc


def _to_ants(ants: ModuleType, data: np.ndarray, affine: np.ndarray):
    lps = _FLIP @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def n4_bias_field(
    data: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    *,
    iterations: Sequence[int] = (50, 50, 30, 20),
    shrink: int = 4,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """N4 bias field (Tustison et al. 2010) of a 3D image, estimated inside ``mask``.

    Args:
        data: ``(X, Y, Z)`` non-negative intensities.
        affine: ``(4, 4)`` RAS voxel-to-world matrix.
        mask: ``(X, Y, Z)`` boolean fitting mask (the head).
        iterations: iterations per fitting level (the number of levels is its length).
        shrink: down-sampling factor of the fit.
        tolerance: convergence threshold.

    Returns:
        ``(X, Y, Z)`` float32 multiplicative field; the corrected image is ``data / field``.
    """
    ants = require_ants()
    if not np.any(mask):
        raise ValueError("the head mask is empty; the image has no foreground to correct")
    image = _to_ants(ants, np.clip(data, 0, None), affine)
    field = ants.n4_bias_field_correction(
        image,
        mask=_to_ants(ants, np.asarray(mask, dtype=np.float32), affine),
        shrink_factor=int(shrink),
        convergence={"iters": [int(i) for i in iterations], "tol": float(tolerance)},
        return_bias_field=True,
    )
    return np.asarray(field.numpy(), dtype=np.float32)


def ants_affine_to_ras(parameters: Sequence[float], fixed_parameters: Sequence[float]) -> np.ndarray:
    """``(4, 4)`` RAS matrix of an ITK ``AffineTransform`` (12 parameters: 3×3 matrix row-major, translation).

    ITK maps a fixed-space LPS point ``x`` to ``A (x − c) + t + c`` with centre ``c`` = ``fixed_parameters``;
    conjugating by the LPS/RAS flip gives the same map in RAS.
    """
    params = np.asarray(parameters, dtype=np.float64)
    centre = np.asarray(fixed_parameters, dtype=np.float64)
    if params.shape != (12,) or centre.shape != (3,):
        raise ValueError(
            f"expected 12 affine parameters and a 3D centre, got {params.shape} and {centre.shape}"
        )
    matrix = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = params[9:] + centre - matrix @ centre
    return _FLIP @ lps @ _FLIP


def _levels(
    shape: Sequence[int], shrink: Sequence[int], smoothing: Sequence[float], iterations: Sequence[int]
):
    keep = [i for i, f in enumerate(shrink) if min(shape) / f >= _MIN_LEVEL_VOXELS] or [len(shrink) - 1]
    return (
        tuple(int(iterations[i]) for i in keep),
        tuple(int(shrink[i]) for i in keep),
        tuple(float(smoothing[i]) for i in keep),
    )


def register_affine(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    *,
    fixed_mask: np.ndarray | None = None,
    iterations: Sequence[int] = (1000, 500, 250, 100),
    shrink: Sequence[int] = (6, 4, 2, 1),
    smoothing: Sequence[float] = (3.0, 2.0, 1.0, 0.0),
    sampling_rate: float = 0.25,
    seed: int = 1,
) -> np.ndarray:
    """Affine registration (12 parameters, Mattes mutual information), initialised by the centres of mass.

    Args:
        fixed: ``(X, Y, Z)`` template on its grid.
        fixed_affine: ``(4, 4)`` RAS affine of ``fixed``.
        moving: ``(X', Y', Z')`` subject image.
        moving_affine: ``(4, 4)`` RAS affine of ``moving``.
        fixed_mask: optional boolean mask on the fixed grid where the metric is evaluated.
        iterations, shrink, smoothing: per-level settings (coarse to fine); levels whose shrunk fixed image
            would have fewer than 10 voxels on an axis are skipped.
        sampling_rate: fraction of fixed voxels sampled by the metric.
        seed: sampling seed, at least 1 (ANTs takes 0 as 'seed from the clock'); with one ITK thread the
            result is then reproducible.

    Returns:
        ``(4, 4)`` RAS matrix mapping template world coordinates (mm) to subject world coordinates: the
        subject image on the template grid is the subject resampled at ``M @ fixed_affine @ voxel``.
    """
    if int(seed) < 1:
        raise ValueError(f"seed must be at least 1 (ANTs seeds from the clock when given 0), got {seed}")
    ants = require_ants()
    import ants.config as ants_config  # the seed has no keyword; ANTsPy reads this module attribute

    its, shr, smo = _levels(np.shape(fixed), shrink, smoothing, iterations)
    previous = ants_config._random_seed
    ants_config._random_seed = int(seed)
    try:
        with tempfile.TemporaryDirectory(prefix="flowlet-prep-") as tmp:
            result = ants.registration(
                _to_ants(ants, fixed, fixed_affine),
                _to_ants(ants, moving, moving_affine),
                type_of_transform="Affine",
                mask=None
                if fixed_mask is None
                else _to_ants(ants, fixed_mask.astype(np.float32), fixed_affine),
                outprefix=os.path.join(tmp, "reg_"),
                aff_iterations=its,
                aff_shrink_factors=shr,
                aff_smoothing_sigmas=smo,
                aff_random_sampling_rate=float(sampling_rate),
            )
            transform = ants.read_transform(result["fwdtransforms"][0])
            return ants_affine_to_ras(transform.parameters, transform.fixed_parameters)
    finally:
        ants_config._random_seed = previous
