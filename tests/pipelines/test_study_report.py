"""The plain-language conclusion of the study report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.quality import truth_path
from pipelines.study.reference import ridge_on_true_volumes
from pipelines.study.report import fidelity_sentences


def _rows(*rows):
    cols = ["region", "tissue", "slope_real", "slope_synthetic", "p_value", "flagged"]
    return pd.DataFrame(rows, columns=cols)


def test_flagged_regions_are_named_with_their_slopes_and_direction():
    table = _rows(
        ("lateral-ventricles", "csf", 893.2, 555.7, 0.0073, True),
        ("hippocampus", "gm", -13.2, -12.6, 0.96, False),
        ("whole-brain", "gm", -800.0, -1200.0, 0.01, "True"),
        ("caudate", "gm", -5.0, 4.0, 0.02, True),
    )
    sentences = fidelity_sentences(table)
    assert len(sentences) == 3
    assert "lateral-ventricles (csf)" in sentences[0] and "+556 mm³ per year" in sentences[0]
    assert "+893" in sentences[0] and "more slowly than" in sentences[0] and "p = 0.0073" in sentences[0]
    assert "faster than" in sentences[1]
    assert "opposite direction" in sentences[2]
    assert not any("hippocampus" in s for s in sentences)


def test_nothing_flagged_says_so_and_a_missing_table_says_nothing():
    table = _rows(("hippocampus", "gm", -13.2, -12.6, 0.96, False))
    assert fidelity_sentences(table) == [
        "The regional evaluation finds no key region whose volume-age slope differs between real and synthetic "
        "brains."
    ]
    assert fidelity_sentences(None) == [] and fidelity_sentences(pd.DataFrame()) == []


def test_sparse_bins_follow_the_training_histogram_rule():
    from flowlet.data import keys
    from pipelines.study.report import sparse_bins

    # training spans 0-10 .. 70-80 (K = 8 bins, N = 20): sparse = fewer than 20 / 16 = 1.25 scans, i.e. 0 or 1
    train = [5] + [25] * 8 + [35] * 6 + [45] * 2 + [55] * 2 + [75]
    test = [5, 6, 15, 16, 25, 26, 75]  # 60-70 has no test scan, 70-80 only one
    split = pd.DataFrame(
        [
            {keys.AGE: float(a), keys.SPLIT: name}
            for name, ages in (("train", train), ("test", test))
            for a in ages
        ]
    )
    assert sparse_bins(split, 10.0) == ["[0, 10)", "[10, 20)"]
    assert sparse_bins(split, 10.0, min_test=1) == ["[0, 10)", "[10, 20)", "[70, 80)"]
    # the rule never reads a test result: changing predictions cannot change it; changing train counts does
    more = pd.concat([split, pd.DataFrame({keys.AGE: [15.0] * 3, keys.SPLIT: "train"})], ignore_index=True)
    assert sparse_bins(more, 10.0) == ["[0, 10)"]


def _bins(arm, label, n, mae, diff, low, high, sd, verdict, p_holm=0.01):
    return {"arm": arm, "age_bin": label, "n": n, "n_seeds": 3, "mae_years": mae, "mae_low_years": mae - 1,
            "mae_high_years": mae + 1, "diff_years": diff, "diff_low_years": low, "diff_high_years": high,
            "diff_seed_sd_years": sd, "p_holm": p_holm, "verdict": verdict}  # fmt: skip


def test_conclusion_ranks_the_arms_and_says_no_detectable_effect():
    from pipelines.study.report import conclusion_sentences

    bins = pd.DataFrame(
        [
            _bins("real", "all", 180, 6.0, 0, 0, 0, 0, "baseline", float("nan")),
            _bins("oversample", "all", 180, 5.5, -0.5, -0.9, -0.1, 0.2, "better", float("nan")),
            _bins("synthetic:1", "all", 180, 7.0, 1.0, -0.2, 2.0, 0.5, "no detectable effect", float("nan")),
            _bins("real", "[80, 90)", 20, 12.0, 0, 0, 0, 0, "baseline", float("nan")),
            _bins("oversample", "[80, 90)", 20, 13.0, 1.0, -1, 3, 2.0, "no detectable effect", 0.6),
            _bins("synthetic:1", "[80, 90)", 20, 9.0, -3.0, -5, -1, 0.8, "better", 0.02),
        ]
    )
    pooled = bins[bins.age_bin == "[80, 90)"].assign(age_bin="all")
    sentences = conclusion_sentences(bins, ["[80, 90)"], pooled, None)
    assert sentences[0].startswith("In the sparse age bins ([80, 90); 20 test scans)")
    assert "synthetic:1 9.00 [8.00, 10.00]; real 12.00" in sentences[0]  # ranked best first
    assert "Detectably better than real-only training: synthetic:1." in sentences[0]
    assert "Bin [80, 90)" in sentences[1] and "synthetic:1 better (-3.00 y" in sentences[1]
    overall = sentences[2]
    assert overall.startswith("Overall (180 test scans), best first: oversample 5.50")
    assert "synthetic:1 +1.00 y, 95 % CI [-0.20, +2.00], seed SD 0.50: no detectable effect" in overall
    none = conclusion_sentences(
        bins[bins.arm != "oversample"].assign(verdict="no detectable effect"), [], None, None
    )
    assert "no detectable effect" in none[1] and "No age bin" in none[0]
    small = bins.assign(verdict=["baseline", "too few to call", "too few to call"] * 2)
    few = conclusion_sentences(small, [], None, None)
    assert "oversample -0.50 y, 95 % CI [-0.90, -0.10], seed SD 0.20: too few to call" in few[1]
    assert "Too few test subjects or training seeds to call any effect here (at least 20 and 3" in few[1]
    assert "Detectably better" not in few[1] and "fewer than 20 test subjects or 3 training seeds" in few[-1]


def _scans_with_volumes(folder, n: int = 24) -> pd.DataFrame:
    """Scans whose true volumes shrink linearly with age (plus a little noise): ridge recovers the age."""
    rng = np.random.default_rng(0)
    ages = np.linspace(20, 80, n)
    rows = []
    for i, age in enumerate(ages):
        image = folder / f"sub-{i:03d}" / "anat" / f"sub-{i:03d}_T1w.nii.gz"
        image.parent.mkdir(parents=True)
        volumes = pd.DataFrame(
            {
                "region": ["hippocampus", "ventricles", "cortex"],
                "tissue": ["gm", "csf", "gm"],
                "volume_mm3": np.array([4000 - 10 * age, 1000 + 40 * age, 5e5 - 900 * age])
                + rng.normal(0, 5, 3),
            }
        )
        volumes.to_csv(truth_path(image), sep="\t", index=False)
        split = "test" if i % 4 == 1 else ("val" if i % 4 == 3 else "train")
        rows.append(
            {"subject_id": f"{i:03d}", "session_id": "n/a", "age": age, "split": split, "path": str(image)}
        )
    return pd.DataFrame(rows)


def test_ridge_reference_predicts_each_test_scan_from_its_own_volumes(tmp_path):
    scans = _scans_with_volumes(tmp_path)
    pred = ridge_on_true_volumes(scans)
    test = scans[scans["split"] == "test"]
    assert (
        pred[["subject_id", "session_id"]].values.tolist()
        == test[["subject_id", "session_id"]].values.tolist()
    )
    np.testing.assert_allclose(pred["pred"], test["age"], atol=1.0)
    Path(truth_path(test["path"].iloc[0])).unlink()
    assert ridge_on_true_volumes(scans) is None
