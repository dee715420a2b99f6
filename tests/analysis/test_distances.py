import numpy as np
import pandas as pd
import pytest

from analysis.metrics import age_matched_distances, frechet_distance, mmd


def _table(values, ages, region="r"):
    return pd.DataFrame({"region": region, "tissue": "gm", "age": ages, "volume_mm3": values})


def test_shift_within_age_bins_gives_exact_w1_and_ks_one():
    ages = np.repeat([25.0, 45.0, 65.0], 5)
    base = np.tile(np.arange(5.0), 3) + ages * 10
    out = age_matched_distances(_table(base, ages), _table(base + 100.0, ages))
    assert out.loc[0, "wasserstein"] == pytest.approx(100.0)
    assert out.loc[0, "ks_statistic"] == pytest.approx(1.0)
    assert out.loc[0, "n_bins"] == 3
    assert out.loc[0, "wasserstein_sd"] == pytest.approx(100.0 / np.std(np.arange(5.0), ddof=1))


def test_age_mix_alone_is_not_a_distance():
    # Same age curve, different age mix: an unmatched comparison sees the mix, the age-matched one must not.
    rng = np.random.default_rng(0)
    ages_r = rng.uniform(20, 80, 3000)
    ages_s = np.concatenate([rng.uniform(20, 40, 2500), rng.uniform(40, 80, 500)])
    f = lambda a: 1000 - 5 * a  # noqa: E731
    real, syn = (
        _table(f(ages_r) + rng.normal(0, 20, ages_r.size), ages_r),
        _table(f(ages_s) + rng.normal(0, 20, ages_s.size), ages_s),
    )
    matched = age_matched_distances(real, syn, age_bins=np.arange(20, 81, 2.0)).loc[0]
    unmatched = age_matched_distances(real, syn, age_bins=[0, 200]).loc[0]
    assert matched["ks_pvalue"] > 0.05
    assert unmatched["ks_pvalue"] < 1e-6
    assert matched["wasserstein"] < 0.25 * unmatched["wasserstein"]


def test_mmd_zero_for_identical_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = rng.normal(size=(200, 3))
    same, shifted = mmd(x, y), mmd(x, y + 2.0)
    assert abs(same) < 0.02
    assert shifted > 0.3
    # Identical samples: the unbiased estimator equals -(2/(n(n-1))) * sum_{i<j}... check exact value by brute force
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 1.0**2))  # noqa: E731
    a, b = x[:4], x[4:9]
    brute = (
        sum(k(a[i], a[j]) for i in range(4) for j in range(4) if i != j) / 12
        + sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
        - 2 * np.mean([k(p, q) for p in a for q in b])
    )
    assert mmd(a, b, bandwidth=1.0) == pytest.approx(brute)


def test_frechet_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2))
    x = (x - x.mean(0)) / x.std(0, ddof=1)  # unit sample variance, zero mean
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([3.0, 4.0])
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-6)
    # 1D: (mu1-mu2)^2 + (s1-s2)^2
    assert frechet_distance(x[:, :1], 3.0 * x[:, :1]) == pytest.approx(4.0, rel=1e-6)


def test_bad_features_raise():
    with pytest.raises(ValueError, match="feature matrix"):
        frechet_distance(np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="feature dimension"):
        mmd(np.zeros((3, 2)), np.zeros((3, 3)))
