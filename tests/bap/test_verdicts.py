"""The verdict rule: no effect is called from too few test subjects or training seeds, however clear it looks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bap.compare import arm_statistics
from bap.verdicts import MIN_SEEDS, MIN_TEST_SUBJECTS, TOO_FEW, verdict


def test_a_clear_effect_is_called_only_with_enough_subjects_and_seeds():
    clear = dict(diff=-2.0, low=-3.0, high=-1.0, seed_sd=0.5, p=0.001)
    assert verdict(**clear, n_subjects=MIN_TEST_SUBJECTS, n_seeds=MIN_SEEDS) == "better"
    assert verdict(**{**clear, "diff": 2.0, "low": 1.0, "high": 3.0}, n_subjects=50, n_seeds=8) == "worse"
    assert verdict(**clear, n_subjects=MIN_TEST_SUBJECTS - 1, n_seeds=8) == TOO_FEW
    assert verdict(**clear, n_subjects=200, n_seeds=MIN_SEEDS - 1) == TOO_FEW
    assert verdict(**{**clear, "high": 0.5}, n_subjects=200, n_seeds=8) == "no detectable effect"


def _predictions(n_subjects: int, seeds: int, *, gain: float) -> pd.DataFrame:
    """Two arms on the same scans; ``better`` errs ``gain`` years less on every scan and seed."""
    rng = np.random.default_rng(0)
    ages = np.linspace(20, 80, n_subjects)
    rows = []
    for seed in range(seeds):
        noise = rng.normal(0, 0.2, n_subjects)
        for arm, error in (("real", 6.0), ("better", 6.0 - gain)):
            rows.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "ratio": 0.0,
                        "seed": seed,
                        "subject_id": [f"s{i:03d}" for i in range(n_subjects)],
                        "session_id": "n/a",
                        "age": ages,
                        "pred": ages + error + noise,
                        "pred_corrected": ages + error + noise,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize(
    ("n_subjects", "seeds", "expected"),
    [(7, 2, TOO_FEW), (7, 8, TOO_FEW), (40, 2, TOO_FEW), (40, 3, "better")],
)
def test_arm_statistics_refuses_to_call_a_small_study(n_subjects, seeds, expected):
    """A 2-year gain on every scan is called with 40 subjects and 3 seeds, never with 7 subjects or 2 seeds (the
    bootstrap interval of 7 subjects excludes 0 too: the interval is not what is missing)."""
    table = arm_statistics(_predictions(n_subjects, seeds, gain=2.0), bin_width=100.0, n_boot=300)
    row = table[(table["arm"] == "better") & (table["age_bin"] == "all")].iloc[0]
    assert row["diff_high_years"] < 0
    assert row["verdict"] == expected
