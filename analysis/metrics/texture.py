"""High-frequency texture of an image inside a mask: a noise level that salt-and-pepper speckle raises.

The residual of a 3×3×3 median filter keeps what is not smooth anatomy: speckle, noise and tissue edges. Its
root-mean-square inside the eroded mask (``statistic="rms"``, the default) grows with isolated bright and dark voxels
(10 % of the voxels flipped more than doubles it on 4 mm phantoms) as well as with dense noise; its median absolute
deviation (``"mad"``, scaled to a Gaussian SD) ignores sparse impulses and measures only the dense noise floor.
Tissue edges contribute to both in the same way for real and synthetic scans of one grid, so the ratio of a
synthetic to a real set is the useful number (images robust-normalised the same way, e.g. to [0, 1]).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MAD_TO_SD", "median_residual_noise"]

#: Median absolute deviation → standard deviation of a Gaussian.
MAD_TO_SD = 1.4826


def median_residual_noise(
    image: np.ndarray, mask: np.ndarray | None = None, *, erode: int = 1, statistic: str = "rms"
) -> float:
    """Spread of ``image − median_filter(image, 3)`` inside ``mask`` (eroded by ``erode`` voxels).

    Args:
        image: ``(X, Y, Z)`` intensities, robust-normalised so that values of different images are comparable.
        mask: ``(X, Y, Z)`` boolean brain mask (default: ``image != 0``).
        erode: binary erosions of the mask, so that the brain boundary does not count as texture.
        statistic: ``"rms"`` (root-mean-square of the residual) or ``"mad"`` (1.4826 × its median absolute
            deviation).

    Returns:
        The statistic over the mask; NaN for an empty mask.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> flat = np.ones((16, 16, 16))
        >>> median_residual_noise(flat + 0.1 * rng.standard_normal(flat.shape)) > median_residual_noise(flat)
        True
    """
    if statistic not in ("rms", "mad"):
        raise ValueError(f"unknown statistic {statistic!r}; choose from ['rms', 'mad']")
    image = np.asarray(image, dtype=np.float32)
    mask = image != 0 if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if erode > 0:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    if not mask.any():
        return float("nan")
    residual = (image - ndimage.median_filter(image, size=3, mode="nearest"))[mask].astype(np.float64)
    if statistic == "mad":
        return float(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))))
    return float(np.sqrt(np.mean(residual**2)))
