"""A reference for the brain-age arms: ridge regression on the true regional volumes of the same scans.

The phantom cohort writes every scan's ground-truth volumes next to its image (``sub-XXXX_volumes.tsv``: region,
tissue, volume_mm3). The brain-age package's classical baseline (:func:`bap.baseline.fit_ridge_baseline`:
standardised volumes, penalty chosen by leave-one-out cross-validation on the training split) fitted on the
training split and scored on the same test scans as the CNN arms shows how much age information the anatomy
carries at this cohort size. Real cohorts have no such files,
and the reference is then left out.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from flowlet.data import keys

logger = logging.getLogger(__name__)

__all__ = ["REFERENCE_LABEL", "ridge_on_true_volumes"]

REFERENCE_LABEL = "ridge on true region volumes"


#: The penalties the reference chooses from (leave-one-out on the training split); kept as first published so that
#: the report's reference line does not move.
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


def _tidy_volumes(scans: pd.DataFrame) -> pd.DataFrame | None:
    """One row per scan × region × tissue (keys, ``region``, ``tissue``, ``volume_mm3``); None if a file is missing."""
    from analysis.quality import read_truth

    truth = read_truth(scans.assign(image_id=scans.index))
    if truth is None:
        return None
    ids = scans[[keys.SUBJECT_ID, keys.SESSION_ID]]
    return (
        truth[["image_id", "region", "tissue", "volume_mm3"]]
        .join(ids, on="image_id")
        .drop(columns="image_id")
    )


def ridge_on_true_volumes(split: pd.DataFrame) -> pd.DataFrame | None:
    """Test-scan predictions of :func:`bap.baseline.fit_ridge_baseline` on true volumes, fitted on the training split.

    Args:
        split: cohort table with ``split`` (train/val/test) and ``path`` columns.

    Returns:
        ``subject_id, session_id, age, pred`` for every test scan, or ``None`` when a scan has no volumes file.
    """
    from bap.baseline import fit_ridge_baseline

    scans = split[split[keys.SPLIT].isin(["train", "test"])].reset_index(drop=True)
    if not {"train", "test"} <= set(scans[keys.SPLIT]):
        return None
    volumes = _tidy_volumes(scans)
    if volumes is None:
        logger.info("no ground-truth volumes next to the images: the ridge reference is left out")
        return None
    # Every scan of the study's table is real; a "source" column would make the baseline keep "real" rows only.
    fitted = fit_ridge_baseline(scans.drop(columns="source", errors="ignore"), volumes, alphas=ALPHAS)
    test = fitted.predictions[fitted.predictions[keys.SPLIT] == "test"]
    return test[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE, "pred"]].reset_index(drop=True)
