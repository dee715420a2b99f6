"""Brain-age metrics against hand-computed values and known generating parameters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bap import metrics, resampling


def test_point_metrics_by_hand():
    age = np.array([20.0, 40.0, 60.0, 80.0])
    pred = np.array([22.0, 37.0, 60.0, 84.0])
    assert metrics.mae(age, pred) == pytest.approx((2 + 3 + 0 + 4) / 4)
    assert metrics.rmse(age, pred) == pytest.approx(np.sqrt((4 + 9 + 0 + 16) / 4))
    assert metrics.r2(age, pred) == pytest.approx(1 - 29 / 2000)
    assert metrics.pearson_r(age, pred) == pytest.approx(stats.pearsonr(age, pred).statistic)
    assert np.isnan(metrics.pearson_r(age, np.ones(4)))
    with pytest.raises(ValueError, match="same length"):
        metrics.mae(age, pred[:3])


def test_bias_correction_recovers_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, size=2000)
    # Regression to the mean: predictions shrink towards the mean with slope 0.7 and intercept 15.
    pred = 0.7 * age + 15.0 + rng.normal(0, 1.0, size=age.size)
    fit = metrics.fit_bias_correction(age, pred)
    assert fit.slope == pytest.approx(0.7, abs=0.01)
    assert fit.intercept == pytest.approx(15.0, abs=0.5)
    corrected = fit.apply(pred)
    # After correction the gap no longer depends on age.
    gap_raw, gap_cor = pred - age, corrected - age
    assert stats.spearmanr(gap_raw, age).statistic < -0.9
    assert abs(stats.spearmanr(gap_cor, age).statistic) < 0.05
    exact = metrics.fit_bias_correction([10, 20, 30], [12, 17, 22])
    assert (exact.slope, exact.intercept) == pytest.approx((0.5, 7.0))
    np.testing.assert_allclose(exact.apply([12, 17, 22]), [10, 20, 30])


def test_bias_correction_refuses_flat_or_degenerate_fits():
    with pytest.raises(ValueError, match="2 distinct ages"):
        metrics.fit_bias_correction([50, 50], [40, 60])
    with pytest.raises(ValueError, match="slope"):
        metrics.fit_bias_correction([20, 40, 60], [50, 50, 50])


def test_summary_reports_gap_and_spearman():
    age = np.array([20.0, 30.0, 40.0, 50.0])
    pred = age + np.array([4.0, 2.0, -2.0, -4.0])
    out = metrics.regression_summary(age, pred)
    assert out["mean_gap"] == pytest.approx(0.0)
    assert out["spearman_gap_age"] == pytest.approx(-1.0)
    assert out["mae"] == pytest.approx(3.0)


def test_bootstrap_ci_covers_estimate_and_resamples_whole_subjects():
    age = np.zeros(6)
    pred = np.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0])
    # Two subjects with three sessions each: every replicate draws sessions by subject, so the replicate
    # MAE can only be 1, 3 or 5.
    ci = resampling.bootstrap_ci(age, pred, groups=np.array(["a"] * 3 + ["b"] * 3), n_boot=300, seed=1)
    assert ci.estimate == pytest.approx(3.0)
    assert ci.low == pytest.approx(1.0) and ci.high == pytest.approx(5.0)
    again = resampling.bootstrap_ci(age, pred, groups=np.array(["a"] * 3 + ["b"] * 3), n_boot=300, seed=1)
    assert again == ci


def _subject_draws(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of each replicate, drawn the way the subject bootstrap has always drawn them."""
    subjects = list(dict.fromkeys(sorted(groups)))
    members = [np.flatnonzero(groups == s) for s in subjects]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        draw = rng.integers(0, len(members), size=len(members))
        draws.append(np.concatenate([members[i] for i in draw]))
    return draws


def test_bootstrap_ci_and_paired_test_resample_the_same_subjects_for_a_seed():
    rng = np.random.default_rng(7)
    groups = rng.choice(np.array(["s3", "s1", "s2", "s5", "s4", "s0"]), size=30)
    age = rng.uniform(20, 80, size=30)
    pred = age + rng.normal(0, 4, size=30)
    err_a, err_b = np.abs(pred - age), np.abs(rng.normal(0, 4, size=30))
    draws = _subject_draws(groups, n_boot=200, seed=11)
    maes = [metrics.mae(age[idx], pred[idx]) for idx in draws]
    ci = resampling.bootstrap_ci(age, pred, groups=groups, n_boot=200, seed=11)
    alpha = (1.0 - 0.95) / 2.0  # the default level, computed as bootstrap_ci computes it
    assert (ci.low, ci.high) == tuple(np.nanquantile(maes, [alpha, 1.0 - alpha]))
    diffs = [err_b[idx].mean() - err_a[idx].mean() for idx in draws]
    res = resampling.paired_error_test(err_a, err_b, groups=groups, n_boot=200, seed=11)
    assert (res.diff.low, res.diff.high) == tuple(np.quantile(diffs, [0.025, 0.975]))
    expected_p = min(1.0, 2.0 * min(np.mean(np.array(diffs) <= 0), np.mean(np.array(diffs) >= 0)))
    assert res.p_bootstrap == expected_p


