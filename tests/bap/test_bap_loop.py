"""The pieces of a brain-age run, one at a time: registries, one epoch, validation, selection, run state and
checkpoint payloads, the no-validation rule, and predictions for in-memory volumes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bap import metrics
from bap.checkpoint import build_from_checkpoint, build_network, load_checkpoint, load_model, save_checkpoint
from bap.config import _CHOICES, TrainConfig, config_from_dict
from bap.data import apply_normalisation, prepare_data
from bap.loop import EpochStats, end_epoch, train_epoch, validate
from bap.models import build_model
from bap.objective import (
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    AgeObjective,
    build_optimizer,
    build_scheduler,
    choose,
    get_loss,
)
from bap.predict import predict_arrays, predict_images
from bap.runstate import RunState, model_payload, resume_payload, run_metadata
from bap.train import train
from flowlet.data.cohort import load_cohort

TINY = {
    "model": {"name": "small", "options": {"channels": [4, 8]}},
    "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "num_threads": 1, "patience": 0},
    "eval": {"n_boot": 20},
}


class Affine(nn.Module):
    """``pred = w · mean(x) + b``: a model whose output is known in closed form."""

    def __init__(self, w: float = 2.0, b: float = 30.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x.mean(dim=(1, 2, 3, 4)) + self.b


def _batches(rng: np.random.Generator, sizes=(4, 4, 2)):
    return [
        (torch.from_numpy(rng.normal(size=(n, 1, 2, 2, 2)).astype(np.float32)), torch.rand(n) * 40 + 40)
        for n in sizes
    ]


# ------------------------------------------------------------------------------------------------ registries
@pytest.mark.parametrize(
    ("table", "field"),
    [(LOSSES, "loss"), (OPTIMIZERS, "optimizer"), (SCHEDULES, "schedule")],
)
def test_every_allowed_name_is_registered_and_nothing_else(table, field):
    assert sorted(table) == sorted(_CHOICES[("train", field)])


def test_unknown_names_raise_naming_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown train.loss 'l2'; choose from \['l1', 'sfcn_kl'\]"):
        get_loss("l2")
    with pytest.raises(ValueError, match=r"unknown train\.loss 'huber'"):
        AgeObjective(Affine(), "huber")
    params = list(Affine().parameters())
    with pytest.raises(ValueError, match=r"unknown train.optimizer 'lion'; choose from \['adamw', 'sgd'\]"):
        build_optimizer(TrainConfig(optimizer="lion"), params)
    opt = build_optimizer(TrainConfig(), params)
    with pytest.raises(ValueError, match=r"unknown train\.schedule 'linear'; choose from"):
        build_scheduler(TrainConfig(schedule="linear"), opt)
    with pytest.raises(ValueError, match=r"unknown train\.epoch_size 'half'"):
        choose({"all": 1, "real": 2}, "half", "train.epoch_size")


@pytest.mark.parametrize("name", _CHOICES[("train", "schedule")])
def test_every_schedule_builds_and_steps(name):
    t = TrainConfig(schedule=name, epochs=4, lr=0.1, eta_min=0.0)
    opt = build_optimizer(t, Affine().parameters())
    sched = build_scheduler(t, opt)
    from bap.objective import step_scheduler

    for _ in range(3):
        step_scheduler(sched, 5.0)
    lr = opt.param_groups[0]["lr"]
    assert 0.0 <= lr <= 0.1
    assert (lr == 0.1) == (name in ("constant", "plateau"))  # plateau: patience 5 not reached


def test_l1_objective_is_the_mean_and_the_weighted_mean_of_absolute_errors():
    model = Affine()
    x = torch.randn(3, 1, 2, 2, 2)
    age = torch.tensor([30.0, 50.0, 70.0])
    pred = model(x).detach()
    loss, out = AgeObjective(model, "l1")(x, age)
    assert torch.allclose(out, pred) and torch.isclose(loss, (pred - age).abs().mean())
    w = torch.tensor([1.0, 0.0, 3.0])
    loss_w, _ = AgeObjective(model, "l1")(x, age, w)
    assert torch.isclose(loss_w, ((pred - age).abs() * w).sum() / w.sum())


# ------------------------------------------------------------------------------------------ epoch and validation
def test_train_epoch_reports_the_closed_form_loss_and_mae_and_steps_once_per_batch():
    batches = _batches(np.random.default_rng(0))
    model = Affine()
    errors = [(model(x).detach() - age).abs() for x, age in batches]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: the loss is known before the epoch
    stats = train_epoch(AgeObjective(model, "l1"), batches, opt, torch.device("cpu"))
    assert stats.train_loss == pytest.approx(np.mean([float(e.mean()) for e in errors]), rel=1e-6)
    assert stats.train_mae == pytest.approx(float(torch.cat(errors).mean()), rel=1e-6)
    assert stats.lr == 0.0
    model_b = Affine()
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    train_epoch(AgeObjective(model_b, "l1"), batches, opt_b, torch.device("cpu"))
    # every prediction (about 30) is below its age (40-80), so each of the 3 steps raises the bias by lr · 1
    assert float(model_b.b.detach()) == pytest.approx(30.0 + 0.1 * 3, abs=1e-5)


def test_validate_is_the_mae_of_eval_mode_predictions_and_nan_without_images():
    model = build_model("small", age_mean=50.0, age_std=10.0, age_range=[20, 80], options={"channels": [4]})
    model.train()
    images = np.random.default_rng(1).normal(size=(5, 6, 6, 6)).astype(np.float32)
    ages = np.array([20.0, 35.0, 50.0, 65.0, 80.0])
    mae = validate(model, images, ages, batch_size=2)
    assert mae == pytest.approx(metrics.mae(ages, predict_images(model, images)))
    assert model.training  # the mode is restored
    assert math.isnan(validate(model, images[:0], ages[:0]))


def test_end_epoch_selects_on_the_smoothed_mae_with_min_delta():
    state = RunState()
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(Affine().parameters(), lr=1.0), lambda _e: 1.0)
    stats = EpochStats(train_loss=1.0, train_mae=1.0, lr=1.0)
    kw = {"scheduler": sched, "select_on_val": True, "val_smoothing": 2, "min_delta": 0.5, "seconds": 0.0}
    outcomes = [end_epoch(state, e, stats, v, **kw)[1] for e, v in enumerate([10.0, 8.0, 9.0, 7.8, 7.0])]
    # scores (median of the last 2): 10, 9, 8.5, 8.4, 7.4; better by more than 0.5 than the best so far
    # (inf, 10, 9, 9, 8.4)? 8.5 is not (a drop of exactly min_delta); 8.4 is
    assert outcomes == [True, True, False, True, True]
    assert (state.best_epoch, state.best_val_mae, state.best_score, state.bad_epochs) == (5, 7.0, 7.4, 0)
    assert state.epoch == 5 and [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5]
    last = RunState()
    kw["select_on_val"] = False
    assert all(end_epoch(last, e, stats, v, **kw)[1] for e, v in enumerate([5.0, 9.0]))
    assert last.best_epoch == 2  # without selection the last epoch is kept


def test_plateau_schedule_steps_on_the_selection_score():
    t = TrainConfig(schedule="plateau", plateau_patience=0, min_delta=0.0, lr=1.0, eta_min=0.0)
    opt = build_optimizer(t, Affine().parameters())
    sched = build_scheduler(t, opt)
    state, stats = RunState(), EpochStats(1.0, 1.0, 1.0)
    for e, v in enumerate([5.0, 6.0]):
        end_epoch(
            state, e, stats, v, scheduler=sched, select_on_val=True, val_smoothing=1, min_delta=0.0, seconds=0
        )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # 6 is no better than 5: divided by 10


# ----------------------------------------------------------------------------------- run state and payloads
def _untrained(cohort_csv):
    """The tiny cohort prepared, its run metadata and a freshly initialised model built from that metadata."""
    cfg = config_from_dict(TINY)
    data = prepare_data(load_cohort(cohort_csv).table, cfg.data)
    metadata = run_metadata(cfg, data)
    torch.manual_seed(0)
    model = build_network(cfg.model.name, metadata["model_kwargs"])
    return data, metadata, model


def test_run_state_round_trips_through_last_pt(tmp_path):
    state = RunState()
    state.record({"epoch": 1, "val_mae": 4.5, "train_loss": 3.0}, score=4.5, improved=True)
    state.record({"epoch": 2, "val_mae": 5.0, "train_loss": 2.0}, score=4.75, improved=False)
    model = Affine()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    payload = resume_payload({"model_name": "x"}, model, state, opt, sched)
    save_checkpoint(tmp_path / "last.pt", payload)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert RunState.from_dict(saved) == state
    assert saved["epoch"] == 2 and saved["bad_epochs"] == 1 and saved["best_epoch"] == 1
    assert RunState.from_dict({"epoch": 3}) == RunState(epoch=3)  # older files: missing fields start fresh


def test_model_payload_round_trip_rebuilds_the_same_model(tiny_real, tmp_path):
    data, metadata, model = _untrained(tiny_real)
    model.eval()
    save_checkpoint(tmp_path / "best.pt", model_payload(metadata, model, epoch=2, val_mae=3.5))
    payload = load_checkpoint(tmp_path / "best.pt")
    assert (payload["epoch"], payload["val_mae"], payload["bias_correction"]) == (2, 3.5, None)
    assert payload["norm"] == data.norm and payload["image_shape"] == list(data.images.shape[1:])
    rebuilt = build_from_checkpoint(payload)
    np.testing.assert_array_equal(predict_images(rebuilt, data.images), predict_images(model, data.images))


# ------------------------------------------------------------------------------------------ no validation split
@pytest.fixture(scope="module")
def no_val(tiny_real):
    cfg = config_from_dict({**TINY, "data": {"split_fractions": [0.8, 0.0, 0.2]}})
    return cfg, prepare_data(load_cohort(tiny_real).table, cfg.data)


def test_a_split_without_validation_is_refused_naming_the_field(no_val, tmp_path):
    cfg, data = no_val
    assert data.indices("val").size == 0
    with pytest.raises(
        ValueError, match=r"no real validation scans: data.split_fractions = \[0.8, 0.0, 0.2\]"
    ):
        train(cfg, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_allow_no_validation_keeps_the_last_epoch_without_a_stand_in_mae(no_val, tmp_path):
    cfg, data = no_val
    result = train(cfg, data, tmp_path / "run", progress=False, allow_no_validation=True)
    history = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert history["val_mae"].isna().all() and len(history) == 3
    assert result.best_epoch == 3 and result.summary["selection"] == "last epoch"
    assert result.summary["best_val_mae"] is None and result.summary["bias_correction"] is None
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 3
    plateau = config_from_dict({**TINY, "data": {"split_fractions": [0.8, 0.0, 0.2]},
                                "train": {**TINY["train"], "schedule": "plateau"}})  # fmt: skip
    with pytest.raises(ValueError, match=r"train\.schedule = 'plateau'"):
        train(plateau, data, tmp_path / "plateau", progress=False, allow_no_validation=True)


# ------------------------------------------------------------------------------ predictions for in-memory volumes
@pytest.fixture
def saved_model(tiny_real, tmp_path):
    data, metadata, model = _untrained(tiny_real)
    payload = {**model_payload(metadata, model, epoch=1, val_mae=1.0), "bias_correction": None}
    save_checkpoint(tmp_path / "plain.pt", payload)
    correction = {"slope": 0.5, "intercept": 20.0}
    save_checkpoint(tmp_path / "corrected.pt", {**payload, "bias_correction": correction})
    raw = np.random.default_rng(2).normal(100, 10, size=(3, *data.images.shape[1:])).astype(np.float32)
    return tmp_path, raw, correction


def test_predict_arrays_normalises_predicts_and_applies_the_bias_correction(saved_model):
    folder, raw, correction = saved_model
    plain = load_model(folder / "plain.pt")
    ages = predict_arrays(plain, raw)
    expected = predict_images(plain.model, apply_normalisation(raw, plain.payload["norm"]))
    np.testing.assert_array_equal(ages.pred, expected)
    np.testing.assert_array_equal(ages.corrected, ages.pred)
    corrected = predict_arrays(load_model(folder / "corrected.pt"), raw)
    np.testing.assert_array_equal(corrected.pred, ages.pred)
    np.testing.assert_allclose(corrected.corrected, metrics.BiasCorrection(**correction).apply(ages.pred))
    with pytest.raises(
        ValueError, match=r"the volumes have shape \(3, 3, 3\); the model .*plain.pt was trained"
    ):
        predict_arrays(plain, raw[:, :3, :3, :3], what="the volumes")


def test_bap_predict_reads_checks_and_builds_the_model_once(saved_model, tiny_real, monkeypatch):
    import bap.checkpoint as checkpoint
    from pipelines import bap_predict

    folder, _, _ = saved_model
    calls = {"check": 0, "build": 0}
    real_check, real_build = checkpoint.check_model_fields, checkpoint.build_model

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(checkpoint, "check_model_fields", count("check", real_check))
    monkeypatch.setattr(checkpoint, "build_model", count("build", real_build))
    out = folder / "pred.csv"
    argv = ["--checkpoint", str(folder / "plain.pt"), "--cohort", str(tiny_real), "--out", str(out)]
    assert bap_predict.main(argv) == 0
    assert calls == {"check": 1, "build": 1}
    assert len(pd.read_csv(out)) == len(load_cohort(tiny_real).table)


def test_the_augmentation_age_gate_judges_bias_corrected_predictions(saved_model):
    from pipelines.augment_gate import _age_check

    folder, raw, _ = saved_model
    path = folder / "corrected.pt"
    predicted = predict_arrays(load_model(path), raw).corrected
    requested = predicted + np.array([1.0, -4.0, 20.0])  # within, within, beyond 5 years
    reasons = _age_check(str(path), 5.0)(raw, requested)
    assert reasons[:2] == [None, None]
    assert (
        reasons[2] == f"predicted age {predicted[2]:.1f} for requested {requested[2]:.1f} (|gap| > 5 years)"
    )
    with pytest.raises(
        ValueError, match=r"--gate-bap .*corrected\.pt: the synthetic brains have shape \(3, 3, 3\)"
    ):
        _age_check(str(path), 5.0)(raw[:, :3, :3, :3], requested)
