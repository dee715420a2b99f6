"""When a difference between two training arms is *called*: the verdict rule of :func:`bap.compare.arm_statistics`.

An effect is called (``better`` / ``worse``) only when

* its 95 % CI (crossed bootstrap over seeds and subjects) excludes 0,
* it is larger than the seed-to-seed SD of the per-seed differences,
* for an age bin, its Holm-adjusted p value over the bins of that arm is below 0.05, and
* there are enough test subjects and training seeds for those numbers to mean something: at least
  :data:`MIN_TEST_SUBJECTS` distinct test subjects in the bin and :data:`MIN_SEEDS` training seeds. A percentile
  bootstrap over fewer subjects gives intervals that are too narrow (it cannot see the spread of a population
  from a handful of draws), and the SD of two seeds is a single difference. Below either, the verdict is
  ``too few to call`` whatever the interval says.

Otherwise the verdict is ``no detectable effect``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_SEEDS", "MIN_TEST_SUBJECTS", "TOO_FEW", "holm", "verdict"]

#: Fewest distinct test subjects (in the bin) with which an effect is called.
MIN_TEST_SUBJECTS = 20
#: Fewest training seeds with which an effect is called.
MIN_SEEDS = 3
TOO_FEW = "too few to call"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p values (NaN entries are left out of the family and stay NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def verdict(
    diff: float, low: float, high: float, seed_sd: float, p: float, *, n_subjects: int, n_seeds: int
) -> str:
    """``better`` / ``worse`` / ``no detectable effect`` / ``too few to call`` for one arm against the baseline.

    Args:
        diff: mean difference of absolute errors (arm − baseline, years; negative is better).
        low, high: its 95 % CI.
        seed_sd: SD over seeds of the per-seed difference (NaN with one seed).
        p: the p value that must be below 0.05 (Holm-adjusted for an age bin, the bootstrap p overall).
        n_subjects: distinct test subjects behind the difference.
        n_seeds: training seeds behind it.
    """
    if n_subjects < MIN_TEST_SUBJECTS or n_seeds < MIN_SEEDS:
        return TOO_FEW
    exceeds_seeds = np.isnan(seed_sd) or abs(diff) > seed_sd
    if (high < 0 or low > 0) and exceeds_seeds and not p >= 0.05:
        return "better" if diff < 0 else "worse"
    return "no detectable effect"
