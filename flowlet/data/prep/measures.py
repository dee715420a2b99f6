"""Pure array maths for preprocessing: head and brain masks, image similarity and robust outlier scores.

Nothing here reads or writes files or needs ANTs, so every function is tested on hand-built arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowlet.data.preprocessing import otsu_threshold

__all__ = [
    "QcLimits",
    "dice",
    "head_mask",
    "intensity_brain_mask",
    "largest_component",
    "mutual_information",
    "normalized_cross_correlation",
    "otsu_threshold",
    "qc_problems",
    "refine_brain_mask",
    "robust_z",
    "scale_factors",
]

#: Robust z-scores use the MAD scaled by this factor, which makes it estimate the SD of a normal sample.
_MAD_TO_SD = 1.4826
_EPS = 1e-12


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean array (all False stays all False)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def head_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of a raw scan: above the Otsu threshold of the non-zero voxels, largest component, holes filled.

    Used to restrict N4's bias fit to the head (air would only add noise to the fit).
    """
    image = np.asarray(image, dtype=np.float32)
    positive = image[image > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    # Half the Otsu threshold keeps dark tissue (CSF, bone marrow edges) that the bias fit should still see.
    mask = image > 0.5 * otsu_threshold(positive)
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(largest_component(mask))


def intensity_brain_mask(
    image: np.ndarray, head: np.ndarray | None = None, *, level: float = 0.7, erosion_vox: int = 3
) -> np.ndarray:
    """A rough brain mask of a raw head scan from its intensities alone (no template).

    Tissue brighter than ``level`` × the Otsu threshold of the head is eroded by ``erosion_vox`` voxels, which
    cuts the thin bridges between brain and scalp across the dark skull; the largest piece (the brain) is dilated
    back inside the head and its holes (ventricles) filled. On T1w heads it overlaps a reference brain mask with a
    Dice of about 0.7–0.95: good enough to start a registration and to check one, not to be the final mask.

    Args:
        image: ``(X, Y, Z)`` T1w intensities (bias-corrected works best).
        head: optional head mask (default :func:`head_mask`).
        level: tissue threshold as a fraction of the head's Otsu threshold.
        erosion_vox: erosion (and dilation) in voxels.

    Returns:
        Boolean ``(X, Y, Z)`` mask (all False for an empty image).
    """
    image = np.asarray(image, dtype=np.float32)
    head = head_mask(image) if head is None else np.asarray(head, dtype=bool)
    if not head.any():
        return np.zeros(image.shape, dtype=bool)
    tissue = head & (image > level * otsu_threshold(image[head]))
    core = largest_component(ndimage.binary_erosion(tissue, iterations=int(erosion_vox)))
    if not core.any():  # too thin to survive the erosion: keep the tissue itself
        core = largest_component(tissue)
    brain = ndimage.binary_dilation(core, iterations=int(erosion_vox)) & head
    return ndimage.binary_fill_holes(brain)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A ∩ B| / (|A| + |B|)`` of two boolean arrays; 0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 0.0


def scale_factors(matrix: np.ndarray) -> np.ndarray:
    """Scale factors of an affine's linear part: the singular values of ``matrix[:3, :3]``, largest first.

    Rotations do not change them; their product is ``|det|``. For the template → subject map of a registration,
    values near 1 mean a head the template's size, and very unequal values a squashed (failed) fit.
    """
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return np.linalg.svd(linear, compute_uv=False)


def refine_brain_mask(
    image: np.ndarray, prior: np.ndarray, margin_vox: int = 2, *, low: float = 0.5, high: float = 1.5
) -> np.ndarray:
    """Brain mask from a registered template mask, adjusted to the subject's intensities near its border.

    Voxels deeper than ``margin_vox`` inside ``prior`` are kept whatever their intensity (ventricles are dark).
    In the band ``margin_vox`` voxels either side of the prior's border, a voxel is brain when its intensity lies
    in ``[low · median, high · p99]`` of the deep voxels: this drops air, bone and CSF outside the cortex (dark on
    T1) and fat (very bright), and lets the mask follow a brain slightly larger than the template's. The result
    is the largest component with holes filled.

    Args:
        image: ``(X, Y, Z)`` registered T1w image.
        prior: ``(X, Y, Z)`` boolean template brain mask on the same grid.
        margin_vox: half-width of the border band in voxels.
        low: lower bound as a fraction of the deep-brain median.
        high: upper bound as a multiple of the deep-brain 99th percentile.

    Returns:
        Boolean ``(X, Y, Z)`` mask.
    """
    image = np.asarray(image, dtype=np.float32)
    prior = np.asarray(prior, dtype=bool)
    if image.shape != prior.shape:
        raise ValueError(f"image shape {image.shape} does not match the prior mask shape {prior.shape}")
    if margin_vox < 1:
        return prior.copy()
    # Euclidean distances, so that the band has the same width in every direction.
    core = ndimage.distance_transform_edt(prior) > margin_vox
    if int(core.sum()) < 10:
        return prior.copy()
    band = (ndimage.distance_transform_edt(~prior) <= margin_vox) & ~core
    deep = image[core]
    lower, upper = low * float(np.median(deep)), high * float(np.percentile(deep, 99))
    mask = core | (band & (image >= lower) & (image <= upper))
    return ndimage.binary_fill_holes(largest_component(mask))


def _voxel_pairs(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The float64 voxel values of two same-shaped images (inside ``mask`` when given)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} and {b.shape}")
    return (a[mask], b[mask]) if mask is not None else (a, b)


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside ``mask`` when given); 0 when either is constant."""
    a, b = _voxel_pairs(a, b, mask)
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / denom) if denom > _EPS else 0.0


def mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32) -> float:
    """Mutual information in nats of two images from a ``bins × bins`` joint histogram (inside ``mask``)."""
    a, b = _voxel_pairs(a, b, mask)
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    total = joint.sum()
    if total <= 0:
        return 0.0
    p = joint / total
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (px @ py)[nz])))


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(x − median) / (1.4826 · MAD)`` per value; NaN stays NaN, and a zero MAD gives 0 for every finite value.

    Args:
        values: ``(N,)`` measurements of one QC quantity across subjects.

    Returns:
        ``(N,)`` float64 robust z-scores.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if not finite.any():
        return out
    centre = float(np.median(values[finite]))
    spread = _MAD_TO_SD * float(np.median(np.abs(values[finite] - centre)))
    out[finite] = 0.0 if spread < _EPS else (values[finite] - centre) / spread
    return out


@dataclass(frozen=True)
class QcLimits:
    """Pass/fail limits of a preprocessed scan (calibrated on real raw heads, see ``docs/prep.md``).

    Attributes:
        min_brain_mask_dice: least Dice of the subject's own intensity brain mask, carried onto the grid, with the
            template brain mask (a misregistered head overlaps it badly).
        min_ncc: least correlation with the template inside its brain mask.
        determinant: allowed ``[low, high]`` of ``|det|`` of the template → subject map (head volume relative to
            the template's).
        scale: allowed ``[low, high]`` of each scale factor of that map.
    """

    # On 30 raw IXI heads that all registered correctly the ranges were: Dice 0.81-0.95, NCC 0.43-0.60,
    # determinant 0.60-0.87, scale factors 0.76-1.02 (docs/prep.md); the limits leave a margin below the worst
    # good scan, and the upper limits stop a head squeezed into (or a brain blown up to) the template's brain box.
    min_brain_mask_dice: float = 0.75
    min_ncc: float = 0.35
    determinant: tuple[float, float] = (0.45, 1.30)
    scale: tuple[float, float] = (0.65, 1.30)

    def __post_init__(self) -> None:
        for name in ("determinant", "scale"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise ValueError(f"QcLimits.{name}: expected 0 < low < high, got ({low}, {high})")


def qc_problems(qc: Mapping[str, float], limits: QcLimits) -> list[str]:
    """Why a scan fails QC: one short reason per broken limit (empty when it passes; a missing or NaN measure
    fails)."""

    def value(name: str) -> float:
        v = qc.get(name, np.nan)
        return float(v) if v is not None else np.nan

    problems = []
    dice_value, ncc = value("brain_mask_dice"), value("ncc")
    if not dice_value >= limits.min_brain_mask_dice:
        problems.append(f"brain_mask_dice {dice_value:.3f} < {limits.min_brain_mask_dice:g}")
    if not ncc >= limits.min_ncc:
        problems.append(f"ncc {ncc:.3f} < {limits.min_ncc:g}")
    det = value("affine_determinant")
    if not limits.determinant[0] <= det <= limits.determinant[1]:
        problems.append(
            f"affine_determinant {det:.3f} outside [{limits.determinant[0]:g}, {limits.determinant[1]:g}]"
        )
    low, high = value("scale_min"), value("scale_max")
    if not (limits.scale[0] <= low and high <= limits.scale[1]):
        problems.append(
            f"scale factors {low:.3f}..{high:.3f} outside [{limits.scale[0]:g}, {limits.scale[1]:g}]"
        )
    return problems
