"""The official FlowLet training loss (spec §3): separately averaged LLL and detail-band errors.

``L = w_lll · mean((v - v*)²) over channel 0 + w_det · mean((v - v*)²) over channels 1..7``. This is *not* the plain
8-channel MSE: with weights 1/1 the LLL channel counts 7× more per channel. The loss knows nothing about the
network beyond calling it, and nothing about the path beyond :meth:`~flowlet.paths.AffinePath.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

__all__ = ["LossOutput", "flow_matching_loss", "per_sample_band_loss", "weighted_band_loss"]


class LossOutput(NamedTuple):
    """Loss and its parts, unpackable as ``loss, scalars = ...``.

    Attributes:
        loss: scalar tensor with gradient.
        scalars: detached scalar tensors ``{"loss", "loss_lll", "loss_detail"}`` for logging (no host sync).
    """

    loss: Tensor
    scalars: dict[str, Tensor]


def per_sample_band_loss(
    prediction: Tensor, target: Tensor, *, lll_weight: float = 1.0, detail_weight: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted loss of every sample separately (used by the fixed-noise validation).

    Args:
        prediction: ``(B, 8, d, h, w)`` predicted velocity.
        target: ``(B, 8, d, h, w)`` regression target.
        lll_weight: weight of the LLL error.
        detail_weight: weight of the detail-band error.

    Returns:
        ``(loss, mse_lll, mse_detail)``, each ``(B,)`` float32.
    """
    if prediction.shape != target.shape or prediction.dim() < 2 or prediction.shape[1] < 2:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape "
            "(B, 8, d, h, w)"
        )
    err = (prediction.float() - target.float()).square()
    mse_lll = err[:, 0].flatten(1).mean(1)
    mse_detail = err[:, 1:].flatten(1).mean(1)
    return lll_weight * mse_lll + detail_weight * mse_detail, mse_lll, mse_detail


def weighted_band_loss(
    prediction: Tensor, target: Tensor, *, lll_weight: float = 1.0, detail_weight: float = 1.0
) -> LossOutput:
    """Batch loss: weighted sum of the LLL mean and the detail mean (fp32), as in the official code.

    Args:
        prediction: ``(B, 8, d, h, w)``.
        target: ``(B, 8, d, h, w)``.

    Returns:
        :class:`LossOutput`. A non-finite prediction gives a non-finite loss; the trainer then skips the step
        (official behaviour).
    """
    _, mse_lll, mse_detail = per_sample_band_loss(prediction, target)
    lll, detail = mse_lll.mean(), mse_detail.mean()
    loss = lll_weight * lll + detail_weight * detail
    scalars = {"loss": loss.detach(), "loss_lll": lll.detach(), "loss_detail": detail.detach()}
    return LossOutput(loss=loss, scalars=scalars)


def flow_matching_loss(
    velocity: Callable[..., Tensor],
    path,
    x_1: Tensor,
    x_0: Tensor,
    t: Tensor,
    *,
    lll_weight: float = 1.0,
    detail_weight: float = 1.0,
    **model_kwargs,
) -> LossOutput:
    """Flow-matching loss of one batch on a probability path.

    Args:
        velocity: network called as ``velocity(x_t, t, **model_kwargs)`` → ``(B, 8, d, h, w)``.
        path: a :class:`flowlet.paths.AffinePath` (``x_t`` and the target ``dx_t``).
        x_1: data bands ``(B, 8, d, h, w)``.
        x_0: noise of the same shape.
        t: ``(B,)`` times in ``[0, 1]`` (0 = noise).
        lll_weight, detail_weight: band weights (official 1/1).
        **model_kwargs: passed to ``velocity`` (e.g. ``conditions=...``).

    Returns:
        :class:`LossOutput`.

    Example:
        >>> from flowlet.paths import get_path
        >>> x = torch.zeros(2, 8, 2, 2, 2)
        >>> out = flow_matching_loss(lambda x_t, t: x_t * 0, get_path("rectified"), x, x + 1, torch.rand(2))
        >>> float(out.loss)  # target x_1 - x_0 = -1 everywhere; LLL 1 + detail 1
        2.0
    """
    sample = path.sample(x_0, x_1, t)
    prediction = velocity(sample.x_t, t, **model_kwargs)
    return weighted_band_loss(prediction, sample.dx_t, lll_weight=lll_weight, detail_weight=detail_weight)
