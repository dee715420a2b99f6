"""Subject-independent anatomy of the phantom, computed once per grid and cached.

Holds the template tissue maps and Harvard-Oxford labels on the output grid, the region of interest where
subjects are synthesised, and one *basis velocity field* per ageing structure: the gradient of the solution of
``∇²φ = s`` where ``s`` is the structure's (smoothed) source map, so that ``div v = s``. A subject's ageing
velocity is a linear combination ``v = Σ_r c_r v_r`` with ``c_r`` its commanded log-volume changes, and its
exponential (scaling and squaring) is a smooth diffeomorphic deformation that expands the ventricles and
contracts grey matter, white matter and hippocampus. Fields live on the 4 mm MNI grid ("coarse") because they
are smooth; images are sampled on the output grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft, ndimage

from flowlet.data.grid import Grid, mni_grid, resample_array
from flowlet.data.phantom.config import STRUCTURES
from flowlet.data.templates import brain_mask, load_atlas, load_tissue_priors

__all__ = ["COARSE_MM", "PhantomAnatomy", "phantom_anatomy"]

COARSE_MM = 4.0
#: Harvard-Oxford region names (after the spelling fix in templates) that drive their own sources.
VENTRICLE_NAMES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
HIPPOCAMPUS_NAMES = ("Left_Hippocampus", "Right_Hippocampus")
#: Zero padding (coarse voxels) around the box for the Dirichlet Poisson solve, so the box wall barely matters.
_POISSON_PAD = 12
#: Output voxels farther than this from the template brain are never inside a subject's head.
_ROI_MARGIN_MM = 14.0
#: Width (mm) of the Gaussian that turns label masks into smooth sources.
_SOURCE_SMOOTH_MM = 2.0


@dataclass(frozen=True)
class PhantomAnatomy:
    """Cached per-grid arrays (all read-only).

    Attributes:
        grid: output grid.
        to_coarse: output voxel index × ``to_coarse`` = coarse (4 mm) voxel index.
        coarse_shape: shape of the 4 mm grid.
        gm, wm, mask: ``grid.shape`` float32 template GM, WM and soft intracranial mask.
        labels: ``grid.shape`` int32 Harvard-Oxford max-probability labels inside the mask.
        table: label table (``index``, ``name``).
        roi: flat indices of output voxels that can be inside a head.
        roi_points: ``(3, N)`` float32 output-voxel coordinates of ``roi``.
        basis: structure -> ``(3, *coarse_shape)`` float32 velocity (coarse voxels) per unit log-volume change.
        centre: ``(3,)`` coarse-voxel centre of mass of the brain (head-size scaling is about it).
    """

    grid: Grid
    to_coarse: float
    coarse_shape: tuple[int, int, int]
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    table: pd.DataFrame
    roi: np.ndarray
    roi_points: np.ndarray
    basis: dict[str, np.ndarray]
    centre: np.ndarray


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=4)
def phantom_anatomy(grid: Grid) -> PhantomAnatomy:
    """Build (once per grid) everything a phantom subject needs that does not depend on the subject."""
    priors = load_tissue_priors(grid)
    mask = brain_mask(grid)
    atlas = load_atlas("harvard-oxford", grid)
    labels = np.where(mask, atlas.labels, 0).astype(np.int32)
    voxel = float(np.mean(grid.voxel_sizes))
    coarse = mni_grid(COARSE_MM)
    sources = _source_maps(priors, labels, atlas.table, voxel)
    basis = {
        name: _frozen(_velocity_from_source(resample_array(src, grid.affine, coarse)))
        for name, src in sources.items()
    }
    roi_mask = ndimage.distance_transform_edt(~mask) * voxel <= _ROI_MARGIN_MM
    roi = np.flatnonzero(roi_mask)
    points = np.stack(np.unravel_index(roi, grid.shape)).astype(np.float32)
    coarse_mask = resample_array(mask.astype(np.float32), grid.affine, coarse)
    centre = np.array(ndimage.center_of_mass(coarse_mask), dtype=np.float64)
    soft_mask = (priors["gm"] + priors["wm"] + priors["csf"]).astype(np.float32)
    return PhantomAnatomy(
        grid=grid,
        to_coarse=voxel / COARSE_MM,
        coarse_shape=coarse.shape,
        gm=priors["gm"],
        wm=priors["wm"],
        mask=_frozen(soft_mask),
        labels=_frozen(labels),
        table=atlas.table,
        roi=_frozen(roi),
        roi_points=_frozen(points),
        basis=basis,
        centre=centre,
    )


def _source_maps(
    priors: dict[str, np.ndarray], labels: np.ndarray, table: pd.DataFrame, voxel: float
) -> dict[str, np.ndarray]:
    """One source map per structure on the output grid: smoothed masks (ventricles, hippocampus) or priors."""
    ids = dict(zip(table["name"], table["index"]))
    sigma = _SOURCE_SMOOTH_MM / voxel
    vent = ndimage.gaussian_filter(
        np.isin(labels, [ids[n] for n in VENTRICLE_NAMES]).astype(np.float32), sigma
    )
    hippo = ndimage.gaussian_filter(
        np.isin(labels, [ids[n] for n in HIPPOCAMPUS_NAMES]).astype(np.float32), sigma
    )
    # Grey matter excludes the hippocampus (its own curve) and the ventricles (CSF in the priors anyway).
    gm = priors["gm"] * np.clip(1.0 - hippo - vent, 0.0, 1.0)
    maps = {"lateral_ventricles": vent, "grey_matter": gm, "white_matter": priors["wm"], "hippocampus": hippo}
    return {name: maps[name] for name in STRUCTURES}


def _velocity_from_source(source: np.ndarray) -> np.ndarray:
    """Solve ``∇²φ = source`` (Dirichlet, zero-padded box, DST-I) and return ``∇φ`` as ``(3, X, Y, Z)``.

    Args:
        source: ``(X, Y, Z)`` divergence to realise, per unit coefficient.
    """
    pad = _POISSON_PAD
    padded = np.pad(source.astype(np.float64), pad)
    spectrum = fft.dstn(padded, type=1, norm="ortho")
    eig = np.zeros(padded.shape)
    for axis, n in enumerate(padded.shape):
        k = np.arange(1, n + 1)
        shape = [1, 1, 1]
        shape[axis] = n
        eig = eig + (2 * np.cos(np.pi * k / (n + 1)) - 2).reshape(shape)
    phi = fft.dstn(spectrum / eig, type=1, norm="ortho")
    inner = tuple(slice(pad, pad + n) for n in source.shape)
    velocity = np.stack(np.gradient(phi))[(slice(None), *inner)]
    return velocity.astype(np.float32)
