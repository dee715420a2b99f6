"""Deformable registration of tissue maps (diffeomorphism-free demons), to carry an atlas onto a subject.

A fixed atlas on the MNI grid cannot see a hippocampus that is 10 % smaller but also shifted by a smooth warp.
As in atlas-based volumetry, the template is registered to each subject and the atlas labels (and the tissue
priors) are carried along. Both images are *tissue index images* ``csf + 2 gm + 3 wm`` (so any intensity scale
works). The map is: template voxel = ``x + u(x)`` for subject voxel ``x``; a moments-based similarity transform
(centre of mass, isotropic scale from the brain volumes) initialises ``u``; Thirion's demons forces, smoothed
(fluid) and regularised (diffusion) by Gaussians, refine it over a coarse-to-fine pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Gaussian kernels are cut at this many sigmas (the smoothing is a regulariser, not a measurement).
_TRUNCATE = 2.5

__all__ = [
    "block_mean",
    "demons_register",
    "similarity_displacement",
    "tissue_index",
    "upsample_displacement",
    "warp",
]


def tissue_index(csf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """``csf + 2·gm + 3·wm``: a scale-free intensity image from tissue probabilities ``(X, Y, Z)``."""
    return np.asarray(csf, np.float32) + 2.0 * np.asarray(gm, np.float32) + 3.0 * np.asarray(wm, np.float32)


def block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Average over ``k × k × k`` blocks (edge-padded to a multiple of ``k``): ``(X, Y, Z)`` → ``(⌈X/k⌉, ...)``."""
    if k == 1:
        return np.asarray(x, np.float32)
    pad = [(0, (-s) % k) for s in x.shape]
    x = np.pad(np.asarray(x, np.float32), pad, mode="edge")
    s = x.shape
    return x.reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k).mean(axis=(1, 3, 5))


def _identity(shape: Sequence[int]) -> np.ndarray:
    return np.indices(shape, dtype=np.float32)


def warp(x: np.ndarray, displacement: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Sample ``x`` at ``identity + displacement`` (voxel units): ``(X, Y, Z)`` with ``(3, X, Y, Z)`` → ``(X, Y, Z)``.

    Outside ``x`` the nearest edge value is used (the template background is 0 there anyway).
    """
    coords = _identity(displacement.shape[1:]) + displacement
    return ndimage.map_coordinates(x, coords, order=order, mode="nearest")


def similarity_displacement(fixed_mask: np.ndarray, moving_mask: np.ndarray) -> np.ndarray:
    """Displacement ``(3, X, Y, Z)`` of the similarity map matching centres of mass and volumes of two masks.

    ``moving voxel = c_m + s (x − c_f)`` with ``s = (V_m / V_f)^(1/3)``.
    """
    f = np.asarray(fixed_mask, np.float64)
    m = np.asarray(moving_mask, np.float64)
    if f.sum() <= 0 or m.sum() <= 0:
        raise ValueError("similarity_displacement: a mask is empty; is the image blank?")
    c_f = np.array(ndimage.center_of_mass(f))
    c_m = np.array(ndimage.center_of_mass(m))
    s = float((m.sum() / f.sum()) ** (1.0 / 3.0))
    ident = _identity(f.shape)
    target = c_m[:, None, None, None] + s * (ident - c_f[:, None, None, None])
    return (target - ident).astype(np.float32)


def upsample_displacement(u: np.ndarray, k: int, shape: Sequence[int]) -> np.ndarray:
    """Coarse displacement (coarse voxels) → fine grid (fine voxels); coarse voxel j sits at fine k·j + (k−1)/2."""
    if k == 1:
        return u
    fine = _identity(shape)
    coords = (fine - (k - 1) / 2.0) / k
    return np.stack([k * ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in u])


def _downsample(u: np.ndarray, k: int) -> np.ndarray:
    return np.stack([block_mean(c, k) / k for c in u])


def demons_register(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    init: np.ndarray | None = None,
    factors: Sequence[int] = (4, 2),
    iterations: int | Sequence[int] = 30,
    sigma_fluid: float = 1.0,
    sigma_diffusion: float = 1.5,
) -> np.ndarray:
    """Demons registration: find ``u`` with ``moving(x + u(x)) ≈ fixed(x)``.

    Args:
        fixed: ``(X, Y, Z)`` subject image.
        moving: ``(X, Y, Z)`` template image on the same grid and intensity scale.
        init: optional initial displacement ``(3, X, Y, Z)`` in voxels (e.g. :func:`similarity_displacement`).
        factors: pyramid downsampling factors, coarse to fine; the finest level is the last entry (it need not be 1:
            the displacement is smooth, so a 2× coarser finest level saves time at little cost).
        iterations: iterations per level (one number or one per level).
        sigma_fluid: Gaussian width (voxels of the level) smoothing each update.
        sigma_diffusion: Gaussian width smoothing the accumulated displacement.

    Returns:
        ``(3, X, Y, Z)`` float32 displacement in voxels of the input grid.
    """
    fixed, moving = np.asarray(fixed, np.float32), np.asarray(moving, np.float32)
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {fixed.shape} and moving {moving.shape} must share one grid")
    iters = [iterations] * len(factors) if isinstance(iterations, int) else list(iterations)
    shape = fixed.shape
    u_full = np.zeros((3, *shape), np.float32) if init is None else np.asarray(init, np.float32)
    for k, n_iter in zip(factors, iters):
        f, m = block_mean(fixed, k), block_mean(moving, k)
        u = _downsample(u_full, k)[:, : f.shape[0], : f.shape[1], : f.shape[2]]
        u = _demons_level(f, m, u, n_iter, sigma_fluid, sigma_diffusion)
        u_full = upsample_displacement(u, k, shape)
    return u_full.astype(np.float32)


def _demons_level(
    f: np.ndarray, m: np.ndarray, u: np.ndarray, n_iter: int, sigma_fluid: float, sigma_diffusion: float
) -> np.ndarray:
    ident = _identity(f.shape)
    grad_f = np.stack(np.gradient(f))
    for _ in range(n_iter):
        coords = ident + u
        warped = ndimage.map_coordinates(m, coords, order=1, mode="nearest")
        # Symmetric (ESM) gradient: the mean of the fixed and the warped moving gradients converges faster.
        grad = 0.5 * (grad_f + np.stack(np.gradient(warped)))
        diff = warped - f
        denom = (grad**2).sum(0) + diff**2
        scale = np.where(denom > 1e-6, -diff / np.maximum(denom, 1e-6), 0.0)
        update = np.stack([ndimage.gaussian_filter(scale * g, sigma_fluid, truncate=_TRUNCATE) for g in grad])
        u = np.stack([ndimage.gaussian_filter(c, sigma_diffusion, truncate=_TRUNCATE) for c in u + update])
    return u.astype(np.float32)
