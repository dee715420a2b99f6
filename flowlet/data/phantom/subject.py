"""One ageing-phantom subject: smooth anatomical change with age plus subject, sex and site variability.

The sampling map from a subject voxel ``x`` to template coordinates is ``y = A(x) + u_age(A(x))``:
``A`` is age-independent (head size about the brain centre, sex offset, random smooth warp) and ``u_age`` is the
exponential of the ageing velocity (see :mod:`.anatomy`). The intracranial mask is sampled through ``A`` only,
so the intracranial volume of a subject does not change with age; grey and white matter are sampled through the
full map and the remaining intracranial space is CSF (ventricles and sulci widen as tissue contracts).
Ground-truth volumes are measured on what was produced, so they are exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from flowlet.data.grid import mni_grid
from flowlet.data.phantom.anatomy import COARSE_MM, PhantomAnatomy, phantom_anatomy
from flowlet.data.phantom.config import STRUCTURES, PhantomConfig

__all__ = ["INTRACRANIAL", "PhantomSubject", "make_phantom"]

#: Region name of the whole-intracranial rows in ``volumes``.
INTRACRANIAL = "intracranial"
_SQUARINGS = 4
_CLIP_Z = 2.5


@dataclass(frozen=True)
class PhantomSubject:
    """A synthetic T1-weighted subject with its ground truth.

    Attributes:
        image: ``(X, Y, Z)`` float32 T1-like intensities (0 outside the head).
        labels: ``(X, Y, Z)`` int32 warped Harvard-Oxford labels (0 = background).
        tissue: ``{"gm", "wm", "csf"}`` ``(X, Y, Z)`` float32 warped tissue probabilities.
        volumes: tidy table ``region, tissue, volume_mm3``: per label ``all`` (voxel count × voxel volume, equal to
            the label map) and ``gm``/``wm``/``csf`` (probability × voxel volume); plus region ``intracranial``.
        affine: ``(4, 4)`` MNI affine of the grid.
        age, sex, site: the demographics it was made with.
        log_volume_change: commanded log-volume change per structure (before the realisation gain).
    """

    image: np.ndarray
    labels: np.ndarray
    tissue: dict[str, np.ndarray]
    volumes: pd.DataFrame
    affine: np.ndarray
    age: float
    sex: str
    site: str
    log_volume_change: dict[str, float]


@dataclass(frozen=True)
class _Draws:
    """All random draws of one subject; none depends on age, so a seed fixes the individual across ages."""

    rate_factor: np.ndarray
    baseline: np.ndarray
    head_z: float
    warp: np.ndarray
    bias: np.ndarray
    contrast: np.ndarray
    noise_seed: np.random.SeedSequence


def _draw(rng: np.random.Generator, config: PhantomConfig, coarse_shape: tuple[int, ...]) -> _Draws:
    n = len(STRUCTURES)
    rate = np.clip(1 + config.rate_sd * np.clip(rng.standard_normal(n), -_CLIP_Z, _CLIP_Z), 0.1, None)
    baseline = np.array([config.baseline_sd[s] for s in STRUCTURES]) * np.clip(
        rng.standard_normal(n), -_CLIP_Z, _CLIP_Z
    )
    head_z = float(np.clip(rng.standard_normal(), -_CLIP_Z, _CLIP_Z))
    warp = rng.standard_normal((3, *coarse_shape), dtype=np.float32)
    bias = rng.standard_normal(coarse_shape, dtype=np.float32)
    contrast = rng.standard_normal(3)
    noise_seed = np.random.SeedSequence(rng.integers(0, 2**63, dtype=np.int64))
    return _Draws(rate, baseline, head_z, warp, bias, contrast, noise_seed)


def _smooth_unit(noise: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian-smooth white noise (``(X, Y, Z)`` or ``(C, X, Y, Z)``) and rescale to unit RMS."""
    if noise.ndim == 3:
        smooth = ndimage.gaussian_filter(noise, sigma_vox, mode="reflect")
    else:
        smooth = np.stack([ndimage.gaussian_filter(c, sigma_vox, mode="reflect") for c in noise])
    return (smooth / np.sqrt(np.mean(smooth**2) + 1e-12)).astype(np.float32)


def _exp_velocity(velocity: np.ndarray) -> np.ndarray:
    """Displacement of ``exp(velocity)`` by scaling and squaring: ``(3, X, Y, Z)`` in voxels."""
    disp = velocity / 2**_SQUARINGS
    identity = np.indices(velocity.shape[1:], dtype=np.float32)
    for _ in range(_SQUARINGS):
        where = identity + disp
        disp = disp + np.stack([ndimage.map_coordinates(c, where, order=1, mode="nearest") for c in disp])
    return disp


def _sample(fields: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in fields])


