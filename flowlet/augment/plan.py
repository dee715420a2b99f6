"""Planning an augmentation: how many synthetic brains each age bin needs to reach a target histogram.

Pure functions (no I/O, no randomness except where a ``numpy.random.Generator`` is passed in).

The allocation is *water-filling*. A target is a vector of bin proportions ``p`` (uniform, another cohort's
histogram, a Gaussian, or explicit counts). For a level ``λ``, bin ``b`` wants ``max(0, λ·p_b − r_b)`` synthetic
samples, where ``r_b`` is its real count. The level is the one at which the wanted samples add up to the budget, so
the emptiest bins (relative to the target) are filled first, bins already above target get nothing, and with
enough budget ``real + synthetic`` is proportional to ``p``. The continuous solution is rounded to integers so that
the total equals the budget exactly (largest remaining deficits first, ties to the lower bin).

Budget rules: ``synthetic_ratio`` R gives ``round(R · n_real)``; ``max_synthetic`` caps it; with neither, the
budget is the smallest one that reaches the target shape without removing real data
(``λ = max_b r_b / p_b``). ``min_per_bin`` m reserves ``max(0, m − r_b)`` samples per bin before the rest is
water-filled, so every bin holds at least m brains in total.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowlet.data.bins import check_edges, edge_labels, histogram, width_edges

__all__ = [
    "PARAMETERS",
    "AugmentationPlan",
    "PlanError",
    "age_bins",
    "allocate",
    "check_bin_width",
    "check_budget",
    "draw_ages",
    "gaussian_proportions",
    "make_plan",
    "with_flags",
]


class PlanError(ValueError):
    """The requested target cannot be planned; the message names the parameter (``bin_width``, ``min_per_bin``,
    ...) or bin that is the problem. Command-line front ends translate the names with :func:`with_flags`."""


#: The planning parameters that messages name; :func:`with_flags` maps each to its command-line flag.
PARAMETERS = (
    "target_hist", "bins", "bin_width", "synthetic_ratio", "max_synthetic", "min_per_bin", "allow_extrapolation"
)  # fmt: skip


def with_flags(message: str) -> str:
    """``message`` with the planning parameter names written as flags (``bin_width`` -> ``--bin-width``).

    A name is replaced only where it stands as a parameter: at the start of the message or after ``raise``, ``set``
    or ``or``, and followed by ``:``, ``=``, a space and a value, or ``)``; ``"the bins 10-90"`` is left alone.
    """
    names = "|".join(sorted(PARAMETERS, key=len, reverse=True))
    pattern = re.compile(rf"(?:^|(?<=raise )|(?<=set )|(?<=or ))({names})(?=[:= )]|$)")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


@dataclass(frozen=True)
class AugmentationPlan:
    """The outcome of planning.

    Attributes:
        table: one row per bin with ``bin``, ``bin_start``, ``bin_end``, ``real_count``, ``target_proportion``,
            ``synthetic_count`` and ``combined_count``.
        budget: total synthetic samples (equals ``table.synthetic_count.sum()``).
        target: description of the target (e.g. ``"uniform"``).
    """

    table: pd.DataFrame
    budget: int
    target: str

    @property
    def edges(self) -> np.ndarray:
        return np.append(self.table["bin_start"].to_numpy(), self.table["bin_end"].to_numpy()[-1])

    def max_min_ratio(self) -> float:
        """Largest over smallest combined bin count (inf if a bin stays empty)."""
        combined = self.table["combined_count"].to_numpy()
        return float(combined.max() / combined.min()) if combined.min() > 0 else math.inf


def age_bins(
    ages: Sequence[float], *, bin_width: float | None = 5.0, edges: Sequence[float] | None = None
) -> np.ndarray:
    """Bin edges covering ``ages``: explicit ``edges``, or multiples of ``bin_width`` spanning the range.

    Raises:
        PlanError: edges not strictly increasing, fewer than two, or a non-positive width.
    """
    if edges is not None:
        try:
            return check_edges(edges)
        except ValueError:
            raise PlanError(
                f"bins: expected at least two strictly increasing edges, got {list(edges)}"
            ) from None
    check_bin_width(bin_width)
    if len(ages) == 0:
        raise PlanError("cannot build age bins for an empty cohort")
    return width_edges(ages, bin_width)


def check_bin_width(bin_width: float | None) -> None:
    """Refuse a bin width that is not a positive number of years (a rule that holds whatever the ages)."""
    if bin_width is None or not bin_width > 0:
        raise PlanError(f"bin_width: expected a positive number of years, got {bin_width}")


def check_budget(
    synthetic_ratio: float | None = None, max_synthetic: int | None = None, min_per_bin: int = 0
) -> None:
    """Refuse budget parameters out of range, whatever the ages: a negative ratio or count (None = not set)."""
    if synthetic_ratio is not None and not synthetic_ratio >= 0:
        raise PlanError(f"synthetic_ratio: expected a non-negative number, got {synthetic_ratio}")
    if max_synthetic is not None and max_synthetic < 0:
        raise PlanError(f"max_synthetic: expected a non-negative count, got {max_synthetic}")
    if min_per_bin < 0:
        raise PlanError(f"min_per_bin: expected a non-negative count, got {min_per_bin}")


def gaussian_proportions(edges: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """Probability mass of ``N(mean, sd²)`` in each bin, renormalised to the covered range."""
    if not sd > 0:
        raise PlanError(f"gaussian target: expected a positive SD, got {sd}")
    cdf = np.array([0.5 * (1.0 + math.erf((e - mean) / (sd * math.sqrt(2.0)))) for e in edges])
    mass = np.diff(cdf)
    if mass.sum() <= 0:
        raise PlanError(f"gaussian:{mean},{sd} puts no mass in the bins {edges[0]:g}-{edges[-1]:g}")
    return mass / mass.sum()


def allocate(
    real: np.ndarray, proportions: np.ndarray, budget: int, *, reserved: np.ndarray | None = None
) -> np.ndarray:
    """Integer synthetic counts per bin, summing to ``budget`` exactly (water-filling, see module docstring).

    Args:
        real: ``(n_bins,)`` real counts.
        proportions: ``(n_bins,)`` non-negative target proportions (need not sum to 1).
        budget: total synthetic samples to place.
        reserved: ``(n_bins,)`` samples placed before water-filling (from ``min_per_bin``).
    """
    real = np.asarray(real, dtype=np.float64)
    p = np.asarray(proportions, dtype=np.float64)
    if budget < 0:
        raise PlanError(f"the synthetic budget must be non-negative, got {budget}")
    if np.any(p < 0) or p.sum() <= 0:
        raise PlanError("the target histogram must have non-negative proportions with a positive total")
    p = p / p.sum()
    base = np.zeros_like(real) if reserved is None else np.asarray(reserved, dtype=np.float64)
    remaining = budget - int(base.sum())
    if remaining < 0:
        raise PlanError(f"min_per_bin needs {int(base.sum())} synthetic samples but the budget is {budget}")
    current = real + base
    level = _water_level(current, p, remaining)
    wanted = np.maximum(0.0, level * p - current)
    counts = np.floor(wanted + 1e-9)
    left = remaining - int(counts.sum())
    # Hand out the rounding remainder to the largest unmet deficits; ties go to the lower bin (stable sort).
    deficit = wanted - counts
    eligible = p > 0
    order = np.lexsort((np.arange(len(p)), -deficit))
    order = [i for i in order if eligible[i]]
    for i in order[:left]:
        counts[i] += 1
    return (counts + base).astype(np.int64)


def _water_level(current: np.ndarray, p: np.ndarray, budget: int) -> float:
    """The ``λ`` with ``sum(max(0, λ·p − current)) == budget`` (piecewise linear, solved exactly)."""
    if budget == 0:
        return 0.0
    active = p > 0
    thresholds = np.sort(current[active] / p[active])
    for k in range(len(thresholds)):
        # Between thresholds[k] and thresholds[k+1] the bins with threshold <= thresholds[k] are filling.
        filling = active & (current / np.where(active, p, 1.0) <= thresholds[k] + 1e-12)
        level = (budget + current[filling].sum()) / p[filling].sum()
        upper = thresholds[k + 1] if k + 1 < len(thresholds) else math.inf
        if level <= upper + 1e-12:
            return float(level)
    raise AssertionError("water level not found")  # unreachable: the last segment is unbounded


def make_plan(
    real_ages: Sequence[float],
    edges: np.ndarray,
    proportions: np.ndarray,
    *,
    target: str = "uniform",
    synthetic_ratio: float | None = None,
    max_synthetic: int | None = None,
    min_per_bin: int = 0,
    target_counts: np.ndarray | None = None,
) -> AugmentationPlan:
    """Plan the synthetic counts per bin for a target histogram (see the module docstring for the rules).

    With ``target_counts`` (combined brains wanted per bin) the default budget is what reaches those counts, and
    each bin gets ``max(0, count − real)``; a different budget is water-filled around that.
    """
    real = histogram(real_ages, edges)
    p = np.asarray(proportions, dtype=np.float64)
    if p.shape != real.shape:
        raise PlanError(f"the target has {p.size} bins but the age bins are {real.size}")
    check_budget(synthetic_ratio, max_synthetic, min_per_bin)
    reserved = np.maximum(0, min_per_bin - real) if min_per_bin > 0 else np.zeros_like(real)
    if target_counts is not None:
        wanted = np.maximum(0, np.asarray(target_counts, dtype=np.int64) - real)
        reserved = np.maximum(reserved, wanted)
    if synthetic_ratio is not None:
        budget = round(synthetic_ratio * len(real_ages))
    elif target_counts is not None:
        budget = int(reserved.sum())
    else:
        budget = _minimal_budget(real + reserved, p) + int(reserved.sum())
    if max_synthetic is not None:
        budget = min(budget, max_synthetic)
    if target_counts is not None and reserved.sum() > budget:
        reserved = np.maximum(0, min_per_bin - real) if min_per_bin > 0 else np.zeros_like(real)
    if reserved.sum() > budget:
        raise PlanError(
            f"min_per_bin {min_per_bin} needs {int(reserved.sum())} synthetic samples, more than the budget "
            f"of {budget} (raise synthetic_ratio or max_synthetic)"
        )
    synthetic = allocate(real, p, budget, reserved=reserved)
    table = pd.DataFrame(
        {
            "bin": edge_labels(edges),
            "bin_start": edges[:-1],
            "bin_end": edges[1:],
            "real_count": real,
            "target_proportion": p / p.sum(),
            "synthetic_count": synthetic,
            "combined_count": real + synthetic,
        }
    )
    return AugmentationPlan(table=table, budget=int(budget), target=target)


def _minimal_budget(current: np.ndarray, p: np.ndarray) -> int:
    active = p > 0
    p = p / p.sum()
    level = float(np.max(current[active] / p[active]))
    return int(np.ceil(np.maximum(0.0, level * p - current).sum() - 1e-9))


def draw_ages(
    plan: AugmentationPlan,
    rng: np.random.Generator,
    *,
    age_range: tuple[float, float] | None = None,
    allow_extrapolation: bool = False,
) -> np.ndarray:
    """Ages for the synthetic samples: uniform inside each bin, bins in order.

    Args:
        plan: the plan.
        rng: random generator (the caller seeds it).
        age_range: the checkpoint's training range; ages are drawn inside ``bin ∩ range``.
        allow_extrapolation: draw over the whole bin even outside ``age_range``.

    Raises:
        PlanError: a bin that needs samples lies entirely outside the training range.
    """
    ages: list[np.ndarray] = []
    for row in plan.table.itertuples(index=False):
        if row.synthetic_count == 0:
            continue
        low, high = float(row.bin_start), float(row.bin_end)
        if age_range is not None and not allow_extrapolation:
            low, high = max(low, age_range[0]), min(high, age_range[1])
            if low > high:
                raise PlanError(
                    f"bin {row.bin} needs {row.synthetic_count} synthetic brains but lies outside the checkpoint's "
                    f"training age range {age_range[0]:g}-{age_range[1]:g}; set allow_extrapolation to force it"
                )
        ages.append(rng.uniform(low, high, size=int(row.synthetic_count)))
    return np.concatenate(ages) if ages else np.zeros(0)
