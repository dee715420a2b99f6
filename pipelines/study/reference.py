"""A reference for the brain-age arms: ridge regression on the true regional volumes of the same scans.

The phantom cohort writes every scan's ground-truth volumes next to its image (``sub-XXXX_volumes.tsv``: region,
tissue, volume_mm3). A ridge regression (scikit-learn; standardised volumes, penalty chosen by leave-one-out
cross-validation on the training split) fitted on the training split and scored on the same test scans as the
CNN arms shows how much age information the anatomy carries at this cohort size. Real cohorts have no such files,
and the reference is then left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data import keys

logger = logging.getLogger(__name__)

__all__ = ["REFERENCE_LABEL", "ridge_on_true_volumes", "volumes_path"]

REFERENCE_LABEL = "ridge on true region volumes"


def volumes_path(image: str | Path) -> Path:
    """``.../sub-0001_T1w.nii.gz`` → ``.../sub-0001_volumes.tsv`` (the phantom's ground truth)."""
    image = Path(image)
    stem = image.name.split(".")[0]
    stem = stem[: -len("_T1w")] if stem.endswith("_T1w") else stem
    return image.with_name(f"{stem}_volumes.tsv")


def _features(paths: pd.Series) -> pd.DataFrame | None:
    rows = []
    for image in paths:
        path = volumes_path(image)
        if not path.is_file():
            return None
        table = pd.read_csv(path, sep="\t")
        rows.append(
            pd.Series(table["volume_mm3"].to_numpy(float), index=table["region"] + "/" + table["tissue"])
        )
    return pd.DataFrame(rows).reset_index(drop=True)


def ridge_on_true_volumes(split: pd.DataFrame) -> pd.DataFrame | None:
    """Test-scan predictions of a ridge regression on true volumes, fitted on the training split.

    Args:
        split: cohort table with ``split`` (train/val/test) and ``path`` columns.

    Returns:
        ``subject_id, session_id, age, pred`` for every test scan, or ``None`` when a scan has no volumes file.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = split[split[keys.SPLIT] == "train"].reset_index(drop=True)
    test = split[split[keys.SPLIT] == "test"].reset_index(drop=True)
    if train.empty or test.empty:
        return None
    x_train, x_test = _features(train[keys.PATH]), _features(test[keys.PATH])
    if x_train is None or x_test is None:
        logger.info("no ground-truth volumes next to the images: the ridge reference is left out")
        return None
    columns = sorted(set(x_train.columns) & set(x_test.columns))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
    model.fit(x_train[columns].to_numpy(), train[keys.AGE].to_numpy(float))
    pred = model.predict(x_test[columns].to_numpy())
    return test[[keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE]].assign(pred=pred)