def _commanded_changes(age: float, draws: _Draws, config: PhantomConfig) -> dict[str, float]:
    return {
        s: float(
            draws.rate_factor[i] * config.curves[s].log_volume(age, config.reference_age) + draws.baseline[i]
        )
        for i, s in enumerate(STRUCTURES)
    }


def _site_index(site: int | str, config: PhantomConfig) -> int:
    names = [s.name for s in config.sites]
    if isinstance(site, str):
        if site not in names:
            raise ValueError(f"unknown site '{site}'; choose from {names}")
        return names.index(site)
    if not 0 <= int(site) < len(names):
        raise ValueError(f"site index {site} out of range; the config defines {len(names)} sites {names}")
    return int(site)


def make_phantom(
    age: float,
    *,
    sex: str = "F",
    site: int | str = 0,
    seed: int | np.random.SeedSequence = 0,
    config: PhantomConfig | None = None,
) -> PhantomSubject:
    """Synthesise one subject of the ageing phantom.

    Args:
        age: age in years (the curves are defined on about 8–90).
        sex: ``"F"`` or ``"M"`` (males get ``+sex_volume_offset/2`` log intracranial volume, females ``−``).
        site: site index or name from ``config.sites``.
        seed: individual identity; the same seed at two ages is the same person (only ageing differs).
        config: phantom configuration (default: the packaged ``ageing.yaml`` at 2 mm).

    Returns:
        :class:`PhantomSubject` on ``mni_grid(config.voxel_size)``.

    Example:
        >>> subject = make_phantom(70.0, sex="M", site=1, seed=3)  # doctest: +SKIP
        >>> subject.image.shape
        (91, 109, 91)
    """
    config = config or PhantomConfig.from_yaml()
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if not np.isfinite(age) or not 0 <= age <= 120:
        raise ValueError(f"age must be a number of years in [0, 120], got {age!r}")
    site_idx = _site_index(site, config)
    anatomy = phantom_anatomy(mni_grid(config.voxel_size))
    draws = _draw(np.random.default_rng(seed), config, anatomy.coarse_shape)
    changes = _commanded_changes(float(age), draws, config)
    template_age, template_head = _template_coordinates(anatomy, draws, changes, config, sex)
    tissue, labels = _warp_maps(anatomy, template_age, template_head)
    image = _synthesise(anatomy, tissue, draws, config, site_idx)
    volumes = _measure(anatomy, tissue, labels)
    shape = anatomy.grid.shape
    full = {k: _to_grid(v, anatomy.roi, shape) for k, v in tissue.items() if k != "mask"}
    return PhantomSubject(
        image=_to_grid(image, anatomy.roi, shape),
        labels=_to_grid(labels, anatomy.roi, shape, np.int32),
        tissue=full,
        volumes=volumes,
        affine=np.array(anatomy.grid.affine),
        age=float(age),
        sex=sex,
        site=config.sites[site_idx].name,
        log_volume_change=changes,
    )


def _template_coordinates(
    anatomy: PhantomAnatomy, draws: _Draws, changes: dict[str, float], config: PhantomConfig, sex: str
) -> tuple[np.ndarray, np.ndarray]:
    """Template-space output-voxel coordinates ``(3, N)`` of the ROI: with ageing and head-only.

    Both maps are smooth, so they are composed on the coarse grid and upsampled linearly; only the tissue
    maps themselves are interpolated at every output voxel.
    """
    velocity = sum(-config.realisation_gain[s] * changes[s] * anatomy.basis[s] for s in STRUCTURES)
    u_age = _exp_velocity(np.asarray(velocity, dtype=np.float32))
    warp = _smooth_unit(draws.warp, config.warp_smoothness_mm / COARSE_MM) * np.float32(
        config.warp_mm / COARSE_MM
    )
    log_icv = config.head_size_sd * draws.head_z + (0.5 if sex == "M" else -0.5) * config.sex_volume_offset
    scale = np.float32(np.exp(log_icv / 3.0))
    grid = np.indices(anatomy.coarse_shape, dtype=np.float32)
    centre = anatomy.centre.astype(np.float32)[:, None, None, None]
    head = centre + (grid - centre) / scale + warp
    aged = head + _sample(u_age, head)
    inv = np.float32(1.0 / anatomy.to_coarse)
    return (_coarse_to_roi(aged, anatomy) * inv, _coarse_to_roi(head, anatomy) * inv)


def _coarse_to_roi(field: np.ndarray, anatomy: PhantomAnatomy) -> np.ndarray:
    """Linearly upsample a ``(3, *coarse_shape)`` field to the output grid and take the ROI: ``(3, N)``."""
    factor = round(1.0 / anatomy.to_coarse)
    for axis in (1, 2, 3):
        field = _upsample_axis(field, axis, factor)
    return field.reshape(3, -1)[:, anatomy.roi]


