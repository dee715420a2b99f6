"""Quality check of an age-conditioned generator: does a generated brain look its conditioned age?

For a set of target ages the generator produces volumes, and two things are measured:

* **Ventricle volume** (mm³): CSF inside the lateral-ventricle region. The region is the Harvard-Oxford lateral
  ventricles on the image grid, dilated so that enlarged ventricles stay inside it. CSF is measured as a partial-
  volume fraction ``clip((hi - I) / (hi - lo), 0, 1)`` per voxel, with ``lo`` (CSF) and ``hi`` (tissue) intensity
  levels fitted on reference images (:class:`VentricleVolumeMeter`, estimator convention: ``fit`` then
  ``transform``). Lateral ventricles enlarge with age, so their volume must rise with the conditioned age.
* **Intensity histogram**: the mean normalised histogram of the generated volumes against that of the reference
  (real or phantom) volumes, compared by total variation and the 1-Wasserstein distance.

Everything works on ``(N, X, Y, Z)`` float arrays in ``[0, 1]`` on one grid (the export scale of
:func:`flowlet.export.decode_and_export`); :func:`reference_images` brings cohort scans to that scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from flowlet.data.cohort import read_image
from flowlet.data.preprocessing import centre_crop, centre_pad, robust_normalize

__all__ = [
    "QualityReport",
    "VentricleVolumeMeter",
    "histogram_distance",
    "intensity_histogram",
    "quality_check",
    "reference_images",
    "ventricle_region",
]

logger = logging.getLogger(__name__)

VENTRICLE_LABELS = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")


def ventricle_region(shape: Sequence[int], affine: np.ndarray, *, dilation: int = 2) -> np.ndarray:
    """Boolean lateral-ventricle region on the grid ``(shape, affine)`` (Harvard-Oxford, 25 % threshold).

    Args:
        shape: grid shape ``(X, Y, Z)``.
        affine: ``(4, 4)`` voxel-to-MNI affine of the grid.
        dilation: binary dilation iterations (voxels) so that enlarged ventricles stay inside.
    """
    from flowlet.data.grid import Grid
    from flowlet.data.templates import load_atlas

    atlas = load_atlas(
        "harvard-oxford", Grid(shape=tuple(int(s) for s in shape), affine=np.asarray(affine, float))
    )
    names = {name.replace(" ", "_"): index for index, name in atlas.region_names().items()}
    missing = [n for n in VENTRICLE_LABELS if n not in names]
    if missing:
        raise ValueError(f"atlas {atlas.name!r} has no regions {missing}")
    region = np.isin(atlas.labels, [names[n] for n in VENTRICLE_LABELS])
    if dilation > 0:
        region = ndimage.binary_dilation(region, iterations=dilation)
    return region


class VentricleVolumeMeter:
    """CSF volume inside a fixed region, by partial-volume fractions with fitted intensity levels.

    Args:
        region: boolean ``(X, Y, Z)`` region.
        voxel_volume_mm3: volume of one voxel (``abs(det(affine[:3, :3]))``).
        low_percentile, high_percentile: percentiles of the reference intensities inside the region taken as
            the CSF level ``lo_`` and the tissue level ``hi_``.

    Example:
        >>> meter = VentricleVolumeMeter(region, 64.0).fit(phantoms)  # doctest: +SKIP
        >>> meter.transform(generated)  # (N,) mm³  # doctest: +SKIP
    """

    def __init__(
        self,
        region: np.ndarray,
        voxel_volume_mm3: float,
        *,
        low_percentile: float = 5.0,
        high_percentile: float = 95.0,
    ) -> None:
        self.region = np.asarray(region, dtype=bool)
        if not self.region.any():
            raise ValueError("the ventricle region is empty")
        self.voxel_volume_mm3 = float(voxel_volume_mm3)
        self.low_percentile, self.high_percentile = low_percentile, high_percentile

    def fit(self, images: np.ndarray) -> VentricleVolumeMeter:
        """Fit ``lo_`` and ``hi_`` on reference images ``(N, X, Y, Z)``."""
        values = self._inside(images)
        self.lo_, self.hi_ = (
            float(np.percentile(values, p)) for p in (self.low_percentile, self.high_percentile)
        )
        if self.hi_ - self.lo_ < 1e-6:
            raise ValueError(
                f"reference intensities in the region are constant ({self.lo_:.4g}); cannot fit levels"
            )
        return self

    def _inside(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float64)
        if images.ndim == 3:
            images = images[None]
        if images.shape[1:] != self.region.shape:
            raise ValueError(
                f"images of shape {images.shape[1:]} do not match the region {self.region.shape}"
            )
        return images[:, self.region]

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Ventricle CSF volume in mm³ of each image ``(N, X, Y, Z)`` → ``(N,)``."""
        if not hasattr(self, "lo_"):
            raise RuntimeError("VentricleVolumeMeter is not fitted; call fit(reference_images) first")
        fraction = np.clip((self.hi_ - self._inside(images)) / (self.hi_ - self.lo_), 0.0, 1.0)
        return fraction.sum(axis=1) * self.voxel_volume_mm3


