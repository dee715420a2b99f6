"""GitHub-flavoured Markdown tables of DataFrames, for the ``.md`` twins of the toolkit's result tables."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

__all__ = ["float_cell", "markdown_table"]


def float_cell(value: object, digits: int = 3) -> str:
    """Floats with ``digits`` decimals (``nan`` for NaN); anything else as ``str``."""
    if isinstance(value, float | np.floating):
        return "nan" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, *, cell: Callable[[object], str] = float_cell) -> str:
    """``frame`` (index left out) as a Markdown table; ``cell`` renders each value, ``|`` inside a cell is escaped."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v).replace("|", r"\|") for v in row) + " |")
    return "\n".join(lines) + "\n"
