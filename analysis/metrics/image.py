"""Whole-image quality metrics: 3D MS-SSIM, within-set diversity, and a fixed (training-free) feature extractor.

The feature extractor :func:`handcrafted_features` feeds the set-level distances (:func:`~analysis.metrics.distances.mmd`,
:func:`~analysis.metrics.distances.frechet_distance`) until a trained 3D network (e.g. the brain-age model's
penultimate layer) is available; any ``(N, F)`` matrix can be passed to those functions instead. It is
deterministic, scale-free (images are robust-normalised first) and documented feature by feature below.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "FEATURE_NAMES",
    "handcrafted_features",
    "ms_ssim",
    "ms_ssim_diversity",
    "percentile_to_unit",
    "standardise_features",
]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
_BLOCKS = 4


def percentile_to_unit(
    volume: np.ndarray, mask: np.ndarray | None = None, percentiles: tuple[float, float] = (0.5, 99.5)
) -> np.ndarray:
    """Map intensities to [0, 1] by clipping to percentiles of the foreground (``mask``, default non-zero voxels).

    The scale the image metrics compare on, computed in float64. The generator's input normalisation is another
    map, :func:`flowlet.data.preprocessing.robust_normalize` (to [-1, 1], float32, percentiles of the whole volume).

    Args:
        volume: ``(X, Y, Z)`` image.
        mask: ``(X, Y, Z)`` boolean foreground; default ``volume != 0`` (all voxels if that is empty).
        percentiles: lower and upper clip percentiles.

    Returns:
        ``(X, Y, Z)`` float64 array in [0, 1].
    """
    v = np.asarray(volume, dtype=np.float64)
    m = (v != 0) if mask is None else np.asarray(mask, bool)
    ref = v[m] if m.any() else v.ravel()
    lo, hi = np.percentile(ref, percentiles)
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float) -> tuple[float, float]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda a: ndimage.gaussian_filter(a, sigma, truncate=3.5 / sigma, mode="reflect")  # noqa: E731
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return float(luminance.mean()), float(cs.mean())


def ms_ssim(
    x: np.ndarray,
    y: np.ndarray,
    *,
    data_range: float | None = None,
    scales: int | None = None,
    sigma: float = 1.5,
    min_size: int = 8,
) -> float:
    """Multi-scale structural similarity of two 3D images (Wang et al. 2003, Gaussian window σ = 1.5).

    ``MS-SSIM = l_M^{w_M} · Π_j cs_j^{w_j}``; between scales the images are averaged over 2×2×2 blocks.
    The number of scales defaults to as many as possible (≤ 5) while the smallest side stays ≥ ``min_size``;
    the standard weights are truncated and renormalised to sum to 1. Negative contrast-structure means (rare,
    anticorrelated images) are clipped to 0.

    Args:
        x: ``(X, Y, Z)`` image.
        y: ``(X, Y, Z)`` image on the same grid and intensity scale.
        data_range: intensity range; default the joint max − min.
        scales: number of scales.
        sigma: Gaussian window width in voxels.
        min_size: smallest side allowed at the coarsest scale.

    Returns:
        MS-SSIM in [0, 1] (1 for identical images).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"ms_ssim needs two 3D images of one shape; got {x.shape} and {y.shape}")
    if data_range is None:
        data_range = float(max(x.max(), y.max()) - min(x.min(), y.min())) or 1.0
    if scales is None:
        scales = int(np.clip(np.floor(np.log2(min(x.shape) / min_size)) + 1, 1, len(MS_SSIM_WEIGHTS)))
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    value = 1.0
    for j in range(scales):
        lum, cs = _ssim_terms(x, y, data_range, sigma)
        value *= max(cs, 0.0) ** weights[j]
        if j == scales - 1:
            value *= max(lum, 0.0) ** weights[j]
        else:
            x, y = _halve(x), _halve(y)
    return float(value)


def _halve(a: np.ndarray) -> np.ndarray:
    s = [d - d % 2 for d in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))


def ms_ssim_diversity(
    images: Sequence[np.ndarray], *, max_pairs: int = 200, seed: int = 0, **kwargs: float
) -> dict[str, float]:
    """Mean pairwise MS-SSIM within one set: high values mean low diversity (possible mode collapse).

    Each image is robust-normalised to [0, 1] first, so sets of different intensity scale are comparable.

    Args:
        images: ``N`` arrays of shape ``(X, Y, Z)`` (N ≥ 2).
        max_pairs: at most this many distinct pairs, drawn without replacement with ``seed``.
        seed: random seed of the pair draw.
        **kwargs: passed to :func:`ms_ssim`.

    Returns:
        ``{"ms_ssim_mean", "ms_ssim_sd", "n_pairs"}``.
    """
    n = len(images)
    if n < 2:
        raise ValueError(f"ms_ssim_diversity needs at least 2 images, got {n}")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[k] for k in np.sort(pick)]
    norm = [percentile_to_unit(im) for im in images]
    values = np.array([ms_ssim(norm[i], norm[j], data_range=1.0, **kwargs) for i, j in pairs])
    return {
        "ms_ssim_mean": float(values.mean()),
        "ms_ssim_sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "n_pairs": len(pairs),
    }