def intensity_histogram(images: np.ndarray, bins: int = 64) -> np.ndarray:
    """Mean over images of each image's normalised histogram on ``[0, 1]``: ``(bins,)`` summing to 1."""
    images = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    hists = [np.histogram(np.clip(x, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0] / x.size for x in images]
    return np.mean(hists, axis=0)


def histogram_distance(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Total variation ``½Σ|p − q|`` and 1-Wasserstein distance (intensity units on ``[0, 1]``) of two histograms."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.shape != q.shape:
        raise ValueError(f"histograms have different bins: {p.shape} and {q.shape}")
    width = 1.0 / len(p)
    return {
        "total_variation": 0.5 * float(np.abs(p - q).sum()),
        "wasserstein_1": float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * width),
    }


def reference_images(
    paths: Sequence[str],
    image_size: Sequence[int],
    save_size: Sequence[int],
    *,
    lower: float = 0.5,
    upper: float = 99.5,
) -> np.ndarray:
    """Cohort scans on the export scale: robust-normalise, pad to ``image_size``, crop to ``save_size``, to [0, 1].

    This is the training preprocessing followed by the export of :func:`flowlet.export.decode_and_export`, so
    real and generated volumes are compared on the same grid and intensity scale.

    Returns:
        ``(N, *save_size)`` float32 in ``[0, 1]``.
    """
    out = []
    for path in paths:
        x = robust_normalize(read_image(path).data, lower, upper)
        x = centre_crop(centre_pad(x, image_size, mode="edge").array, save_size)
        out.append(np.clip((x + 1.0) / 2.0, 0.0, 1.0))
    return np.stack(out).astype(np.float32)


@dataclass(frozen=True)
class QualityReport:
    """Result of :func:`quality_check`.

    Attributes:
        samples: one row per generated volume: ``age``, ``seed``, ``ventricle_volume_mm3``.
        reference: one row per reference volume: ``age``, ``ventricle_volume_mm3``.
        spearman_rho: rank correlation of conditioned age and generated ventricle volume.
        spearman_p: its p-value.
        histogram: ``{"total_variation", "wasserstein_1"}`` generated vs reference.
        generated_histogram, reference_histogram: ``(bins,)`` mean histograms.
    """

    samples: pd.DataFrame
    reference: pd.DataFrame
    spearman_rho: float
    spearman_p: float
    histogram: dict[str, float]
    generated_histogram: np.ndarray
    reference_histogram: np.ndarray

    def summary(self) -> dict[str, float]:
        """Plain numbers for logs and JSON."""
        per_age = self.samples.groupby("age")["ventricle_volume_mm3"].mean()
        return {
            "spearman_rho": self.spearman_rho,
            "spearman_p": self.spearman_p,
            **self.histogram,
            **{f"mean_ventricle_mm3_age_{a:g}": float(v) for a, v in per_age.items()},
        }


def quality_check(
    generated: np.ndarray,
    ages: Sequence[float],
    seeds: Sequence[int],
    reference: np.ndarray,
    reference_ages: Sequence[float],
    meter: VentricleVolumeMeter,
    *,
    bins: int = 64,
) -> QualityReport:
    """Score generated volumes against reference volumes.

    Args:
        generated: ``(N, X, Y, Z)`` in ``[0, 1]``.
        ages: conditioned age of each generated volume.
        seeds: seed of each generated volume.
        reference: ``(M, X, Y, Z)`` in ``[0, 1]`` (the meter is fitted on these when it is not fitted yet).
        reference_ages: age of each reference volume.
        meter: the ventricle meter.
        bins: histogram bins on ``[0, 1]``.
    """
    if len(generated) != len(ages) or len(ages) != len(seeds):
        raise ValueError(f"{len(generated)} volumes, {len(ages)} ages and {len(seeds)} seeds must match")
    if not hasattr(meter, "lo_"):
        meter.fit(reference)
    volumes = meter.transform(generated)
    samples = pd.DataFrame(
        {"age": np.asarray(ages, float), "seed": list(seeds), "ventricle_volume_mm3": volumes}
    )
    ref = pd.DataFrame(
        {"age": np.asarray(reference_ages, float), "ventricle_volume_mm3": meter.transform(reference)}
    )
    rho, p = stats.spearmanr(samples["age"], samples["ventricle_volume_mm3"])
    gen_hist, ref_hist = intensity_histogram(generated, bins), intensity_histogram(reference, bins)
    return QualityReport(
        samples=samples,
        reference=ref,
        spearman_rho=float(rho),
        spearman_p=float(p),
        histogram=histogram_distance(gen_hist, ref_hist),
        generated_histogram=gen_hist,
        reference_histogram=ref_hist,
    )
