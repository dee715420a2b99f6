"""Brain-age model registry: every model maps ``(B, 1, D, H, W)`` images to ``(B,)`` ages in years.

Registered models:

* ``densenet121``: MONAI 3-D DenseNet-121 with one output (the paper's model, see the spec §9.2).
* ``resnet``: MONAI 3-D ResNet (depth 10/18/34/50) with one output.
* ``sfcn``: Peng et al. 2021 (:mod:`bap.sfcn`), soft-label bins; has ``log_probs`` and ``kl_loss``.
* ``small``: a few-block CNN with optional input pooling and global pooling for CPU demos; any input size.

Regression backbones are wrapped in :class:`AgeRegressor`, which maps the raw output ``z`` to
``age_mean + age_std * z`` so that training starts near the cohort mean (L1 on raw ages from a zero-bias head
would otherwise spend many epochs just learning the mean). ``age_mean = 0, age_std = 1`` gives the paper's raw-age
target. All build arguments are plain numbers/lists, so they are stored in checkpoints and rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bap.sfcn import SFCN

__all__ = ["HEADS", "MODELS", "AgeRegressor", "SmallCNN", "build_model", "model_names"]


class AgeRegressor(nn.Module):
    """Wrap a backbone ``(B, 1, D, H, W) -> (B, 1)`` into an age predictor ``(B,)``."""

    def __init__(self, backbone: nn.Module, age_mean: float = 0.0, age_std: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("age_mean", torch.tensor(float(age_mean)))
        self.register_buffer("age_std", torch.tensor(float(age_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B,)`` ages in years."""
        z = self.backbone(x).float().reshape(x.shape[0], -1)[:, 0]
        return self.age_mean + self.age_std * z


class SmallCNN(nn.Module):
    """A CPU-sized CNN: optional average pooling of the input, then Conv3³-Norm-ReLU blocks separated by
    max pooling, then global average and max pooling and a linear head. Any input size works.

    Args:
        channels: output channels per block.
        input_pool: average-pool the input by this factor first (4 turns a 4 mm phantom into 16 mm voxels,
            which keeps CPU training to seconds per epoch).
        norm: ``batch`` (default), ``instance`` or ``none``. Instance normalisation removes each scan's
            mean of every feature map, i.e. much of the tissue-proportion signal that carries age; on the 4 mm
            phantom it stayed at the predict-the-mean error where batch normalisation learned.
    """

    def __init__(
        self, channels: Sequence[int] = (8, 16, 32, 64), input_pool: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        norms = {
            "batch": nn.BatchNorm3d,
            "instance": lambda c: nn.InstanceNorm3d(c, affine=True),
            "none": lambda c: nn.Identity(),
        }
        if norm not in norms:
            raise ValueError(f"unknown norm '{norm}'; choose from {sorted(norms)}")
        layers: list[nn.Module] = [nn.AvgPool3d(input_pool, ceil_mode=True)] if input_pool > 1 else []
        c_in = 1
        for i, c_out in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            layers += [nn.Conv3d(c_in, c_out, 3, padding=1), norms[norm](c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, 1)
        # A zero head starts every prediction at the training mean age (see AgeRegressor).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, 1)`` raw output."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], dim=1)
        return self.head(pooled)


def _densenet121(*, age_mean: float, age_std: float, **options: Any) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return AgeRegressor(
        DenseNet121(spatial_dims=3, in_channels=1, out_channels=1, **options), age_mean, age_std
    )


def _resnet(*, age_mean: float, age_std: float, depth: int = 18, **options: Any) -> nn.Module:
    from monai.networks import nets

    factories = {10: nets.resnet10, 18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}
    if depth not in factories:
        raise ValueError(f"unknown resnet depth {depth}; choose from {sorted(factories)}")
    net = factories[depth](spatial_dims=3, n_input_channels=1, num_classes=1, **options)
    return AgeRegressor(net, age_mean, age_std)


def _sfcn(*, age_range: Sequence[float], **options: Any) -> nn.Module:
    return SFCN(age_range=(float(age_range[0]), float(age_range[1])), **options)


def _small(*, age_mean: float, age_std: float, **options: Any) -> nn.Module:
    return AgeRegressor(SmallCNN(**options), age_mean, age_std)


#: name -> builder taking the age statistics (``age_mean``, ``age_std``, ``age_range``) plus model options.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "densenet121": _densenet121,
    "resnet": _resnet,
    "sfcn": _sfcn,
    "small": _small,
}

_AGE_KEYS = {
    "densenet121": ("age_mean", "age_std"),
    "resnet": ("age_mean", "age_std"),
    "sfcn": ("age_range",),
    "small": ("age_mean", "age_std"),
}


#: name -> state-dict key prefix of the output layer (the part that may be re-initialised when starting from
#: weights trained for other outputs, e.g. other SFCN age bins).
HEADS: dict[str, str] = {
    "densenet121": "backbone.class_layers.out.",
    "resnet": "backbone.fc.",
    "sfcn": "classifier.",
    "small": "backbone.head.",
}


def model_names() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(MODELS)


def build_model(
    name: str,
    *,
    age_mean: float = 0.0,
    age_std: float = 1.0,
    age_range: Sequence[float] = (0.0, 100.0),
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`model_names`.
        age_mean, age_std: output offset and scale for regression models (training-set age mean and SD).
        age_range: ``(low, high)`` years covered by the SFCN bins.
        options: model-specific keyword arguments (e.g. ``{"channels": [8, 16, 32]}``).

    Raises:
        ValueError: unknown model name (listing the choices) or options the model does not take.

    Example:
        >>> net = build_model("small", age_mean=50.0, age_std=15.0)
        >>> net(torch.zeros(2, 1, 16, 20, 16)).shape
        torch.Size([2])
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose from {model_names()}")
    given = {
        "age_mean": float(age_mean),
        "age_std": float(age_std),
        "age_range": [float(a) for a in age_range],
    }
    kwargs = {k: given[k] for k in _AGE_KEYS[name]}
    try:
        return MODELS[name](**kwargs, **dict(options or {}))
    except TypeError as exc:
        raise ValueError(f"model '{name}': bad options {sorted(options or {})}: {exc}") from exc
