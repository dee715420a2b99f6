"""Training: determinism, exact resume, checkpoints, and the bap-train / bap-predict CLIs on tiny data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from bap_helpers import tiny_run_sets

from bap.checkpoint import load_checkpoint
from bap.config import config_from_dict
from bap.data import prepare_data
from bap.train import train
from flowlet.data.cohort import load_cohort
from pipelines import bap_predict, bap_train

TINY = {
    "model": {"name": "small", "options": {"channels": [4, 8]}},
    "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "num_threads": 1, "patience": 0},
    "eval": {"n_boot": 50},
}


@pytest.fixture(scope="module")
def tiny_data(tiny_real):
    cfg = config_from_dict(TINY)
    return cfg, prepare_data(load_cohort(tiny_real).table, cfg.data)


def test_same_seed_same_predictions_and_run_files(tiny_data, tmp_path):
    cfg, data = tiny_data
    a = train(cfg, data, tmp_path / "a", progress=False)
    b = train(cfg, data, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    for name in (
        "config.yaml",
        "metrics.csv",
        "best.pt",
        "last.pt",
        "predictions.csv",
        "summary.json",
        "test_metrics.csv",
    ):
        assert (tmp_path / "a" / name).is_file(), name
    metrics_csv = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert metrics_csv.epoch.tolist() == [1, 2, 3]
    assert metrics_csv.val_mae.min() == pytest.approx(a.best_val_mae)
    preds = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert list(preds.columns) == [
        "subject_id",
        "session_id",
        "age",
        "pred",
        "pred_corrected",
        "split",
        "source",
    ]
    payload = load_checkpoint(tmp_path / "a" / "best.pt")
    assert payload["epoch"] == a.best_epoch and payload["norm"] == data.norm
    assert set(payload["split"]["test"]).isdisjoint(payload["split"]["train"])
    assert payload["bias_correction"] == a.summary["bias_correction"]
    c = train(
        config_from_dict({**TINY, "train": {**TINY["train"], "seed": 1}}),
        data,
        tmp_path / "c",
        progress=False,
    )
    assert not np.allclose(a.predictions.pred, c.predictions.pred)


def test_resume_is_exact(tiny_data, tmp_path):
    cfg, data = tiny_data
    cfg = config_from_dict({**TINY, "data": {"augment": True}, "train": {**TINY["train"], "epochs": 4}})
    full = train(cfg, data, tmp_path / "full", progress=False)
    train(cfg, data, tmp_path / "split", progress=False, stop_after_epochs=2)
    assert len(pd.read_csv(tmp_path / "split" / "metrics.csv")) == 2
    resumed = train(cfg, data, tmp_path / "split", progress=False, resume=True)
    pd.testing.assert_frame_equal(full.predictions, resumed.predictions)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "metrics.csv").drop(columns="seconds"),
        pd.read_csv(tmp_path / "split" / "metrics.csv").drop(columns="seconds"),
    )


def test_training_beats_the_mean_predictor(tiny_real, tmp_path):
    cfg = config_from_dict({**TINY, "train": {**TINY["train"], "epochs": 12, "lr": 0.01}})
    data = prepare_data(load_cohort(tiny_real).table, cfg.data)
    result = train(cfg, data, tmp_path, progress=False)
    p = result.predictions
    test, tr = p[p.split == "test"], p[p.split == "train"]
    mean_mae = float(np.abs(test.age - tr.age.mean()).mean())
    assert result.summary["splits"]["test"]["mae"] < 0.6 * mean_mae


def test_cli_train_then_predict(tiny_real, tmp_path):
    out = tmp_path / "run"
    rc = bap_train.main(
        [
            "--real",
            str(tiny_real),
            "--config",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "2",
            *tiny_run_sets(20),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert load_checkpoint(out / "best.pt")["model_kwargs"]["options"]["channels"] == [4, 8]
    rc = bap_predict.main(
        ["--checkpoint", str(out / "best.pt"), "--cohort", str(tiny_real), "--out", str(tmp_path / "p.csv")]
    )
    assert rc == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    trained = pd.read_csv(out / "predictions.csv")
    merged = predicted.merge(trained, on=["subject_id", "session_id"], suffixes=("", "_run"))
    assert len(merged) == len(trained)
    np.testing.assert_allclose(merged.pred, merged.pred_run, rtol=1e-5)
    assert (merged.split == merged.split_run).all()
    assert (
        bap_train.main(["--real", str(tiny_real), "--out", str(tmp_path / "x"), "--set", "train.lr_x=1"]) == 2
    )


def test_cli_help_has_example(capsys):
    for module in (bap_train, bap_predict):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        assert "example" in capsys.readouterr().out


def test_cli_compare_writes_paired_table(tiny_real, tiny_synthetic, tmp_path):
    out = tmp_path / "cmp"
    rc = bap_train.main(
        [
            "--real",
            str(tiny_real),
            "--synthetic",
            str(tiny_synthetic),
            "--config",
            "demo",
            "--out",
            str(out),
            "--compare",
            "0,0.5",
            "--seeds",
            "2",
            "--epochs",
            "2",
            *tiny_run_sets(50),
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = pd.read_csv(out / "comparison.csv")
    assert summary.ratio.tolist() == [0.0, 0.5]
    assert summary.n_seeds.tolist() == [2, 2]
    assert summary.diff_vs_baseline_years[0] == 0.0 and summary.p_wilcoxon[0] == 1.0
    assert (summary.mae_low_years <= summary.mae_years).all() and (
        summary.mae_years <= summary.mae_high_years
    ).all()
    preds = pd.read_csv(out / "test_predictions.csv")
    # Same test scans for every ratio and seed.
    keys = preds.groupby(["ratio", "seed"]).apply(
        lambda g: tuple(sorted(g.subject_id + g.session_id.astype(str))), include_groups=False
    )
    assert keys.nunique() == 1 and len(keys) == 4
    assert set(preds.subject_id).isdisjoint({s for s in preds.subject_id if s.startswith("g")})
    expected = float(
        np.mean([np.abs(g.pred - g.age).mean() for _, g in preds[preds.ratio == 0.5].groupby("seed")])
    )
    assert summary.mae_years[1] == pytest.approx(expected)
    bins = pd.read_csv(out / "comparison_bins.csv")
    assert set(bins.ratio) == {0.0, 0.5} and (bins.age_bin == "all").sum() == 2
    assert (out / "comparison.md").read_text().startswith("| arm | ratio |")
    assert (out / "comparison_bins.png").stat().st_size > 1000
    syn_rows = pd.read_csv(out / "synthetic-0.5" / "seed-0" / "predictions.csv").query(
        "source == 'synthetic'"
    )
    n_real_train = len(
        pd.read_csv(out / "synthetic-0.5" / "seed-0" / "predictions.csv").query(
            "source == 'real' and split == 'train'"
        )
    )
    assert len(syn_rows) == round(0.5 * n_real_train) and set(syn_rows.split) == {"train"}


def test_epoch_subset_sampler_draws_a_fresh_fixed_size_subset_each_epoch():
    from bap.train import EpochSubsetSampler

    sampler = EpochSubsetSampler(30, 12, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 12 and len(set(first)) == 12 and max(first) < 30
    assert list(sampler) == first  # same epoch, same subset
    sampler.set_epoch(1)
    assert list(sampler) != first
    shards = [list(EpochSubsetSampler(30, 12, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6 and sorted(shards[0] + shards[1]) == sorted(first)
    with pytest.raises(ValueError, match="per_epoch"):
        EpochSubsetSampler(5, 6)


def test_epoch_size_real_gives_every_ratio_the_real_number_of_samples(
    tiny_real, tiny_synthetic, tmp_path, monkeypatch
):
    import bap.run_setup as bap_setup_module

    seen = []
    original = bap_setup_module.EpochSubsetSampler

    class Spy(original):
        def __init__(self, n, per_epoch, **kwargs):
            seen.append((n, per_epoch))
            super().__init__(n, per_epoch, **kwargs)

    monkeypatch.setattr(bap_setup_module, "EpochSubsetSampler", Spy)
    cohort = load_cohort(tiny_real).table
    synthetic = load_cohort(tiny_synthetic).table
    for ratio in (0.0, 1.0):
        cfg = config_from_dict({**TINY, "train": {**TINY["train"], "epochs": 1, "epoch_size": "real"},
                                "data": {"synthetic_ratio": ratio}})  # fmt: skip
        data = prepare_data(cohort, cfg.data, synthetic=synthetic)
        train(cfg, data, tmp_path / f"r{ratio}", progress=False)
    (n0, k0), (n1, k1) = seen
    assert k0 == k1 == n0  # the real training scans, whatever the ratio
    assert n1 == 2 * n0  # the pool doubled with ratio 1.0


def test_cli_model_switch_drops_the_other_models_options():
    from pipelines.bap_train import build_config, build_parser

    base = ["--real", "r", "--out", "o", "--config", "demo"]
    cfg = build_config(build_parser().parse_args([*base, "--model", "sfcn"]))
    assert cfg.model.name == "sfcn" and dict(cfg.model.options) == {}
    cfg = build_config(
        build_parser().parse_args([*base, "--model", "sfcn", "--set", "model.options.dropout=0.2"])
    )
    assert dict(cfg.model.options) == {"dropout": 0.2}
    cfg = build_config(build_parser().parse_args([*base, "--set", "model.options.input_pool=2"]))
    assert cfg.model.options["input_pool"] == 2 and cfg.model.options["channels"] == [16, 32, 64]
