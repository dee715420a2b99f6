"""One pass over a cohort's images: volumetrics, ROI label maps, normalised images and fixed features.

Every image is read once; what later steps need (the tidy volumes table, per-image ROI label maps for the paper's
ROI metrics, robust-normalised intensities for ROI/diversity/privacy, and :func:`~analysis.metrics.image.handcrafted_features`)
is kept, keyed by an explicit ``image_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis.metrics.image import handcrafted_features, percentile_to_unit
from analysis.region_volumes import combine_regions, region_tissue_table
from analysis.tissue_maps import TISSUES, on_grid
from analysis.validation import tissue_dice, truth_tissue_paths
from analysis.volumetrics import RegionVolumetrics
from flowlet.data.cohort import read_image
from flowlet.data.keys import AGE, PATH, SEX, SITE, SUBJECT_ID

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_ID",
    "CohortMeasures",
    "decode_roi",
    "load_normalised",
    "measure_cohort",
    "roi_codes",
    "usable_groups",
]

IMAGE_ID = "image_id"


@dataclass
class CohortMeasures:
    """What :func:`measure_cohort` keeps for one cohort.

    Attributes:
        volumes: tidy table (``image_id``, ``subject_id``, ``age``, ``sex``, ``site``, ``region``, ``tissue``,
            ``volume_mm3``, ``mean_intensity``), combined regions included.
        features: ``(N, F)`` fixed image features, rows in ``image_ids`` order.
        image_ids: identifiers in cohort order.
        roi_labels: image id → ``(X, Y, Z)`` int16 ROI codes (see :func:`roi_codes`), if kept.
        images: image id → ``(X, Y, Z)`` float16 robust-normalised intensities, if kept.
        tissue_dice: per image, Dice of the tissue segmentation against true tissue maps stored next to the
            images (see :func:`analysis.validation.tissue_dice`); None when the cohort has none.
    """

    volumes: pd.DataFrame
    features: np.ndarray
    image_ids: list[str]
    roi_labels: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    tissue_dice: pd.DataFrame | None = None


def roi_codes(labels: np.ndarray, hard_tissue: np.ndarray) -> np.ndarray:
    """ROI code per voxel: ``3·region + tissue − 1`` (tissue 1..3 = CSF, GM, WM; so region = code // 3 and
    tissue = ``TISSUES[code % 3]``); 0 where either is 0."""
    labels = np.asarray(labels, np.int64)
    hard = np.asarray(hard_tissue, np.int64)
    return np.where((labels > 0) & (hard > 0), 3 * labels + hard - 1, 0).astype(np.int32)


def decode_roi(codes: np.ndarray, names: Mapping[int, str]) -> pd.DataFrame:
    """``region_index``, ``region``, ``tissue`` of ROI codes made by :func:`roi_codes`."""
    codes = np.asarray(codes, np.int64)
    region = codes // 3
    tissue = np.asarray(TISSUES)[codes % 3]
    return pd.DataFrame(
        {"region_index": region, "region": [names.get(int(r), str(r)) for r in region], "tissue": tissue}
    )


def measure_cohort(
    table: pd.DataFrame,
    volumetrics: RegionVolumetrics,
    *,
    combined_regions: Mapping[str, Sequence[str]] | None = None,
    keep_images: bool = False,
    features: bool = True,
    progress: bool = True,
    jobs: int = 1,
) -> CohortMeasures:
    """Segment, measure and (optionally) keep every image of a cohort table.

    Args:
        table: cohort table with ``image_id``, ``subject_id``, ``path``, ``age`` (``sex``/``site`` optional).
        volumetrics: fitted :class:`RegionVolumetrics`.
        combined_regions: summed regions to add (groups whose members the atlas lacks are skipped, logged).
        keep_images: keep ROI label maps and normalised images (for ROI metrics and diversity).
        features: compute :func:`handcrafted_features` of every image (for MMD and Fréchet distance).
        progress: show a progress bar.
        jobs: worker processes (images are independent; each worker gets a copy of ``volumetrics``). The
            results do not depend on ``jobs``.

    Returns:
        :class:`CohortMeasures`.
    """
    names = volumetrics.region_names_
    groups = usable_groups(combined_regions or {}, set(names.values()))
    out = CohortMeasures(volumes=pd.DataFrame(), features=np.empty((0, 0)), image_ids=[])
    rows = table.to_dict(orient="records")
    options = {"features": features, "keep_images": keep_images}
    if jobs > 1 and len(rows) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        spawn = multiprocessing.get_context("spawn")  # no fork of a process that may hold thread pools
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(rows)),
            mp_context=spawn,
            initializer=_init_worker,
            initargs=(volumetrics, options),
        ) as pool:
            results = list(
                tqdm(pool.map(_measure_in_worker, rows), total=len(rows), desc="images", disable=not progress)
            )
    else:
        results = [
            _measure_one(row, volumetrics, **options)
            for row in tqdm(rows, desc="images", unit="image", disable=not progress)
        ]
    tables, feats, ids, dice_rows = [], [], [], []
    for row, result in zip(rows, results):
        tables.append(result["volumes"])
        ids.append(row[IMAGE_ID])
        if features:
            feats.append(result["features"])
        if result["dice"] is not None:
            dice_rows.append({IMAGE_ID: row[IMAGE_ID], **result["dice"]})
        if keep_images:
            out.roi_labels[row[IMAGE_ID]] = result["roi_labels"]
            out.images[row[IMAGE_ID]] = result["image"]
    columns = [
        IMAGE_ID,
        SUBJECT_ID,
        AGE,
        SEX,
        SITE,
        "region_index",
        "region",
        "tissue",
        "volume_mm3",
        "mean_intensity",
    ]
    volumes = pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)
    if groups and len(volumes):
        volumes = combine_regions(volumes, groups)
    out.volumes, out.features, out.image_ids = volumes, np.asarray(feats), ids
    if dice_rows and len(dice_rows) == len(rows):
        out.tissue_dice = pd.DataFrame(dice_rows)
    return out


def _measure_one(row: dict, volumetrics: RegionVolumetrics, *, features: bool, keep_images: bool) -> dict:
    """Everything :func:`measure_cohort` keeps of one image."""
    volume = read_image(row[PATH])
    maps, labels = volumetrics.segment(volume)
    meta = {
        IMAGE_ID: row[IMAGE_ID],
        SUBJECT_ID: row[SUBJECT_ID],
        AGE: float(row[AGE]),
        SEX: row.get(SEX, "n/a"),
        SITE: row.get(SITE, "n/a"),
    }
    result: dict = {
        "volumes": region_tissue_table(maps, labels, volumetrics.region_names_).assign(**meta),
        "dice": None,
    }
    truth_paths = truth_tissue_paths(row[PATH])
    if truth_paths is not None:
        truth = {t: on_grid(read_image(p), volumetrics.grid_).data for t, p in truth_paths.items()}
        result["dice"] = tissue_dice(maps.probabilities, truth)
    norm = percentile_to_unit(maps.intensity, maps.mask)
    if features:
        result["features"] = handcrafted_features(np.where(maps.mask, norm, 0.0), maps.mask)
    if keep_images:
        result["roi_labels"] = roi_codes(labels, maps.hard_labels()).astype(np.int16)
        result["image"] = np.where(maps.mask, norm, 0.0).astype(np.float16)
    return result


_WORKER: dict = {}


def _init_worker(volumetrics: RegionVolumetrics, options: dict) -> None:
    _WORKER.update(volumetrics=volumetrics, options=options)


def _measure_in_worker(row: dict) -> dict:
    return _measure_one(row, _WORKER["volumetrics"], **_WORKER["options"])


def usable_groups(groups: Mapping[str, Sequence[str]], available: set[str]) -> dict[str, Sequence[str]]:
    """The combined regions whose members are all ``available`` (the atlas's region names); the others are
    skipped, with a log line, so that an atlas without e.g. the hippocampus still gives every other region."""
    usable = {}
    for name, members in groups.items():
        missing = sorted(set(members) - available)
        if missing:
            logger.info("combined region '%s' skipped: the atlas has no region(s) %s", name, missing)
        else:
            usable[name] = members
    return usable


def load_normalised(table: pd.DataFrame, grid, mask: np.ndarray, *, progress: bool = True) -> np.ndarray:
    """``(N, V)`` float32 robust-normalised intensities inside ``mask`` of every image (on ``grid``)."""
    rows = table.to_dict(orient="records")
    out = np.empty((len(rows), int(mask.sum())), np.float32)
    for i, row in enumerate(tqdm(rows, desc="images", unit="image", disable=not progress)):
        volume = on_grid(read_image(row[PATH]), grid)
        out[i] = percentile_to_unit(volume.data, mask)[mask]
    return out
