"""The classical baseline a brain-age CNN must beat: ridge regression on per-scan features (region volumes).

Features arrive as a table (this package computes none: region volumetrics live in ``analysis`` and the
``pipelines`` layer feeds them in). Two layouts are read:

* wide: one row per scan, ``subject_id`` (and optionally ``session_id``) plus numeric feature columns;
* tidy: one row per scan × region × tissue with ``region``, ``tissue``, ``volume_mm3`` (``analysis`` volumetrics),
  pivoted to one column per ``region/tissue``.

The model is ``StandardScaler`` then ``RidgeCV`` (penalty chosen by efficient leave-one-out on the training rows
only), fitted on the real training split, evaluated on every split. Every feature is clipped to its training range
first: a ridge extrapolates linearly, and a region that is nearly empty in every training scan has a tiny spread,
so one scan with a little more of it lies hundreds of standard deviations out (on ``ixi-dev`` one prediction
came out at -1512 years before the clipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.cohort_sources import normalize_session_id, normalize_subject_id

__all__ = ["RidgeResult", "fit_ridge_baseline", "results_table", "wide_features"]

ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))


def wide_features(features: pd.DataFrame) -> pd.DataFrame:
    """One row per scan: ``subject_id``, ``session_id`` and numeric feature columns (tidy input is pivoted).

    A BIDS ``participant_id`` (``sub-XXX``) column stands in for ``subject_id``; ``age`` is never a feature. Keys
    follow the cohort rule (:func:`~flowlet.data.cohort_sources.normalize_subject_id`, ``normalize_session_id``):
    ``sub-01`` → ``01``, ``ses-1`` → ``1``, a missing session → ``n/a``.

    Raises:
        ValueError: no ``subject_id`` column, no numeric feature, or a scan listed twice.
    """
    frame = features.copy()
    if keys.SUBJECT_ID not in frame.columns and "participant_id" in frame.columns:
        frame[keys.SUBJECT_ID] = frame.pop("participant_id")
    if keys.SUBJECT_ID not in frame.columns:
        raise ValueError(f"baseline features need a '{keys.SUBJECT_ID}' column; got {list(features.columns)}")
    frame[keys.SUBJECT_ID] = frame[keys.SUBJECT_ID].map(normalize_subject_id)
    if keys.SESSION_ID in frame.columns:
        # A table read back from disk turns the cohort's "n/a" session into NaN; the rule maps it back to "n/a".
        frame[keys.SESSION_ID] = frame[keys.SESSION_ID].map(normalize_session_id)
    else:
        frame[keys.SESSION_ID] = ""
    index = [keys.SUBJECT_ID, keys.SESSION_ID]
    if {"region", "tissue", "volume_mm3"} <= set(frame.columns):
        frame["feature"] = frame["region"].astype(str) + "/" + frame["tissue"].astype(str)
        frame = frame.pivot_table(index=index, columns="feature", values="volume_mm3", aggfunc="first")
        frame = frame.reset_index()
        frame.columns.name = None
    numeric = [c for c in frame.columns if c not in index and pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in numeric if c not in (keys.AGE, "split")]
    if not numeric:
        raise ValueError("baseline features have no numeric feature column")
    if frame.duplicated(index).any():
        dup = frame.loc[frame.duplicated(index), index].head(3).to_dict("records")
        raise ValueError(f"baseline features list scans more than once, e.g. {dup}")
    return frame[index + numeric].reset_index(drop=True)


@dataclass(frozen=True)
class RidgeResult:
    """A fitted ridge baseline.

    Attributes:
        predictions: ``subject_id, session_id, age, pred, split`` for every real scan that has features.
        alpha: the chosen penalty; n_features: feature columns used; missing: scans without features.
    """

    predictions: pd.DataFrame
    alpha: float
    n_features: int
    missing: int


def _join(table: pd.DataFrame, wide: pd.DataFrame) -> pd.DataFrame:
    """The table's real scans with their features, matched by the normalised ``(subject, session)`` key.

    ``sub-01``/``ses-1`` and ``01``/``1`` are the same scan; the result keeps the table's own spelling.
    """
    real = table["source"] == "real" if "source" in table.columns else pd.Series(True, index=table.index)
    rows = table.loc[real, [keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE, keys.SPLIT]]
    rows = rows.astype({keys.SUBJECT_ID: str, keys.SESSION_ID: str})
    subject, session = "_subject_key", "_session_key"
    rows[subject] = rows[keys.SUBJECT_ID].map(normalize_subject_id)
    rows[session] = rows[keys.SESSION_ID].map(normalize_session_id)
    wide = wide.rename(columns={keys.SUBJECT_ID: subject, keys.SESSION_ID: session})
    if not (wide[session] != "").any():
        # Features keyed by subject only: every session of the subject takes them.
        joined = rows.merge(wide.drop(columns=session), on=subject, how="left")
    else:
        joined = rows.merge(wide, on=[subject, session], how="left")
    return joined.drop(columns=[subject, session], errors="ignore")


def fit_ridge_baseline(table: pd.DataFrame, features: pd.DataFrame, *, alphas=ALPHAS) -> RidgeResult:
    """Fit ``StandardScaler → RidgeCV`` on the real training scans, predict every real scan with features.

    Args:
        table: the run's scans (``subject_id, session_id, age, split`` and optionally ``source``); rows are paired
            with features by ``(subject_id, session_id)``, never by order.
        features: wide or tidy features (:func:`wide_features`).
        alphas: candidate penalties.

    Raises:
        ValueError: fewer than 3 training scans with features, or a feature column that is constant or
            non-finite everywhere in training.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wide = wide_features(features)
    columns = [c for c in wide.columns if c not in (keys.SUBJECT_ID, keys.SESSION_ID)]
    joined = _join(table, wide)
    complete = joined[columns].notna().all(axis=1).to_numpy()
    train = complete & (joined[keys.SPLIT] == "train").to_numpy()
    if train.sum() < 3:
        raise ValueError(f"ridge baseline: {int(train.sum())} training scans have features; need at least 3")
    x = joined[columns].to_numpy(np.float64)
    x = np.clip(x, np.nanmin(x[train], axis=0), np.nanmax(x[train], axis=0))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
    model.fit(x[train], joined[keys.AGE].to_numpy(np.float64)[train])
    out = joined.loc[complete, [keys.SUBJECT_ID, keys.SESSION_ID, keys.AGE, keys.SPLIT]].copy()
    out["pred"] = model.predict(x[complete])
    alpha = float(model[-1].alpha_)
    return RidgeResult(out.reset_index(drop=True), alpha, len(columns), int((~complete).sum()))


