"""Age bins, defined once: edges, the bin of each age, counts, labels and inverse-frequency weights.

Two kinds of bins appear in the toolkit, both left-closed:

* **fixed-width bins** ``[k·w, (k+1)·w)`` for every integer ``k`` (brain-age tables, balanced sampling, the study's
  sparse bins): :func:`age_bin_labels`, :func:`bin_counts`, :func:`inverse_frequency_weights`;
* **bins between edges** ``e_0 < e_1 < … < e_K`` (augmentation plans, the regional evaluation): :func:`bin_index`,
  :func:`histogram`, :func:`edge_labels`, :func:`label_ages`. As in ``numpy.histogram``, the last bin also holds
  an age equal to its end, so the top edge of the edges is never lost; ages outside ``[e_0, e_K]`` are in no bin.

One label format for every table and plot: ``"[40, 50)"``, interval notation, numbers in ``%g``. It says which bin
an age on a boundary falls in (50 is in ``"[50, 60)"``, not in ``"[40, 50)"``), which ``"40-50"`` and ``"50-60"``
leave to the reader to guess; and the closed end of the last bin between edges shows as ``"[80, 120]"``. It is
read the same way in a TSV, a printed table and on a plot axis, and sorts by its lower edge with
:func:`label_start`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "age_bin_labels",
    "bin_counts",
    "bin_index",
    "bin_label",
    "check_edges",
    "edge_labels",
    "histogram",
    "inverse_frequency_weights",
    "label_ages",
    "label_start",
    "width_edges",
]


def bin_label(start: float, end: float, *, closed: bool = False) -> str:
    """``"[start, end)"`` (or ``"[start, end]"`` with ``closed``), numbers in ``%g``.

    Example:
        >>> bin_label(40.0, 50.0), bin_label(80, 120, closed=True)
        ('[40, 50)', '[80, 120]')
    """
    return f"[{start:g}, {end:g}{']' if closed else ')'}"


def label_start(label: str) -> float:
    """The lower edge of a label made by :func:`bin_label`: the key that sorts bins by age."""
    return float(label[1:].split(",", 1)[0])


def check_edges(edges: Sequence[float]) -> np.ndarray:
    """``edges`` as float64 after checking there are at least two, strictly increasing.

    Raises:
        ValueError: naming the edges given.
    """
    result = np.asarray(edges, dtype=np.float64)
    if result.ndim != 1 or result.size < 2 or not np.all(np.diff(result) > 0):
        raise ValueError(f"age bin edges must be at least two strictly increasing numbers, got {list(edges)}")
    return result


def width_edges(ages: Sequence[float] | np.ndarray, width: float) -> np.ndarray:
    """Multiples of ``width`` from the one at or below the youngest age to the first above the oldest.

    Example:
        >>> width_edges([23.0, 41.5], 10).tolist()
        [20.0, 30.0, 40.0, 50.0]
    """
    if not width > 0:
        raise ValueError(f"age bin width must be a positive number of years, got {width}")
    ages = np.asarray(ages, dtype=np.float64)
    if ages.size == 0:
        raise ValueError("cannot build age bins for an empty set of ages")
    low = math.floor(ages.min() / width) * width
    high = math.floor(ages.max() / width) * width + width
    return np.arange(low, high + width / 2, width)


def bin_index(ages: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(N,)`` int64 bin of each age between ``edges`` (the last bin includes its end); -1 outside or NaN."""
    edges = check_edges(edges)
    ages = np.asarray(ages, dtype=np.float64)
    index = np.searchsorted(edges, ages, side="right") - 1
    index = np.where(ages == edges[-1], edges.size - 2, index)
    return np.where((index >= 0) & (index < edges.size - 1), index, -1).astype(np.int64)


def histogram(ages: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(K,)`` int64 counts of the ages in each bin between ``edges`` (ages outside are not counted)."""
    index = bin_index(ages, edges)
    return np.bincount(index[index >= 0], minlength=len(edges) - 1).astype(np.int64)


def edge_labels(edges: Sequence[float] | np.ndarray) -> list[str]:
    """The label of each bin between ``edges``, in age order; the last one is closed.

    Example:
        >>> edge_labels([20, 40, 90])
        ['[20, 40)', '[40, 90]']
    """
    edges = check_edges(edges)
    last = edges.size - 2
    return [bin_label(a, b, closed=i == last) for i, (a, b) in enumerate(itertools.pairwise(edges))]


def label_ages(ages: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(N,)`` object array: the :func:`edge_labels` label of each age's bin, None outside the edges."""
    index = bin_index(ages, edges)
    labels = np.array(edge_labels(edges), dtype=object)
    return np.where(index >= 0, labels[np.maximum(index, 0)], None)


def age_bin_labels(
    ages: Sequence[float] | np.ndarray, width: float = 10.0, origin: float = 0.0
) -> np.ndarray:
    """``(N,)`` object array: the fixed-width bin ``[origin + k·width, origin + (k+1)·width)`` of each age.

    Example:
        >>> age_bin_labels([45.0, 50.0], 10).tolist()
        ['[40, 50)', '[50, 60)']
    """
    ages = np.asarray(ages, dtype=np.float64)
    starts = origin + np.floor((ages - origin) / width) * width
    return np.array([bin_label(a, a + width) for a in starts], dtype=object)


def bin_counts(ages: Sequence[float] | np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Each age's fixed-width bin index ``floor(age / width)`` and the number of ages in that bin, both ``(N,)``."""
    bins = np.floor(np.asarray(ages, dtype=np.float64) / width).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    return bins, counts[inverse]


def inverse_frequency_weights(
    ages: Sequence[float] | np.ndarray, width: float, *, total: float | None = None
) -> np.ndarray:
    """``(N,)`` weight ``total / (K · n_b)`` of an age in fixed-width bin ``b`` (``N`` ages in ``K`` occupied bins).

    Every occupied bin then carries the same share ``total / K`` and the weights sum to ``total``: by default
    ``N``, so that they average 1 (loss weights); ``total=1`` gives draw probabilities that make every occupied bin
    equally likely (oversampling, balanced training).

    Example:
        >>> inverse_frequency_weights([20, 22, 24, 71], 10).tolist()
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
        >>> inverse_frequency_weights([20, 22, 24, 71], 10, total=1).tolist()[-1]
        0.5
    """
    bins, per_scan = bin_counts(ages, width)
    if bins.size == 0:
        raise ValueError("no ages to weight")
    k = np.unique(bins).size
    return (bins.size if total is None else total) / (k * per_scan.astype(np.float64))