def _upsample_axis(field: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Linear interpolation by ``factor`` (1 or 2) along ``axis``, endpoints kept: n -> (n - 1)·factor + 1."""
    if factor == 1:
        return field
    if factor != 2:
        raise ValueError(f"only 2x upsampling is supported, got {factor}")
    n = field.shape[axis]
    shape = list(field.shape)
    shape[axis] = 2 * n - 1
    out = np.empty(shape, dtype=field.dtype)
    index = [slice(None)] * field.ndim
    index[axis] = slice(0, None, 2)
    out[tuple(index)] = field
    index[axis] = slice(1, None, 2)
    lo, hi = [slice(None)] * field.ndim, [slice(None)] * field.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    out[tuple(index)] = (field[tuple(lo)] + field[tuple(hi)]) * np.float32(0.5)
    return out


def _warp_maps(
    anatomy: PhantomAnatomy, aged: np.ndarray, head: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sample tissue maps (through ageing) and the intracranial mask (head only) at ROI points."""
    gm = ndimage.map_coordinates(anatomy.gm, aged, order=1, mode="constant", cval=0.0)
    wm = ndimage.map_coordinates(anatomy.wm, aged, order=1, mode="constant", cval=0.0)
    mask = ndimage.map_coordinates(anatomy.mask, head, order=1, mode="constant", cval=0.0)
    labels = ndimage.map_coordinates(anatomy.labels, aged, order=0, mode="constant", cval=0)
    tissue_sum = gm + wm
    # Tissue never exceeds the intracranial space: where it would (tissue pushed beyond the fixed skull),
    # it is scaled down, which keeps gm + wm + csf == mask exactly.
    factor = np.where(tissue_sum > mask, mask / np.maximum(tissue_sum, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * factor, wm * factor
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    labels = np.where(mask >= 0.5, labels, 0).astype(np.int32)
    return {"gm": gm, "wm": wm, "csf": csf, "mask": mask}, labels


def _synthesise(
    anatomy: PhantomAnatomy,
    tissue: dict[str, np.ndarray],
    draws: _Draws,
    config: PhantomConfig,
    site_idx: int,
) -> np.ndarray:
    """T1-like intensity: tissue-weighted site means × bias field, then Rician or Gaussian noise."""
    site = config.sites[site_idx]
    means = np.array([site.csf, site.gm, site.wm]) * (1 + config.contrast_sd * draws.contrast)
    signal = means[0] * tissue["csf"] + means[1] * tissue["gm"] + means[2] * tissue["wm"]
    q = anatomy.roi_points * np.float32(anatomy.to_coarse)
    bias = _smooth_unit(draws.bias, config.bias_smoothness_mm / COARSE_MM)
    log_bias = ndimage.map_coordinates(bias, q, order=1, mode="nearest") * np.float32(config.bias_amplitude)
    signal = (signal * np.exp(log_bias) * site.gain).astype(np.float32)
    sigma = np.float32(config.noise_sd * site.gain * site.wm)
    rng = np.random.default_rng(draws.noise_seed)
    noisy = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    if config.noise_kind == "rician":
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        noisy = np.sqrt(noisy * noisy + imag * imag)
    # Skull-stripped like the official quasi-raw data: intensity fades out with the intracranial mask.
    return (noisy * np.clip(2.0 * tissue["mask"], 0.0, 1.0)).astype(np.float32)


def _measure(anatomy: PhantomAnatomy, tissue: dict[str, np.ndarray], labels: np.ndarray) -> pd.DataFrame:
    """Ground-truth volumes from the produced maps (mm³)."""
    vv = anatomy.grid.voxel_volume_mm3
    n = int(max(anatomy.table["index"].max(), labels.max())) + 1
    per_tissue = {"all": np.bincount(labels, minlength=n).astype(np.float64)}
    for name in ("gm", "wm", "csf"):
        per_tissue[name] = np.bincount(labels, weights=tissue[name].astype(np.float64), minlength=n)
    rows = [
        (name, t, per_tissue[t][idx] * vv)
        for idx, name in zip(anatomy.table["index"], anatomy.table["name"])
        for t in ("all", "gm", "wm", "csf")
    ]
    totals = {t: float(np.sum(tissue[t], dtype=np.float64)) * vv for t in ("gm", "wm", "csf")}
    totals["all"] = float(np.sum(tissue["mask"], dtype=np.float64)) * vv
    rows += [(INTRACRANIAL, t, totals[t]) for t in ("all", "gm", "wm", "csf")]
    return pd.DataFrame(rows, columns=["region", "tissue", "volume_mm3"])


def _to_grid(
    values: np.ndarray, roi: np.ndarray, shape: tuple[int, int, int], dtype: type = np.float32
) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), dtype=dtype)
    out[roi] = values
    return out.reshape(shape)
