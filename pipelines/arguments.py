"""Argument types shared by the command-line tools (no heavy imports, so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import logging

__all__ = ["batch_size_arg", "resolve_device"]

logger = logging.getLogger("flowlet.cli")


def batch_size_arg(text: str) -> int | str:
    """A positive integer or ``auto`` (see :func:`flowlet.sampling.auto_batch_size`).

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
