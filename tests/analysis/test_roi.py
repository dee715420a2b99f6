import numpy as np
import pandas as pd
import pytest

from analysis.metrics import dice, histogram_kl, match_by_age, roi_pair_metrics, summarise_roi


def test_match_by_age_equals_rank_pairing_for_equal_sizes():
    real = pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "age": [70.0, 20.0, 45.0, 33.0]})
    syn = pd.DataFrame({"subject_id": ["w", "x", "y", "z"], "age": [50.0, 21.0, 80.0, 30.0]})
    out = match_by_age(real, syn)
    assert out["subject_id_real"].tolist() == ["b", "d", "c", "a"]  # sorted by real age
    assert out["subject_id_synthetic"].tolist() == ["x", "z", "w", "y"]  # rank pairing
    assert out["age_gap"].tolist() == [1.0, 3.0, 5.0, 10.0]


def test_match_by_age_unequal_sizes_and_max_gap():
    real = pd.DataFrame({"subject_id": ["a", "b", "c"], "age": [20.0, 50.0, 80.0]})
    syn = pd.DataFrame({"subject_id": ["x", "y"], "age": [52.0, 10.0]})
    out = match_by_age(real, syn)
    assert dict(zip(out.subject_id_synthetic, out.subject_id_real)) == {"x": "b", "y": "a"}
    assert len(match_by_age(real, syn, max_age_gap=5.0)) == 1


def test_match_by_age_rejects_duplicate_keys():
    t = pd.DataFrame({"subject_id": ["a", "a"], "age": [1.0, 2.0]})
    with pytest.raises(ValueError, match="duplicate"):
        match_by_age(t, t)


def test_dice_hand_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, overlap 16
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(b)))


def test_histogram_kl_zero_for_identical_and_bits_for_disjoint_halves():
    x = np.array([0.1, 0.1, 0.9, 0.9])
    assert histogram_kl(x, x, bins=2) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.1, 0.1, 0.1, 0.9]), np.array([0.1, 0.9, 0.9, 0.9])
    # P = (3/4, 1/4), Q = (1/4, 3/4): KL = 3/4 log2 3 + 1/4 log2(1/3) = 0.5 log2 3
    assert histogram_kl(p, q, bins=2, pseudo_count=0.0) == pytest.approx(0.5 * np.log2(3))
    assert np.isnan(histogram_kl(np.array([]), q))


def test_roi_pair_metrics_hand_built():
    lab_r = np.zeros((4, 4, 4), int)
    lab_s = np.zeros((4, 4, 4), int)
    lab_r[:2] = 1
    lab_s[1:3] = 1
    lab_r[3, 0, 0] = 2  # label 2 only in the real map
    img_r = np.full((4, 4, 4), 1.0)
    img_s = np.full((4, 4, 4), 3.0)
    out = roi_pair_metrics(lab_r, lab_s, img_r, img_s).set_index("region_index")
    assert out.loc[1, "dice"] == pytest.approx(0.5)
    assert out.loc[1, "n_intersection"] == 16 and out.loc[1, "n_union"] == 48
    assert out.loc[1, "mae_intersection"] == pytest.approx(2.0)
    assert out.loc[1, "mse_union"] == pytest.approx(4.0)
    assert out.loc[2, "dice"] == pytest.approx(0.0)
    assert np.isnan(out.loc[2, "mae_intersection"])
    assert out.loc[2, "mae_union"] == pytest.approx(2.0)
    assert out.loc[1, "kl_union_bits"] > 1.0  # disjoint histograms


def test_summarise_roi_global_local_skip_nan():
    rows = pd.DataFrame(
        {"pair": [0, 0, 1, 1], "region": ["a", "b", "a", "b"], "dice": [1.0, 0.0, 0.5, np.nan]}
    )
    out = summarise_roi(rows, metrics=["dice"]).set_index("scope")
    assert out.loc["global", "mean"] == pytest.approx(0.5)
    assert out.loc["global", "n"] == 3
    assert out.loc["local", "mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert out.loc["local", "sd"] == pytest.approx(np.std([0.75, 0.0], ddof=1))


def test_vectorised_metrics_match_a_direct_loop():
    rng = np.random.default_rng(0)
    lab_r = rng.integers(0, 5, (6, 7, 5))
    lab_s = rng.integers(0, 5, (6, 7, 5))
    img_r, img_s = rng.uniform(0, 1, (2, 6, 7, 5))
    out = roi_pair_metrics(lab_r, lab_s, img_r, img_s, bins=8, value_range=(0.0, 1.0)).set_index(
        "region_index"
    )
    assert sorted(out.index) == [1, 2, 3, 4]
    for region in range(1, 5):
        a, b = lab_r == region, lab_s == region
        for name, mask in (("intersection", a & b), ("union", a | b)):
            d = img_r[mask] - img_s[mask]
            assert out.loc[region, f"mae_{name}"] == pytest.approx(np.abs(d).mean())
            assert out.loc[region, f"mse_{name}"] == pytest.approx((d**2).mean())
            kl = histogram_kl(img_r[mask], img_s[mask], bins=8, value_range=(0.0, 1.0))
            assert out.loc[region, f"kl_{name}_bits"] == pytest.approx(kl)
        assert out.loc[region, "dice"] == pytest.approx(dice(a, b))
