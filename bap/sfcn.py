"""Simple Fully Convolutional Network for brain age (Peng et al., Medical Image Analysis 2021).

Seven convolutions: five blocks Conv3³-BN-MaxPool2-ReLU, one block Conv1³-BN-ReLU, then a classifier
(global average pool, dropout, Conv1³ to ``n_bins`` channels, log-softmax). Age is treated as a soft label: the
target is a Gaussian (σ = 1 bin by default) over age bins, the loss is KL(target ‖ prediction), and the predicted
age is the expectation of the bin centres under the predicted distribution.

The original pools with a fixed ``[5, 6, 5]`` kernel tied to 160×192×160 inputs; here the pool is global
(adaptive), so any input size whose five halvings stay ≥ 1 works (46×55×46 phantoms at 4 mm included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SFCN", "convert_peng_state_dict", "soft_age_labels"]


def soft_age_labels(age: torch.Tensor, bin_centers: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian soft labels over age bins.

    Args:
        age: ``(B,)`` ages in years.
        bin_centers: ``(K,)`` bin centres in years.
        sigma: Gaussian width in years.

    Returns:
        ``(B, K)`` rows that sum to 1.
    """
    logits = -0.5 * ((age[:, None] - bin_centers[None, :]) / sigma) ** 2
    return torch.softmax(logits, dim=1)


class SFCN(nn.Module):
    """SFCN brain-age network.

    Args:
        channels: output channels of the six feature blocks (the paper uses ``(32, 64, 128, 256, 256, 64)``).
        age_range: ``(low, high)`` ages covered by the bins, in years.
        bin_width: bin width in years.
        sigma: soft-label width in years.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256, 256, 64),
        age_range: tuple[float, float] = (0.0, 100.0),
        bin_width: float = 1.0,
        sigma: float = 1.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"SFCN needs 6 channel widths, got {list(channels)}")
        low, high = float(age_range[0]), float(age_range[1])
        if not high > low or bin_width <= 0:
            raise ValueError(
                f"SFCN age_range must increase and bin_width be > 0, got {age_range}, {bin_width}"
            )
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels[:5]:
            layers += [
                nn.Conv3d(c_in, c_out, 3, padding=1),
                nn.BatchNorm3d(c_out),
                nn.MaxPool3d(2),
                nn.ReLU(),
            ]
            c_in = c_out
        layers += [nn.Conv3d(c_in, channels[5], 1), nn.BatchNorm3d(channels[5]), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        n_bins = max(2, round((high - low) / bin_width))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Dropout(dropout), nn.Conv3d(channels[5], n_bins, 1)
        )
        centers = low + bin_width * (torch.arange(n_bins, dtype=torch.float32) + 0.5)
        self.register_buffer("bin_centers", centers)
        self.sigma = float(sigma)

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` images -> ``(B, K)`` log-probabilities over age bins."""
        logits = self.classifier(self.features(x)).flatten(1)
        return F.log_softmax(logits.float(), dim=1)

    def expected_age(self, log_probs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` log-probabilities -> ``(B,)`` expected ages."""
        return log_probs.exp() @ self.bin_centers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B,)`` predicted ages in years."""
        return self.expected_age(self.log_probs(x))

    def kl_loss(self, log_probs: torch.Tensor, age: torch.Tensor, *, per_scan: bool = False) -> torch.Tensor:
        """KL divergence between Gaussian soft labels of ``age`` ``(B,)`` and ``log_probs`` ``(B, K)``: the batch
        mean, or ``(B,)`` one value per scan with ``per_scan`` (for a weighted mean)."""
        target = soft_age_labels(age.float(), self.bin_centers, self.sigma)
        if per_scan:
            return F.kl_div(log_probs, target, reduction="none").sum(dim=1)
        return F.kl_div(log_probs, target, reduction="batchmean")


def _peng_key(key: str) -> str:
    """``feature_extractor.conv_{i}.{j}.*`` / ``classifier.conv_6.*`` (Peng et al.'s names) -> this module's."""
    parts = key.split(".")
    if parts[0] == "feature_extractor" and len(parts) >= 4 and parts[1].startswith("conv_"):
        block, layer = int(parts[1][5:]), int(parts[2])
        if layer not in (0, 1):  # 0: convolution, 1: batch norm; pooling and ReLU have no weights
            return key
        return ".".join(["features", str(4 * block + layer), *parts[3:]])
    if parts[0] == "classifier" and len(parts) >= 3 and parts[1].startswith("conv_"):
        return ".".join(["classifier", "2", *parts[2:]])
    return key


def convert_peng_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of the public SFCN weights (Peng et al. 2021, ``module.``-prefixed, e.g. the UK Biobank
    model with 40 one-year bins over 42–82 y) to :class:`SFCN`'s; keys in this module's naming pass unchanged.

    The original classifier pools with a fixed ``[5, 6, 5]`` kernel (no weights); here the pool is adaptive, which
    gives the same result on 160×192×160 inputs.
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        out[_peng_key(key)] = value
    return out
