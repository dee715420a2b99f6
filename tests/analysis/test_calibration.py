"""Calibration on phantoms: a real-vs-real split passes, and each deliberately wrong set is flagged by its metric."""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from analysis.metrics import (
    age_matched_distances,
    frechet_distance,
    handcrafted_features,
    memorisation_audit,
    mmd,
    standardise_features,
    trajectory_fidelity,
)


def _truth_volumes(cohort) -> pd.DataFrame:
    frames = []
    for row in cohort.table.itertuples():
        path = Path(row.path)
        truth = path.with_name(path.name.replace("_T1w.nii.gz", "_volumes.tsv"))
        frames.append(pd.read_csv(truth, sep="\t").assign(subject_id=row.subject_id, age=row.age))
    return pd.concat(frames, ignore_index=True)


def _key(volumes: pd.DataFrame) -> pd.DataFrame:
    keep = volumes["region"].isin(["Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "intracranial"])
    return volumes[keep & volumes["tissue"].isin(["all", "gm"])]


def test_trajectory_flags_shuffled_ages_but_not_a_copy_of_the_cohort(phantom_cohort):
    real = _key(_truth_volumes(phantom_cohort))
    same = trajectory_fidelity(real, real.copy())
    assert not same["flagged"].any()
    np.testing.assert_allclose(same["slope_diff"], 0.0, atol=1e-9)
    ages = real.drop_duplicates("subject_id").set_index("subject_id")["age"]
    # Reverse-ordered ages: the strongest possible label shuffle.
    shuffled = dict(zip(ages.sort_values().index, ages.sort_values().to_numpy()[::-1]))
    wrong = real.assign(age=real["subject_id"].map(shuffled))
    out = trajectory_fidelity(real, wrong).set_index(["region", "tissue"])
    assert out.loc[("Left_Lateral_Ventricle", "all"), "flagged"]
    assert (
        out.loc[("Left_Lateral_Ventricle", "all"), "slope_real"]
        > 0
        > out.loc[("Left_Lateral_Ventricle", "all"), "slope_synthetic"]
    )
    dist = age_matched_distances(real, real.copy(), age_bins=[0, 50, 120])
    np.testing.assert_allclose(dist["wasserstein"], 0.0, atol=1e-9)


def test_blurred_images_are_far_in_feature_space(phantom_arrays):
    feats = np.stack([handcrafted_features(a) for a in phantom_arrays])
    blurred = np.stack(
        [handcrafted_features(ndimage.gaussian_filter(a, 1.0) * (a != 0)) for a in phantom_arrays]
    )
    half_a, half_b = feats[::2], feats[1::2]
    a, b, c = standardise_features(half_a, half_b, blurred[1::2])
    assert mmd(a, c) > 3 * max(mmd(a, b), 0.02)
    assert frechet_distance(a, c) > 3 * frechet_distance(a, b)


def test_privacy_flags_copies_of_training_images(phantom_arrays):
    flat = np.stack([a.ravel() for a in phantom_arrays])
    train, holdout = flat[:6], flat[6:10]
    rng = np.random.default_rng(0)
    copies = train[:3] + rng.normal(0, 1e-3 * flat.std(), train[:3].shape)
    synthetic = np.vstack([flat[10:], copies])
    ids = [f"s{i}" for i in range(5)]
    audit = memorisation_audit(
        synthetic,
        train,
        holdout,
        synthetic_ids=ids,
        synthetic_ages=[30.0] * 5,
        train_ids=[f"t{i}" for i in range(6)],
        holdout_ids=[f"h{i}" for i in range(4)],
        quantile=1.0,
    )
    flagged = audit.per_image["flagged"].to_numpy()
    corr = audit.per_image["nn_correlation"].to_numpy()
    assert flagged[2:].all()
    assert corr[2:].min() > corr[:2].max()
    assert (corr[2:] > 0.9999).all()
