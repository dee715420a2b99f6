"""From Haar-space states to files: decode, crop and scale to the export range, choose the affine, write NIfTI.

The export follows the official scripts (spec §4): IDWT, clamp to [-1, 1], centre crop to the save size,
``(x + 1) / 2``, clamp to [0, 1], float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from flowlet.data.grid import mni_grid
from flowlet.data.nifti import save_volume
from flowlet.data.preprocessing import crop_start
from flowlet.wavelets import idwt3d

__all__ = ["AFFINES", "decode_and_export", "resolve_affine", "write_volumes"]

AFFINES = ("mni", "identity")


def decode_and_export(wavelet: Tensor, save_size: Sequence[int], *, clamp: bool = True) -> np.ndarray:
    """Haar states to export-ready volumes (spec §4).

    IDWT -> clamp to [-1, 1] -> centre crop to ``save_size`` -> ``(x + 1) / 2`` -> clamp to [0, 1] -> float32.

    Args:
        wavelet: ``(N, 8, d, h, w)``.
        save_size: ``(X, Y, Z)`` no larger than ``(2d, 2h, 2w)``.
        clamp: apply both clamps (official); False keeps the raw range for diagnostics.

    Returns:
        ``(N, X, Y, Z)`` float32 array.
    """
    image = idwt3d(wavelet.float())
    if clamp:
        image = image.clamp(-1.0, 1.0)
    if len(save_size) != 3 or any(int(s) > g for s, g in zip(save_size, image.shape[2:])):
        raise ValueError(
            f"save size {tuple(save_size)} must not exceed the generated size {tuple(image.shape[2:])} on any axis"
        )
    start = crop_start(image.shape[2:], save_size)
    sl = tuple(slice(a, a + int(s)) for a, s in zip(start, save_size))
    image = image[:, 0, sl[0], sl[1], sl[2]]
    image = (image + 1.0) / 2.0
    if clamp:
        image = image.clamp(0.0, 1.0)
    return image.cpu().numpy().astype(np.float32, copy=False)


def resolve_affine(kind: str, shape: Sequence[int], bundle_affine: np.ndarray | None = None) -> np.ndarray:
    """The affine written on exported volumes.

    Args:
        kind: ``"mni"``: MNI152 2 mm for 91x109x91, MNI152 1 mm for 182x218x182, else ``bundle_affine``;
            ``"identity"``: the official 1 mm identity (spec §11.21).
        shape: exported volume shape.
        bundle_affine: the affine stored with the model, if any.

    Raises:
        ValueError: unknown kind, or ``mni`` for a shape with no known affine and no bundle affine.
    """
    shape = tuple(int(s) for s in shape)
    if kind == "identity":
        return np.eye(4)
    if kind != "mni":
        raise ValueError(f"unknown affine '{kind}'; choose from {list(AFFINES)}")
    for voxel_size in (2, 1):
        grid = mni_grid(voxel_size)
        if shape == grid.shape:
            return grid.affine.copy()
    if bundle_affine is not None:
        return np.asarray(bundle_affine, dtype=np.float64)
    raise ValueError(
        f"no MNI affine is known for volumes of shape {shape} and the checkpoint stores none; "
        "pass --affine identity (official behaviour) or export at 91x109x91 / 182x218x182"
    )


def write_volumes(volumes: np.ndarray, paths: Sequence[str | os.PathLike], affine: np.ndarray) -> list[Path]:
    """Write ``volumes[i]`` ``(X, Y, Z)`` to ``paths[i]`` atomically as float32 NIfTI with ``affine``."""
    if len(volumes) != len(paths):
        raise ValueError(f"{len(volumes)} volumes but {len(paths)} paths")
    return [save_volume(p, v, affine) for v, p in zip(volumes, paths)]
