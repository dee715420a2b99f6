"""Real-versus-synthetic comparisons that combine several metrics (used by ``flowlet-eval quality``/``tables``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.config import QualityConfig
from analysis.evaluation import CohortMeasures, decode_roi
from analysis.metrics import match_by_age, roi_pair_metrics

__all__ = ["image_metrics", "key_region_rows", "read_truth", "roi_rows", "truth_path"]


def key_region_rows(frame: pd.DataFrame, key_regions: Sequence[Sequence[str]]) -> pd.DataFrame:
    """The key (region, tissue) rows of a merged trajectory + distance table, in config order."""
    keys = pd.DataFrame(list(key_regions), columns=["region", "tissue"])
    cols = [
        "region",
        "tissue",
        "slope_real",
        "slope_synthetic",
        "slope_diff",
        "slope_diff_pct_per_year",
        "p_value",
        "flagged",
        "wasserstein",
        "wasserstein_sd",
        "ks_statistic",
    ]
    return keys.merge(frame, on=["region", "tissue"], how="inner")[cols]


def roi_rows(
    real_table: pd.DataFrame,
    syn_table: pd.DataFrame,
    m_real: CohortMeasures,
    m_syn: CohortMeasures,
    names: Mapping[int, str],
    q: QualityConfig,
) -> pd.DataFrame:
    """The paper's ROI metrics for every age-matched pair (one row per pair × region × tissue).

    Pairs come from :func:`~analysis.metrics.match_by_age` on the ``image_id``/``age`` columns; region masks are
    the ROI codes (atlas region × hard tissue class) kept by :func:`~analysis.evaluation.measure_cohort`, and
    intensities are the robust-normalised images, so the histogram range is [0, 1].
    """
    pairs = match_by_age(real_table, syn_table, key="image_id", max_age_gap=q.max_age_gap)
    frames = []
    for p in pairs.itertuples():
        a, b = p.image_id_real, p.image_id_synthetic
        rows = roi_pair_metrics(
            m_real.roi_labels[a],
            m_syn.roi_labels[b],
            m_real.images[a].astype("float32"),
            m_syn.images[b].astype("float32"),
            bins=q.histogram_bins,
            value_range=(0.0, 1.0),
        )
        decoded = decode_roi(rows["region_index"].to_numpy(), names)
        rows = pd.concat([decoded, rows.drop(columns="region_index")], axis=1)
        frames.append(
            rows.assign(
                pair=p.pair,
                image_id_real=a,
                image_id_synthetic=b,
                age_real=p.age_real,
                age_synthetic=p.age_synthetic,
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def image_metrics(m_real: CohortMeasures, m_syn: CohortMeasures, q: QualityConfig, seed: int) -> pd.DataFrame:
    """MMD and Fréchet distance of the fixed features (standardised on the real set) and MS-SSIM diversity."""
    r, s = metrics.standardise_features(m_real.features, m_syn.features)
    div_r = metrics.ms_ssim_diversity(
        [m_real.images[i].astype(np.float32) for i in m_real.image_ids],
        max_pairs=q.diversity_pairs,
        seed=seed,
    )
    div_s = metrics.ms_ssim_diversity(
        [m_syn.images[i].astype(np.float32) for i in m_syn.image_ids], max_pairs=q.diversity_pairs, seed=seed
    )
    values = {
        "mmd_handcrafted": metrics.mmd(r, s),
        "frechet_handcrafted": metrics.frechet_distance(r, s),
        "ms_ssim_real": div_r["ms_ssim_mean"],
        "ms_ssim_synthetic": div_s["ms_ssim_mean"],
    }
    return pd.DataFrame({"metric": list(values), "value": [float(v) for v in values.values()]})


def truth_path(image: str | Path) -> Path:
    """``.../sub-0001_T1w.nii.gz`` -> ``.../sub-0001_volumes.tsv``: where the phantom cohort writes an image's truth."""
    name = Path(image).name
    stem = name.split("_T1w")[0] if "_T1w" in name else name.split(".nii")[0]
    return Path(image).with_name(f"{stem}_volumes.tsv")


def read_truth(cohort: pd.DataFrame) -> pd.DataFrame | None:
    """Concatenated ``*_volumes.tsv`` next to the images (phantom ground truth), or None when any is missing."""

    frames = []
    for image_id, path in zip(cohort["image_id"], cohort["path"]):
        truth = truth_path(path)
        if not truth.is_file():
            return None
        frames.append(pd.read_csv(truth, sep="\t").assign(image_id=image_id))
    return pd.concat(frames, ignore_index=True) if frames else None
