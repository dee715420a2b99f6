"""Argument types shared by the command-line tools (no heavy imports, so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import logging

__all__ = ["batch_size_arg", "resolve_device", "setup_cli"]

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
