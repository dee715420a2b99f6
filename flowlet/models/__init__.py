"""Velocity networks: the conditional 3-D U-Net and its configuration."""

from flowlet.models.config import UNetConfig
from flowlet.models.unet import ConditionalUNet

__all__ = ["ConditionalUNet", "UNetConfig"]
