"""Parsing ``--target-hist`` into bin proportions.

Accepted forms:

* ``uniform``: every bin equally.
* ``match:FILE``: the age histogram of another cohort (a ``participants.tsv`` or any CSV/TSV with an age column
  named ``age``, ``Age`` or ``AGE``), e.g. the test population.
* ``gaussian:MEAN,SD``: the mass of a normal distribution in each bin.
* ``FILE.tsv`` / ``FILE.csv``: explicit bins, columns ``bin_start``, ``bin_end`` and either ``count`` (combined
  brains wanted per bin) or ``proportion``. These bins replace the default ones.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.augment.plan import PlanError, gaussian_proportions
from flowlet.data.bins import histogram
from flowlet.data.cohort_sources import MAX_AGE_YEARS

__all__ = ["AGE_COLUMNS", "TargetHistogram", "parse_target", "read_ages"]

AGE_COLUMNS = ("age", "Age", "AGE")


@dataclass(frozen=True)
class TargetHistogram:
    """A target: proportions over bins, and the bins themselves when the target defines them."""

    name: str
    proportions: np.ndarray
    edges: np.ndarray | None = None
    counts: np.ndarray | None = None


def read_ages(path: str | Path) -> np.ndarray:
    """Ages (years) from a table with an ``age``/``Age``/``AGE`` column.

    Raises:
        PlanError: naming the file and the columns it has.
    """
    path = Path(path)
    frame = _read_target_table(path)
    column = next((c for c in AGE_COLUMNS if c in frame.columns), None)
    if column is None:
        raise PlanError(
            f"{path}: expected an age column ({', '.join(AGE_COLUMNS)}); found {list(frame.columns)}"
        )
    ages = pd.to_numeric(frame[column], errors="coerce")
    bad_mask = ~ages.between(0, MAX_AGE_YEARS)  # NaN and +-inf fail too
    if bad_mask.any():
        bad = frame.index[bad_mask].tolist()[:5]
        raise PlanError(
            f"{path}: column '{column}' must hold non-negative numbers (ages in [0, {MAX_AGE_YEARS:g}] years); bad rows {bad}"
        )
    return ages.to_numpy(dtype=np.float64)


def parse_target(spec: str, edges: np.ndarray) -> TargetHistogram:
    """Turn a ``--target-hist`` value into proportions over ``edges`` (or over the file's own bins).

    Raises:
        PlanError: an unknown form or a malformed file, with the expected forms.
    """
    if spec == "uniform":
        return TargetHistogram("uniform", np.ones(len(edges) - 1))
    if spec.startswith("match:"):
        ages = read_ages(spec.removeprefix("match:"))
        counts = histogram(ages, edges).astype(np.float64)
        if counts.sum() == 0:
            raise PlanError(f"{spec}: none of its ages fall in the bins {edges[0]:g}-{edges[-1]:g}")
        return TargetHistogram(spec, counts)
    if spec.startswith("gaussian:"):
        try:
            mean, sd = (float(v) for v in spec.removeprefix("gaussian:").split(","))
            if not (math.isfinite(mean) and math.isfinite(sd)):
                raise ValueError
        except ValueError as exc:
            raise PlanError(
                f"target_hist {spec}: expected gaussian:MEAN,SD with finite numbers, e.g. gaussian:55,15"
            ) from exc
        return TargetHistogram(spec, gaussian_proportions(edges, mean, sd))
    if Path(spec).suffix in {".tsv", ".csv"}:
        return _explicit_bins(Path(spec))
    raise PlanError(
        f"target_hist {spec!r}: expected uniform, match:FILE, gaussian:MEAN,SD or a FILE.tsv of bins"
    )


def _read_target_table(path: Path) -> pd.DataFrame:
    """A CSV/TSV target file with at least one row, or a :class:`PlanError` naming the file."""
    if not path.is_file():
        raise PlanError(f"{path}: target file not found")
    try:
        # the suffix decides the separator: sniffing splits a one-column file on a letter
        sep = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())
        frame = pd.read_csv(path, sep=sep, engine="python")
    except (ValueError, OSError, csv.Error) as exc:  # empty file, binary bytes, ragged rows, unreadable
        raise PlanError(
            f"{path}: cannot read the target table ({type(exc).__name__}: {exc}); expected a CSV/TSV with a "
            "header row and one row per bin or subject"
        ) from exc
    if frame.empty:
        raise PlanError(f"{path}: the target table has a header but no rows; expected at least one row")
    return frame


def _numeric_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values)).tolist()
    if bad:
        raise PlanError(
            f"{path}: column '{column}' must hold finite numbers; rows {bad[:5]} hold {frame[column].iloc[bad[:5]].tolist()}"
        )
    return values


def _explicit_bins(path: Path) -> TargetHistogram:
    frame = _read_target_table(path)
    value = "count" if "count" in frame.columns else "proportion" if "proportion" in frame.columns else None
    if value is None or not {"bin_start", "bin_end"} <= set(frame.columns):
        raise PlanError(
            f"{path}: expected columns bin_start, bin_end and count or proportion; found {list(frame.columns)}"
        )
    starts = _numeric_column(frame, "bin_start", path)
    ends = _numeric_column(frame, "bin_end", path)
    if not np.allclose(starts[1:], ends[:-1]) or not np.all(ends > starts):
        raise PlanError(
            f"{path}: bins must be contiguous and increasing (bin_end of a row = bin_start of the next)"
        )
    if starts[0] < 0 or ends[-1] > MAX_AGE_YEARS:
        raise PlanError(
            f"{path}: bins span {starts[0]:g}-{ends[-1]:g} years; expected ages within [0, {MAX_AGE_YEARS:g}]"
        )
    weights = _numeric_column(frame, value, path)
    if (weights < 0).any() or weights.sum() <= 0:
        raise PlanError(f"{path}: column '{value}' must hold non-negative numbers with a positive total")
    edges = np.append(starts, ends[-1])
    return TargetHistogram(path.name, weights, edges=edges, counts=weights if value == "count" else None)
