"""Contract tests run over every registered brain-age model."""

from __future__ import annotations

import pytest
import torch

from bap.models import build_model, model_names
from bap.sfcn import SFCN, soft_age_labels
from bap.train import AgeObjective

# Tiny options so that every model runs in well under a second on CPU.
TINY = {
    "densenet121": {"init_features": 4, "growth_rate": 4, "block_config": (1, 1, 1, 1)},
    "resnet": {"depth": 10, "widen_factor": 0.125},
    "sfcn": {"channels": (2, 2, 2, 2, 2, 2), "dropout": 0.0},
    "small": {"channels": (2, 4)},
}
SHAPES = [(32, 32, 32), (33, 40, 33)]


def test_registry_lists_every_model():
    assert model_names() == ["densenet121", "resnet", "sfcn", "small"]
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model("vit")
    with pytest.raises(ValueError, match="bad options"):
        build_model("small", options={"width": 3})


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", SHAPES)
def test_contract_forward_and_train_step(name, shape):
    torch.manual_seed(0)
    model = build_model(name, age_mean=50.0, age_std=10.0, age_range=(20.0, 80.0), options=TINY[name])
    x = torch.randn(2, 1, *shape)
    model.eval()
    ages = model(x)
    assert ages.shape == (2,)
    assert torch.all(torch.isfinite(ages))
    assert torch.all((ages > 0) & (ages < 150))
    model.train()
    loss_name = "sfcn_kl" if name == "sfcn" else "l1"
    objective = AgeObjective(model, loss_name)
    opt = torch.optim.SGD(objective.parameters(), lr=0.1)
    target = torch.tensor([30.0, 70.0])
    before = [p.detach().clone() for p in model.parameters()]
    loss, pred = objective(x, target)
    assert loss.ndim == 0 and pred.shape == (2,)
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > 0


def test_regressor_starts_at_training_mean():
    # Zero-initialised head: before any training the prediction is exactly age_mean.
    model = build_model("small", age_mean=47.5, age_std=12.0, options={"channels": (2, 3)})
    out = model(torch.randn(3, 1, 9, 10, 11))
    assert torch.allclose(out, torch.full((3,), 47.5))


def test_soft_labels_are_gaussian_and_expectation_recovers_age():
    centers = torch.arange(0.5, 100.0, 1.0)
    labels = soft_age_labels(torch.tensor([40.0, 63.2]), centers, sigma=2.0)
    assert torch.allclose(labels.sum(1), torch.ones(2))
    assert torch.allclose(labels @ centers, torch.tensor([40.0, 63.2]), atol=1e-4)
    assert int(labels[0].argmax()) in (39, 40)


def test_sfcn_bins_and_kl_minimum():
    net = SFCN(channels=(2,) * 6, age_range=(20.0, 80.0), bin_width=2.0, sigma=1.0)
    assert net.bin_centers.shape == (30,)
    assert float(net.bin_centers[0]) == 21.0 and float(net.bin_centers[-1]) == 79.0
    age = torch.tensor([35.0])
    target = soft_age_labels(age, net.bin_centers, net.sigma)
    assert float(net.kl_loss(target.clamp_min(1e-30).log(), age)) == pytest.approx(0.0, abs=1e-6)
    assert float(net.expected_age(target.clamp_min(1e-30).log())) == pytest.approx(35.0, abs=1e-3)
    assert float(net.kl_loss(torch.full((1, 30), 1 / 30).log(), age)) > 0.5


def test_sfcn_kl_objective_is_the_soft_label_kl_with_and_without_scan_weights():
    """Re-derive the loss in float64: ``KL_i = sum_k t_ik (log t_ik - log p_ik)``, mean over the batch, or
    ``sum_i w_i KL_i / sum_i w_i`` with weights."""
    torch.manual_seed(0)
    net = SFCN(channels=(2,) * 6, age_range=(20.0, 80.0), bin_width=2.0, sigma=3.0, dropout=0.0).eval()
    objective = AgeObjective(net, "sfcn_kl")
    x, age = torch.randn(4, 1, 32, 32, 32), torch.tensor([25.0, 41.5, 60.0, 77.2])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    with torch.no_grad():
        log_p = net.log_probs(x).double()
        target = soft_age_labels(age.double(), net.bin_centers.double(), net.sigma)
        per_scan = (target * (target.log() - log_p)).sum(dim=1)
        loss, pred = objective(x, age)
        weighted, _ = objective(x, age, weight)
    assert float(loss) == pytest.approx(float(per_scan.mean()), rel=1e-5)
    assert float(weighted) == pytest.approx(
        float((weight.double() * per_scan).sum() / weight.sum()), rel=1e-5
    )
    assert float(weighted) != pytest.approx(float(loss), rel=1e-3)  # the weights change the loss
    torch.testing.assert_close(pred, net.expected_age(log_p.float()))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_small_model_input_pooling_and_norms(norm):
    model = build_model(
        "small", age_mean=40.0, age_std=10.0, options={"channels": (2, 3), "input_pool": 4, "norm": norm}
    )
    assert isinstance(model.backbone.features[0], torch.nn.AvgPool3d)
    assert model(torch.randn(2, 1, 46, 55, 46)).shape == (2,)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("small", options={"norm": "group"})
