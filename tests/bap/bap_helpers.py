"""The tiny brain-age scan that tests/bap builds its cohorts from (importable by test modules and the conftest)."""

from __future__ import annotations

import numpy as np

SHAPE = (12, 14, 12)


def phantom_scan(age: float, rng: np.random.Generator, scale: float = 100.0) -> np.ndarray:
    """A bright ball with a dark core of radius ``1 + age / 20`` voxels, plus noise."""
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius < 5.5, scale, 0.0)
    image[radius < 1.0 + age / 20.0] = 0.2 * scale
    return (image + rng.normal(0, 0.05 * scale, SHAPE)).astype(np.float32)


def tiny_run_sets(n_boot: int) -> list[str]:
    """The ``--set`` flags of a tiny bap-train run: a [4, 8]-channel network, ``n_boot`` replicates, one thread."""
    return [
        "--set",
        "model.options.channels=[4, 8]",
        "--set",
        f"eval.n_boot={n_boot}",
        "--set",
        "train.num_threads=1",
    ]
