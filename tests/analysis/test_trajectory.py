import numpy as np
import pandas as pd
import pytest

from analysis.metrics import age_slopes, linear_fit, trajectory_fidelity


def _cohort(n: int, slope: float, seed: int, noise: float = 50.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    rows = []
    for region, base, s in (("ventricle", 20000.0, slope), ("hippocampus", 4000.0, -slope / 10)):
        vol = base + s * age + rng.normal(0, noise, n)
        rows.append(
            pd.DataFrame(
                {
                    "subject_id": [f"s{i}" for i in range(n)],
                    "region": region,
                    "tissue": "csf",
                    "age": age,
                    "volume_mm3": vol,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_linear_fit_recovers_exact_line_in_float64():
    age = np.array([10.0, 20.0, 35.0, 50.0, 71.0])
    fit = linear_fit(age, 3.0 - 2.5 * age)
    assert fit["slope"] == pytest.approx(-2.5, abs=1e-12)
    assert fit["intercept"] == pytest.approx(3.0, abs=1e-10)
    assert fit["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert fit["n"] == 5


def test_linear_fit_ci_matches_closed_form():
    age = np.array([0.0, 1.0, 2.0, 3.0])
    value = np.array([0.0, 1.0, 1.0, 3.0])  # slope 0.9, residual SS 0.7, Sxx 5
    fit = linear_fit(age, value, confidence=0.95)
    se = np.sqrt(0.7 / 2 / 5)
    assert fit["slope"] == pytest.approx(0.9)
    assert fit["slope_se"] == pytest.approx(se)
    assert fit["ci_high"] - fit["slope"] == pytest.approx(4.302652729911275 * se, rel=1e-9)


def test_too_few_points_give_nan():
    fit = linear_fit(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert np.isnan(fit["slope"]) and fit["n"] == 2


def test_age_slopes_per_region_and_percent():
    table = _cohort(200, 40.0, seed=0, noise=1e-9)
    out = age_slopes(table).set_index("region")
    assert out.loc["ventricle", "slope"] == pytest.approx(40.0, rel=1e-6)
    assert out.loc["hippocampus", "slope"] == pytest.approx(-4.0, rel=1e-6)
    expected_pct = 100 * 40.0 / table[table.region == "ventricle"].volume_mm3.mean()
    assert out.loc["ventricle", "slope_pct_per_year"] == pytest.approx(expected_pct, rel=1e-6)


def test_two_halves_of_one_cohort_are_not_flagged():
    table = _cohort(400, 40.0, seed=1)
    ids = table.subject_id.unique()
    half = set(ids[::2])
    a, b = table[table.subject_id.isin(half)], table[~table.subject_id.isin(half)]
    out = trajectory_fidelity(a, b)
    assert not out["flagged"].any()
    assert (out["slope_diff_pct_per_year"].abs() < 0.05).all()


def test_shuffled_ages_are_flagged():
    real = _cohort(200, 40.0, seed=2)
    fake = _cohort(200, 40.0, seed=3)
    rng = np.random.default_rng(0)
    perm = dict(
        zip(fake.subject_id.unique(), rng.permutation(fake.drop_duplicates("subject_id").age.to_numpy()))
    )
    fake["age"] = fake.subject_id.map(perm)
    out = trajectory_fidelity(real, fake).set_index("region")
    assert out["flagged"].all()
    assert out.loc["ventricle", "slope_diff"] == pytest.approx(-40.0, abs=5.0)
