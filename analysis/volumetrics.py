"""Region volumetrics: GM, WM and CSF volume (mm³) and mean intensity in every atlas region of brain images.

:class:`RegionVolumetrics` segments each image (:mod:`analysis.segmentation`), carries the atlas onto it by
registration (:mod:`analysis.registration`) and tabulates the volumes (:mod:`analysis.region_volumes`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.base import clone
from tqdm.auto import tqdm

from analysis.config import VOLUME_MODES
from analysis.region_volumes import COLUMNS, region_tissue_table
from analysis.registration import (
    block_mean,
    demons_register,
    similarity_displacement,
    tissue_index,
    upsample_displacement,
    warp,
)
from analysis.segmentation import TissueSegmenter
from analysis.tissue_maps import TISSUES, TissueMaps, on_grid
from flowlet.data.keys import SUBJECT_ID
from flowlet.data.nifti import Volume

logger = logging.getLogger(__name__)

__all__ = ["VOLUME_MODES", "RegionVolumetrics", "grow_csf_structures"]


def grow_csf_structures(
    labels: np.ndarray, csf: np.ndarray, structure_ids: Sequence[int], steps: int
) -> np.ndarray:
    """Extend CSF structures into connected CSF voxels, one voxel layer (26-neighbourhood) per step.

    Args:
        labels: ``(X, Y, Z)`` integer labels in subject space.
        csf: ``(X, Y, Z)`` CSF probability.
        structure_ids: labels of CSF structures (e.g. both lateral ventricles).
        steps: number of growth layers.

    Returns:
        A new label image; grown voxels take the structure's label (the larger id where two meet).
    """
    ids = np.asarray(list(structure_ids), dtype=labels.dtype)
    current = np.where(np.isin(labels, ids), labels, 0)
    is_csf = np.asarray(csf) > 0.5
    for _ in range(steps):
        grown = ndimage.grey_dilation(current, size=(3, 3, 3))
        add = (current == 0) & (grown > 0) & is_csf
        if not add.any():
            break
        current = np.where(add, grown, current)
    return np.where(current > 0, current, labels)


class RegionVolumetrics:
    """Per-region GM/WM/CSF volumes of brain images (scikit-learn estimator style).

    Args:
        atlas: an atlas name of :func:`flowlet.data.templates.list_atlases` or an
            :class:`~flowlet.data.templates.Atlas` (custom atlases via ``load_custom_atlas``).
        grid: grid to work on (default: the 2 mm MNI grid for named atlases, the atlas' own grid otherwise).
        segmenter: object with ``fit()`` and ``transform(volume) -> TissueMaps`` (default :class:`TissueSegmenter`).
        threshold: max-probability threshold (%) for probabilistic atlases.
        registration: ``"demons"`` (default): the template is registered to each image (tissue-index demons,
            :mod:`analysis.registration`) and the atlas labels and tissue priors are carried onto the subject, so
            structures that moved or shrank are measured where they are; ``"none"``: the atlas is used as is
            (fast; right for images already non-linearly normalised). Only used with :class:`TissueSegmenter`.
        csf_structures: region names that are CSF spaces (lateral ventricles). Registration of a smooth template
            cannot follow a ventricle that doubled in size, so after registration these regions also take every
            CSF voxel (probability > 0.5) connected to them within ``csf_growth_mm``.
        demons_iterations: demons iterations per pyramid level (8 mm, then 4 mm).
        fine_iterations: EM iterations of the full-resolution segmentation after registration (it starts from the
            coarse pass' class parameters and bias field).
        demons_smoothing: Gaussian width (voxels of the level) regularising the displacement.
        refine_iterations: demons iterations on the working grid (2 mm by default) after the fine segmentation,
            starting from the coarse displacement; they move small structures (hippocampus) onto their
            full-resolution boundaries. 0 keeps the coarse (about 4 mm) registration.
        csf_growth_mm: how far (mm) CSF structures may grow beyond their registered labels (0 disables).
        volumes: ``"fractions"`` (default): a voxel adds its expected tissue fractions (the partial-volume
            estimate of the physical tissue volume); ``"labels"``: a voxel counts wholly for its most likely
            tissue (:meth:`TissueMaps.as_labels`), the convention of label-based tools such as FreeSurfer and
            DLMUSE, whose volumes are voxel counts; ``"pve"``: voxels whose most likely class is a mixed one get
            the linear partial-volume fractions of their intensity (:meth:`TissueMaps.as_pve`, an experiment;
            see ``docs/prep.md``). Only with :class:`TissueSegmenter`.
        progress: show a progress bar over images.

    Example:
        >>> vol = RegionVolumetrics("harvard-oxford").fit()  # doctest: +SKIP
        >>> table = vol.transform([load_volume(p) for p in paths], subject_ids=ids)  # doctest: +SKIP
    """

    def __init__(
        self,
        atlas="harvard-oxford",
        *,
        grid=None,
        segmenter=None,
        threshold: float = 25.0,
        registration: str = "demons",
        csf_structures: Sequence[str] = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle"),
        csf_growth_mm: float = 12.0,
        demons_iterations: tuple[int, ...] = (60, 30),
        demons_smoothing: float = 1.0,
        refine_iterations: int = 10,
        fine_iterations: int = 3,
        volumes: str = "fractions",
        progress: bool = False,
    ) -> None:
        if registration not in ("demons", "none"):
            raise ValueError(f"unknown registration '{registration}'; choose from ['demons', 'none']")
        if volumes not in VOLUME_MODES:
            raise ValueError(f"unknown volumes '{volumes}'; choose from {list(VOLUME_MODES)}")
        self.volumes = volumes
        self.registration = registration
        self.csf_structures = tuple(csf_structures)
        self.csf_growth_mm = csf_growth_mm
        self.demons_iterations = demons_iterations
        self.demons_smoothing = demons_smoothing
        self.refine_iterations = refine_iterations
        self.fine_iterations = fine_iterations
        self.atlas = atlas
        self.grid = grid
        self.segmenter = segmenter
        self.threshold = threshold
        self.progress = progress

    def fit(self, X=None, y=None) -> RegionVolumetrics:
        """Load the atlas on the grid and fit the segmenter's priors. ``X``/``y`` are ignored."""
        from flowlet.data.grid import Grid, mni_grid, resample_array

        if isinstance(self.atlas, str):
            from flowlet.data.templates import load_atlas

            self.grid_ = self.grid or mni_grid(2.0)
            self.atlas_ = load_atlas(self.atlas, self.grid_, threshold=self.threshold)
        else:
            self.atlas_ = self.atlas
            self.grid_ = self.grid or Grid(shape=self.atlas.labels.shape, affine=self.atlas.affine)
        labels = np.asarray(self.atlas_.labels)
        if labels.shape != tuple(self.grid_.shape) or not np.allclose(
            self.atlas_.affine, self.grid_.affine, atol=1e-3
        ):
            logger.warning(
                "atlas '%s' is not on the working grid %s; resampling it (nearest)",
                self.atlas_.name,
                self.grid_.shape,
            )
            labels = resample_array(labels, self.atlas_.affine, self.grid_, interpolation="nearest")
        self.labels_ = np.asarray(labels, np.int64)
        self.region_names_ = self.atlas_.region_names()
        self.csf_ids_ = [i for i, n in self.region_names_.items() if n in self.csf_structures]
        segmenter = self.segmenter if self.segmenter is not None else TissueSegmenter(grid=self.grid_)
        if self.volumes == "pve" and isinstance(segmenter, TissueSegmenter):
            # Only these volumes read the linear partial-volume fractions, so only then are they computed.
            segmenter = clone(segmenter).set_params(pve=True)
        self.segmenter_ = segmenter.fit()
        if isinstance(self.segmenter_, TissueSegmenter):
            self._fit_coarse()
        return self

    def _fit_coarse(self) -> None:
        """Segmenter and template on a grid of about 4 mm, for the registration pass."""
        from flowlet.data.grid import Grid

        seg = self.segmenter_
        k = max(round(4.0 / min(self.grid_.voxel_sizes)), 1)
        affine = np.array(self.grid_.affine, dtype=np.float64)
        affine[:3, 3] = affine[:3, :3] @ np.full(3, (k - 1) / 2.0) + affine[:3, 3]
        affine[:3, :3] = affine[:3, :3] * k
        priors = {t: block_mean(p, k) for t, p in zip(TISSUES, seg.tissue_priors_)}
        grid = Grid(shape=priors["csf"].shape, affine=affine)
        self.coarse_factor_ = k
        # The coarse pass only drives the registration: without the partial-volume fractions of volumes "pve".
        self.coarse_segmenter_ = clone(seg).set_params(grid=grid, priors=priors, pve=False).fit()
        self.template_index_ = tissue_index(*self.coarse_segmenter_.tissue_priors_)
        self.template_index_fine_ = tissue_index(*seg.tissue_priors_)

    def segment(self, volume: Volume) -> tuple[TissueMaps, np.ndarray]:
        """Tissue maps and atlas labels of one image on the working grid.

        The image is resampled onto the grid first when needed (with a log message).

        Returns:
            ``(maps, labels)``: :class:`TissueMaps` (one-hot with ``volumes="labels"``) and the ``(X, Y, Z)``
            atlas labels in the image's anatomy (carried by registration, or the atlas itself with
            ``registration="none"``).
        """
        if not hasattr(self, "labels_"):
            raise RuntimeError("RegionVolumetrics is not fitted; call fit() first")
        interpolation = getattr(self.segmenter_, "interpolation", "linear")
        volume = on_grid(volume, self.grid_, interpolation=interpolation)
        if self.registration == "none" or not isinstance(self.segmenter_, TissueSegmenter):
            maps = self.segmenter_.transform(volume)
            if maps.mask.shape != self.labels_.shape:
                raise ValueError(
                    f"tissue maps shape {maps.mask.shape} differs from the atlas grid {self.labels_.shape}"
                )
            return self._counted(maps), self.labels_
        maps, labels, _ = self._register_and_segment(volume)
        if self.csf_growth_mm > 0 and self.csf_ids_:
            steps = int(np.ceil(self.csf_growth_mm / min(self.grid_.voxel_sizes)))
            labels = grow_csf_structures(labels, maps.probabilities["csf"], self.csf_ids_, steps)
        return self._counted(maps), labels

    def _register_and_segment(self, volume: Volume) -> tuple[TissueMaps, np.ndarray, np.ndarray]:
        """The registration path of :meth:`segment` for an image already on the grid: the tissue maps (fractions,
        before :meth:`_counted`), the atlas labels carried onto the image (before the CSF structures grow) and the
        ``(3, X, Y, Z)`` CSF/GM/WM template priors carried by the same registration."""
        # The first segmentation only drives the registration, so it runs on the ~4 mm grid.
        k = self.coarse_factor_
        coarse = Volume(block_mean(volume.data, k), self.coarse_segmenter_.grid_.affine)
        coarse_maps = self.coarse_segmenter_.transform(coarse)
        u = upsample_displacement(self._register(coarse_maps), k, self.grid_.shape)
        priors = np.stack([warp(p, u, order=1) for p in self.segmenter_.tissue_priors_])
        # The bias field is smooth: the coarse estimate is reused, and the class parameters start the fine EM.
        log_bias = upsample_displacement(coarse_maps.log_bias[None], k, self.grid_.shape)[0] / k
        maps = self.segmenter_.transform(
            volume, priors=priors, start=coarse_maps, log_bias=log_bias, n_iter=self.fine_iterations
        )
        if self.refine_iterations > 0:
            subject = tissue_index(*(maps.probabilities[t] for t in TISSUES))
            u = demons_register(
                subject,
                self.template_index_fine_,
                init=u,
                factors=(1,),
                iterations=self.refine_iterations,
                sigma_diffusion=self.demons_smoothing,
            )
        return maps, warp(self.labels_, u, order=0).astype(np.int64), priors

    def _counted(self, maps: TissueMaps) -> TissueMaps:
        """``maps`` as the volumes count them (the atlas labels were carried with the fractions either way)."""
        if not isinstance(self.segmenter_, TissueSegmenter):
            return maps
        if self.volumes == "labels":
            return maps.as_labels()
        if self.volumes == "pve":
            return maps.as_pve()
        return maps

    def _register(self, maps: TissueMaps) -> np.ndarray:
        """Displacement ``(3, X, Y, Z)`` (voxels) carrying template space onto the subject of ``maps``."""
        subject = tissue_index(*(maps.probabilities[t] for t in TISSUES))
        template = self.template_index_
        init = similarity_displacement(subject > 0.5, template > 0.5)
        step = float(min(self.coarse_segmenter_.grid_.voxel_sizes))
        factors = tuple(sorted({max(round(mm / step), 1) for mm in (8.0, 4.0)}, reverse=True))
        return demons_register(
            subject,
            template,
            init=init,
            factors=factors,
            iterations=self.demons_iterations,
            sigma_diffusion=self.demons_smoothing,
        )

    def transform(self, images: Sequence[Volume], subject_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy volumetrics table of ``images``.

        Args:
            images: volumes (any grid; resampled onto the atlas grid with a log message when needed).
            subject_ids: one id per image (default ``"0"``, ``"1"``, ...).

        Returns:
            One row per subject × region × tissue: ``subject_id``, ``region_index``, ``region``, ``tissue``,
            ``volume_mm3``, ``mean_intensity``.
        """
        if subject_ids is None:
            subject_ids = [str(i) for i in range(len(images))]
        if len(subject_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(subject_ids)} subject ids")
        tables = []
        for sid, volume in tqdm(
            list(zip(subject_ids, images)), desc="volumetrics", disable=not self.progress
        ):
            maps, labels = self.segment(volume)
            table = region_tissue_table(maps, labels, self.region_names_)
            table.insert(0, SUBJECT_ID, str(sid))
            tables.append(table)
        if not tables:
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.concat(tables, ignore_index=True)[list(COLUMNS)]
