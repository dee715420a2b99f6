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
