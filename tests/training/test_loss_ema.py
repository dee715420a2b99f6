"""The official weighted loss and the EMA, checked against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowlet.paths import get_path
from flowlet.training.ema import EMA
from flowlet.training.loss import flow_matching_loss, per_sample_band_loss, weighted_band_loss


def test_weighted_loss_is_two_means_not_plain_mse():
    target = torch.zeros(2, 8, 2, 2, 2)
    pred = torch.zeros(2, 8, 2, 2, 2)
    pred[:, 0] = 1.0  # error only in LLL
    out = weighted_band_loss(pred, target)
    assert out.loss.item() == pytest.approx(1.0)  # plain 8-channel MSE would be 1/8
    assert out.scalars["loss_lll"].item() == pytest.approx(1.0)
    assert out.scalars["loss_detail"].item() == pytest.approx(0.0)
    pred = torch.zeros(2, 8, 2, 2, 2)
    pred[:, 3] = 2.0  # one detail band with squared error 4 -> detail mean 4/7
    out = weighted_band_loss(pred, target, lll_weight=0.5, detail_weight=0.5)
    assert out.loss.item() == pytest.approx(0.5 * 4 / 7)


def test_per_sample_loss_matches_batch_loss():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 8, 2, 2, 2, generator=g), torch.randn(3, 8, 2, 2, 2, generator=g)
    loss, _, _ = per_sample_band_loss(pred, target, lll_weight=2.0, detail_weight=0.5)
    batch = weighted_band_loss(pred, target, lll_weight=2.0, detail_weight=0.5).loss
    assert loss.mean().item() == pytest.approx(batch.item(), rel=1e-6)


def test_flow_matching_loss_zero_for_exact_velocity():
    path = get_path("rectified")
    g = torch.Generator().manual_seed(1)
    x_0, x_1, t = (
        torch.randn(2, 8, 2, 2, 2, generator=g),
        torch.randn(2, 8, 2, 2, 2, generator=g),
        torch.rand(2),
    )
    exact = flow_matching_loss(lambda x_t, t: x_1 - x_0, path, x_1, x_0, t)
    assert exact.loss.item() == pytest.approx(0.0, abs=1e-12)
    loss, _scalars = flow_matching_loss(lambda x_t, t: torch.zeros_like(x_t), path, x_1, x_0, t)
    d = (x_1 - x_0).square()
    assert loss.item() == pytest.approx((d[:, 0].mean() + d[:, 1:].mean()).item(), rel=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        weighted_band_loss(torch.zeros(1, 8, 2, 2, 2), torch.zeros(1, 8, 2, 2, 1))


def test_ema_closed_form():
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 0.0)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # warm-up decay min(0.5, 1/10) = 0.1 -> 0.9
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(net)  # decay min(0.5, 2/11) -> 0.9 + (1 - 2/11)·0.1
    assert ema.module.weight.item() == pytest.approx(0.9 + (1 - 2 / 11) * 0.1)
    state = ema.state_dict()
    other = EMA(nn.Linear(1, 1, bias=False), decay=0.1)
    other.load_state_dict(state)
    assert other.num_updates == 2 and other.module.weight.item() == ema.module.weight.item()
    assert not any(p.requires_grad for p in ema.module.parameters())
