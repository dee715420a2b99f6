"""Argument types shared by the command-line tools (no heavy imports, so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable

__all__ = [
    "batch_size_arg",
    "bounded_int",
    "finite_float",
    "positive_int",
    "resolve_device",
    "seed_int",
    "setup_cli",
    "thread_count",
    "volume_axis",
]

logger = logging.getLogger("flowlet.cli")

#: Log line format of the commands that do not choose their own.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_cli(fmt: str = LOG_FORMAT, datefmt: str | None = None) -> None:
    """What every command does once its arguments are parsed.

    INFO logging to stderr (a no-op when the caller configured logging already, e.g. a study running the
    commands in-process) and :func:`flowlet.runtime.tune_cpu_allocator` (freed tensor buffers are reused instead
    of being unmapped; ``FLOWLET_TUNE_MALLOC=0`` opts out).
    """
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt=datefmt)
    from flowlet.runtime import tune_cpu_allocator

    tune_cpu_allocator()


def batch_size_arg(text: str) -> int | str:
    """A positive integer or ``auto`` (see :func:`flowlet.batching.auto_batch_size`).

    Example:
        >>> batch_size_arg("8"), batch_size_arg("auto")
        (8, 'auto')
    """
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device without CUDA falls back to the CPU (logged)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available; falling back to the CPU")
        return "cpu"
    return name


# ------------------------------------------------------------------------------------------ numeric flag types
def _interval(low: float | None, high: float | None, low_open: bool) -> str:
    def text(value: float | None, infinite: str) -> str:
        return infinite if value is None else str(value) if isinstance(value, int) else f"{value:g}"

    return f"{'(' if low_open else '['}{text(low, '-inf')}, {text(high, 'inf')}]"


def finite_float(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type`` accepting a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    argparse turns the refusal into ``argument --flag: expected a finite number in [0, 100], got 'nan'`` and
    exit status 2, before the command does any work.

    Example:
        >>> finite_float(0, 10)("2.5")
        2.5
    """
    where = _interval(low, high, low_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected a finite number in {where}, got {text!r}")
        return value

    parse.__name__ = f"number in {where}"
    return parse


def bounded_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting an integer in ``[low, high]``; the message names the limits.

    Example:
        >>> bounded_int(1, 8)("3")
        3
    """
    where = _interval(low, high, False)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {where}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer in {where}, got {text!r}")
        return value

    parse.__name__ = f"integer in {where}"
    return parse


#: The common cases: counts (at least 1), sizes of a volume axis, seeds and thread counts.
positive_int = bounded_int(1)
seed_int = bounded_int(0, 2**32 - 1)
thread_count = bounded_int(1, 1024)
volume_axis = bounded_int(1, 4096)

#: Upper limits of the numeric flags: far beyond any sensible run, small enough to refuse a typo before any work.
MAX_SAMPLES = 1_000_000  # synthetic brains in one run
MAX_STEPS = 10_000  # ODE solver steps
MAX_GUIDANCE = 100.0  # classifier-free guidance scale
MAX_RATIO = 1_000.0  # synthetic brains per real brain
