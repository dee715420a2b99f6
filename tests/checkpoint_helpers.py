"""Random-weight FlowLet checkpoints for tests (shared by the augment, reliability and study tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowlet.checkpoint import save_bundle
from flowlet.models import ConditionalUNet, UNetConfig


def write_random_checkpoint(
    path: Path,
    config: UNetConfig,
    *,
    model_input_size: tuple[int, int, int],
    save_size: tuple[int, int, int],
    affine: np.ndarray,
    age_range: tuple[float, float],
    scale: float = 0.05,
    purpose: str = "tests",
) -> Path:
    """Save a U-Net whose weights are perturbed by ``scale``·N(0, 1) (seed 0), so that age changes the output."""
    torch.manual_seed(0)
    model = ConditionalUNet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return save_bundle(
        path,
        model,
        config,
        condition_ranges={"Age": age_range},
        model_input_size=model_input_size,
        save_size=save_size,
        path_name="rectified",
        provenance={"purpose": purpose},
        affine=affine,
    )
