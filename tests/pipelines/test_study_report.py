"""The plain-language conclusion of the study report."""

from __future__ import annotations

import pandas as pd

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


def test_sparse_bins_are_the_least_trained_bins_that_can_be_tested():
    from flowlet.data import keys
    from pipelines.study.report import _sparse_bins

    ages = {"train": [5, 25, 25, 25, 35, 35, 55, 65, 65, 75], "test": [5, 25, 26, 36, 37, 56, 57, 66, 67, 76]}
    split = pd.DataFrame(
        [{keys.AGE: float(a), keys.SPLIT: name} for name, values in ages.items() for a in values]
    )
    # 0-10 and 70-80 have one test scan each (no paired test possible): left out although least trained
    assert _sparse_bins(split, 10.0) == ["50-60", "30-40", "60-70"]  # ties in age order
    assert _sparse_bins(split, 10.0, count=1, min_test=1) == ["0-10"]


def test_sparse_bin_sentences_warn_when_the_bin_has_few_test_scans():
    from pipelines.study.report import conclusion_sentences

    def row(label, n, diff, low, high):
        return {"ratio": 0.5, "age_bin": label, "n_test": n, "mae_real_only": 6.0, "mae_augmented": 6.0 + diff,
                "diff_years": diff, "diff_low": low, "diff_high": high, "p_bootstrap": 0.01, "p_wilcoxon": 0.02}  # fmt: skip

    effects = pd.DataFrame(
        [row("all", 40, 1.0, 0.2, 1.8), row("70-80", 3, -8.4, -10.3, -5.5), row("20-30", 13, 0.5, -1, 2)]
    )
    overall, few, many = conclusion_sentences(effects, ["70-80", "20-30"])
    assert overall.startswith("Adding synthetic brains at ratio 0.5 increased the overall test MAE")
    assert "reduced" in few and "only 3 test scans, too few for a reliable bootstrap interval" in few
    assert "n = 13)" in many and "too few" not in many