def results_table(predictions: dict[str, pd.DataFrame], train_mean_age: float) -> pd.DataFrame:
    """One row per model × split: ``model, split, n, mae_years``, plus the mean predictor as a floor.

    Args:
        predictions: model name → ``subject_id, session_id, age, split`` and a ``pred`` column (a
            ``pred_corrected`` column adds a ``<model>+bias-correction`` row).
        train_mean_age: the training split's mean age (the mean predictor's constant prediction).
    """
    rows = []
    for name, frame in predictions.items():
        columns = {name: "pred"}
        if "pred_corrected" in frame.columns and not np.allclose(frame["pred_corrected"], frame["pred"]):
            columns[f"{name}+bias-correction"] = "pred_corrected"
        for label, column in columns.items():
            for split, rows_ in frame.groupby(keys.SPLIT, sort=False):
                error = np.abs(rows_[column].to_numpy(float) - rows_[keys.AGE].to_numpy(float))
                rows.append(
                    {"model": label, "split": split, "n": len(rows_), "mae_years": float(error.mean())}
                )
    reference = next(iter(predictions.values()))
    for split, rows_ in reference.groupby(keys.SPLIT, sort=False):
        error = np.abs(rows_[keys.AGE].to_numpy(float) - train_mean_age)
        rows.append({"model": "mean-age", "split": split, "n": len(rows_), "mae_years": float(error.mean())})
    order = {"train": 0, "val": 1, "test": 2}
    table = pd.DataFrame(rows)
    table["_order"] = table["split"].map(order).fillna(3)
    return table.sort_values(["_order", "model"], kind="stable").drop(columns="_order").reset_index(drop=True)