def _feature_names() -> list[str]:
    names = [f"intensity_p{p}" for p in _PERCENTILES]
    names += [
        "intensity_mean",
        "intensity_sd",
        "intensity_skew",
        "intensity_kurtosis",
        "histogram_entropy_bits",
    ]
    names += [
        "gradient_mean",
        "gradient_sd",
        "gradient_p90",
        "laplacian_abs_mean",
        "fine_energy_ratio",
        "local_sd_mean",
        "foreground_fraction",
    ]
    names += [
        f"block_mean_{i}_{j}_{k}" for i in range(_BLOCKS) for j in range(_BLOCKS) for k in range(_BLOCKS)
    ]
    return names


#: Names of the columns of :func:`handcrafted_features`, in order.
FEATURE_NAMES: tuple[str, ...] = tuple(_feature_names())


def handcrafted_features(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A fixed, training-free feature vector of one 3D image (radiomics-like), for set-level distances.

    The image is first mapped to [0, 1] by :func:`percentile_to_unit`. Features, computed in the foreground
    (``mask``, default non-zero voxels):

    * intensity percentiles 5–95, mean, sd, skewness, kurtosis and the entropy of a 32-bin histogram (contrast);
    * gradient-magnitude mean, sd and 90th percentile, mean |Laplacian|, the fine-scale energy ratio
      ``‖x − G₁x‖ / ‖x‖`` and the mean local sd in 3³ windows (sharpness and noise: blur lowers all of them);
    * the foreground fraction of the grid (head size) and the means of 4×4×4 blocks of the normalised image
      (coarse anatomy layout: ventricle size, atrophy).

    Args:
        volume: ``(X, Y, Z)`` image.
        mask: optional ``(X, Y, Z)`` boolean foreground.

    Returns:
        ``(F,)`` float64 vector, ``F = len(FEATURE_NAMES)``.
    """
    v = np.asarray(volume, np.float64)
    m = (v != 0) if mask is None else np.asarray(mask, bool)
    if not m.any():
        m = np.ones(v.shape, bool)
    x = percentile_to_unit(v, m)
    inside = x[m]
    hist = np.histogram(inside, bins=32, range=(0.0, 1.0))[0].astype(np.float64)
    hist = hist[hist > 0] / hist.sum()
    grad = np.sqrt(sum(g**2 for g in np.gradient(x)))[m]
    smooth = ndimage.gaussian_filter(x, 1.0)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 3) - ndimage.uniform_filter(x, 3) ** 2, 0.0))[
        m
    ]
    values = [
        *np.percentile(inside, _PERCENTILES),
        inside.mean(),
        inside.std(),
        float(np.nan_to_num(stats.skew(inside))),
        float(np.nan_to_num(stats.kurtosis(inside))),
        float(-(hist * np.log2(hist)).sum()),
    ]
    values += [
        grad.mean(),
        grad.std(),
        np.percentile(grad, 90),
        np.abs(ndimage.laplace(x))[m].mean(),
        float(np.linalg.norm(x - smooth) / max(np.linalg.norm(x), 1e-12)),
        local_sd.mean(),
        m.mean(),
    ]
    values += list(_block_means(x))
    return np.asarray(values, dtype=np.float64)


def _block_means(x: np.ndarray) -> np.ndarray:
    edges = [np.linspace(0, s, _BLOCKS + 1).round().astype(int) for s in x.shape]
    out = np.empty((_BLOCKS,) * 3)
    for i in range(_BLOCKS):
        for j in range(_BLOCKS):
            for k in range(_BLOCKS):
                block = x[
                    edges[0][i] : edges[0][i + 1],
                    edges[1][j] : edges[1][j + 1],
                    edges[2][k] : edges[2][k + 1],
                ]
                out[i, j, k] = block.mean()
    return out.ravel()


def standardise_features(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score feature matrices with the mean and sd of ``reference`` (constant columns are left centred).

    Args:
        reference: ``(N, F)`` features of the real set.
        *others: further ``(M, F)`` matrices (synthetic sets).

    Returns:
        ``[reference_z, *others_z]``.
    """
    ref = np.asarray(reference, np.float64)
    mu, sd = ref.mean(0), ref.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(np.asarray(a, np.float64) - mu) / sd for a in (ref, *others)]