def test_per_bin_table_bins_and_values():
    age = np.array([21.0, 25.0, 33.0, 38.0, 39.0])
    err = np.array([1.0, 3.0, 2.0, 2.0, 2.0])
    table = metrics.per_bin_table(age, err, gap=-err, bin_width=10.0, n_boot=200)
    assert table["age_bin"].tolist() == ["all", "[20, 30)", "[30, 40)"]
    assert table["n"].tolist() == [5, 2, 3]
    assert table["mae_years"].tolist() == pytest.approx([2.0, 2.0, 2.0])
    row = table.iloc[2]
    assert row["mae_low_years"] == pytest.approx(2.0) and row["mae_high_years"] == pytest.approx(2.0)
    assert table.iloc[0]["mean_gap_years"] == pytest.approx(-2.0)


def test_paired_test_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, size=200)
    pred_a = age + rng.normal(0, 5, size=age.size)
    pred_b = age + 0.5 * (pred_a - age)  # b halves every error of a
    res = resampling.paired_mae_test(age, pred_a, pred_b, n_boot=500)
    assert res.diff.estimate == pytest.approx(-0.5 * res.mae_a)
    assert res.diff.high < 0
    assert res.p_bootstrap < 0.01 and res.p_wilcoxon < 1e-6
    same = resampling.paired_mae_test(age, pred_a, pred_a.copy(), n_boot=200)
    assert same.diff.estimate == 0.0 and same.p_wilcoxon == 1.0


def test_crossed_bootstrap_holds_the_seed_spread_that_a_subject_bootstrap_misses():
    rng = np.random.default_rng(0)
    scans = rng.normal(0.0, 0.1, size=60)
    # Every seed shifts all scans together: the seed-averaged errors hide that spread.
    seed_shift = np.array([-3.0, -1.0, 1.0, 3.0])
    values = seed_shift[:, None] + scans[None, :]
    crossed = resampling.crossed_bootstrap(values, n_boot=2000, seed=1)
    subject_only = resampling.bootstrap_ci(
        values.mean(axis=0), values.mean(axis=0), statistic=lambda a, _b: float(a.mean()), n_boot=2000, seed=1
    )
    assert crossed.estimate == pytest.approx(values.mean())
    assert crossed.high - crossed.low > 2.0  # the seed means alone span 6 years
    assert subject_only.high - subject_only.low < 0.2
    assert crossed.p_value > 0.05  # a mean of 0 is well inside the seed spread


def test_crossed_bootstrap_with_one_seed_is_a_subject_bootstrap_and_draws_subjects_whole():
    rng = np.random.default_rng(2)
    err = rng.normal(2.0, 1.0, size=40)
    one = resampling.crossed_bootstrap(err[None, :], n_boot=4000, seed=3)
    ref = resampling.bootstrap_ci(err, err, statistic=lambda a, _b: float(a.mean()), n_boot=4000, seed=3)
    assert one.low == pytest.approx(ref.low, abs=0.05) and one.high == pytest.approx(ref.high, abs=0.05)
    assert one.p_value == pytest.approx(1.0 / 4000)  # every replicate is above 0
    # Two scans of each subject, equal values: the same spread as one scan per subject, not a narrower one.
    doubled = resampling.crossed_bootstrap(
        np.repeat(err, 2)[None, :], groups=np.repeat(np.arange(40), 2), n_boot=4000, seed=3
    )
    assert doubled.high - doubled.low == pytest.approx(one.high - one.low, rel=0.1)
    as_if_independent = resampling.crossed_bootstrap(np.repeat(err, 2)[None, :], n_boot=4000, seed=3)
    assert as_if_independent.high - as_if_independent.low < 0.85 * (one.high - one.low)


def test_crossed_bootstrap_covers_the_true_mean_of_a_seed_by_subject_design():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(200):
        values = rng.normal(0.0, 1.0, size=(6, 1)) + rng.normal(0.0, 1.0, size=(1, 50))
        values += rng.normal(0.0, 0.5, size=values.shape)
        result = resampling.crossed_bootstrap(values, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += result.low <= 0.0 <= result.high
    # 95 % nominal; resampling both factors is known to over-cover slightly, and must not under-cover much.
    assert 0.88 <= hits / 200 <= 1.0


def test_crossed_bootstrap_refuses_holes_and_mismatched_groups():
    with pytest.raises(ValueError, match="NaN"):
        resampling.crossed_bootstrap(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="groups has shape"):
        resampling.crossed_bootstrap(np.ones((2, 3)), groups=np.arange(2))
    with pytest.raises(ValueError, match="non-empty"):
        resampling.crossed_bootstrap(np.ones(3))
