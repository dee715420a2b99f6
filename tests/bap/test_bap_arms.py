"""Comparison arms: spelling, the oversampler's draw rates, inverse-frequency loss weights, and statistics keyed by
scan (a shuffled prediction table changes nothing; arms evaluated on different scans fail loudly)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from bap_helpers import tiny_run_sets

from bap.arms import Arm, parse_arms, ratios_to_arms
from bap.compare import arm_statistics, holm, paired_errors
from bap.data import AgeDataset
from bap.train import AgeObjective, WeightedEpochSampler
from flowlet.data.bins import inverse_frequency_weights
from pipelines import bap_train


def test_arm_spelling_and_errors():
    arms = parse_arms("real, oversample,reweight,synthetic:0.5,synthetic:1,synthetic-filtered:0.5")
    assert [a.label for a in arms] == [
        "real",
        "oversample",
        "reweight",
        "synthetic:0.5",
        "synthetic:1",
        "synthetic-filtered:0.5",
    ]
    assert arms[3] == Arm("synthetic", 0.5) and arms[3].synthetic and not arms[1].synthetic
    assert ratios_to_arms([0, 0.5, 1.0]) == [Arm("real"), Arm("synthetic", 0.5), Arm("synthetic", 1.0)]
    for bad, message in (
        ("real,smote", "unknown"),
        ("synthetic", "number R > 0"),
        ("synthetic:0", "must be > 0"),
        ("reweight:2", "takes no ratio"),
        ("real,real", "listed twice"),
        (" , ", "no arms"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_arms(bad)


def test_reweight_weights_are_inverse_bin_frequency_with_mean_one():
    ages = np.array([21.0, 22.0, 25.0, 29.0, 33.0, 75.0])  # bins 20-30: 4 scans, 30-40: 1, 70-80: 1
    w = inverse_frequency_weights(ages, 10.0)
    np.testing.assert_allclose(w, [6 / 12, 6 / 12, 6 / 12, 6 / 12, 2.0, 2.0])
    assert w.mean() == pytest.approx(1.0)
    totals = pd.Series(w).groupby(np.floor(ages / 10)).sum()
    np.testing.assert_allclose(totals, 2.0)  # every occupied bin carries the same total weight


def test_weighted_loss_is_the_weighted_batch_mean_of_absolute_errors():
    class Const(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).mean(1)

    objective = AgeObjective(Const(), "l1")
    x = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1, 1, 1)
    age = torch.tensor([12.0, 20.0, 40.0])
    w = torch.tensor([0.5, 1.0, 2.0])
    loss, _ = objective(x, age, w)
    assert float(loss) == pytest.approx((0.5 * 2 + 0 + 2.0 * 10) / 3.5)
    assert float(objective(x, age)[0]) == pytest.approx(12 / 3)


def test_oversampler_draws_every_bin_at_the_target_rate_and_repeats_differ():
    ages = np.concatenate([np.full(90, 25.0), np.full(8, 55.0), np.full(2, 85.0)])  # 90 % / 8 % / 2 %
    sampler = WeightedEpochSampler(inverse_frequency_weights(ages, 10.0), len(ages), seed=3)
    drawn = []
    for epoch in range(60):
        sampler.set_epoch(epoch)
        virtual = np.array(list(sampler))
        assert len(virtual) == len(sampler) == len(ages)  # the same steps as one pass over the real scans
        assert len(set(virtual.tolist())) == len(virtual)  # repeats of a scan get distinct indices
        drawn.append(virtual % len(ages))
    bins = np.floor(ages[np.concatenate(drawn)] / 10)
    rates = pd.Series(bins).value_counts(normalize=True).sort_index()
    np.testing.assert_allclose(rates.to_numpy(), [1 / 3, 1 / 3, 1 / 3], atol=0.02)
    sampler.set_epoch(7)
    again = WeightedEpochSampler(inverse_frequency_weights(ages, 10.0), len(ages), seed=3)
    again.set_epoch(7)
    assert list(sampler) == list(again)  # seeded
    # A repeated scan reads the same image and age but draws its own flip/shift.
    images = np.random.default_rng(0).normal(size=(4, 6, 6, 6)).astype(np.float32)
    dataset = AgeDataset(images, np.arange(4.0), augment=True, shift=2, seed=1)
    first = [dataset[1][0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    repeats = [dataset[1 + k * 4] for k in range(1, 6)]
    assert all(float(age) == 1.0 for _, age in repeats)
    assert any(not torch.equal(x, first[0]) for x, _ in repeats)


def _predictions(arms=("real", "reweight"), seeds=(0, 1, 2), n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ages = rng.uniform(10, 90, n).round(2)
    rows = []
    for a, arm in enumerate(arms):
        for s in seeds:
            pred = ages + rng.normal(a, 5 + 3 * (ages > 60), n)
            rows.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "ratio": 0.0,
                        "seed": s,
                        "subject_id": [f"s{i:03d}" for i in range(n)],
                        "session_id": "n/a",
                        "age": ages,
                        "pred": pred,
                        "pred_corrected": pred,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def test_paired_result_is_unchanged_when_each_arm_is_shuffled_differently():
    predictions = _predictions()
    expected = arm_statistics(predictions, bin_width=20.0, n_boot=200)
    parts = [
        g.sample(frac=1.0, random_state=k) for k, (_, g) in enumerate(predictions.groupby("arm", sort=False))
    ]
    shuffled = pd.concat(parts[::-1], ignore_index=True)
    assert not shuffled["subject_id"].head(30).equals(predictions["subject_id"].head(30))
    result = arm_statistics(shuffled, baseline="real", bin_width=20.0, n_boot=200)
    result = (
        result.set_index(["arm", "age_bin"]).loc[expected.set_index(["arm", "age_bin"]).index].reset_index()
    )
    result = result[expected.columns]
    pd.testing.assert_frame_equal(result, expected)
    other = expected[expected.arm == "reweight"]
    assert other.diff_years.iloc[0] == pytest.approx(other.mae_years.iloc[0] - expected.mae_years.iloc[0])
    assert other.diff_seed_sd_years.notna().all() and (other.n_seeds == 3).all()


def test_arm_statistics_agree_with_the_paired_error_table():
    """The per-arm MAE of every bin is the mean of that arm's seed-averaged errors in :func:`paired_errors`."""
    predictions = _predictions()
    table = arm_statistics(predictions, bin_width=20.0, n_boot=50)
    wide = paired_errors(predictions)
    labels = np.floor(wide["age"].to_numpy() / 20.0) * 20.0
    for row in table.itertuples():
        rows = wide if row.age_bin == "all" else wide[labels == float(row.age_bin.strip("[").split(",")[0])]
        assert row.n == len(rows) and row.n_seeds == 3
        assert row.mae_years == pytest.approx(rows[row.arm].mean(), rel=1e-12)
        assert row.diff_years == pytest.approx((rows[row.arm] - rows["real"]).mean(), abs=1e-12)


def test_arms_evaluated_on_different_scans_fail_with_the_scans_named():
    predictions = _predictions()
    dropped = predictions[~((predictions.arm == "reweight") & (predictions.subject_id == "s007"))]
    with pytest.raises(ValueError, match=r"different test scans.*\('s007', 'n/a'\)"):
        arm_statistics(dropped, bin_width=20.0, n_boot=50)
    duplicated = pd.concat([predictions, predictions.head(1)], ignore_index=True)
    with pytest.raises(ValueError, match="more than once"):
        paired_errors(duplicated)
    fewer_seeds = predictions[~((predictions.arm == "reweight") & (predictions.seed == 2))]
    with pytest.raises(ValueError, match="different seeds"):
        paired_errors(fewer_seeds)


def test_holm_adjustment():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


def test_cli_arms_train_every_arm_at_the_same_steps(tiny_real, tiny_synthetic, tmp_path):
    out = tmp_path / "arms"
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
            "--arms",
            "real,oversample,reweight,synthetic:0.5",
            "--epochs",
            "2",
            *tiny_run_sets(50),
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = pd.read_csv(out / "comparison.csv")
    assert summary.arm.tolist() == ["real", "oversample", "reweight", "synthetic:0.5"]
    assert summary.verdict.iloc[0] == "baseline"
    for folder in ("real", "oversample", "reweight", "synthetic-0.5"):
        config = (out / folder / "seed-0" / "config.yaml").read_text()
        assert "epoch_size: real" in config
    assert "augment: true" in (out / "oversample" / "seed-0" / "config.yaml").read_text()
    bins = pd.read_csv(out / "comparison_bins.csv")
    assert {"p_holm", "diff_seed_sd_years", "verdict"} <= set(bins.columns)
    assert (
        bap_train.main(["--real", str(tiny_real), "--out", str(tmp_path / "x"), "--arms", "real,smote"]) == 2
    )


def test_synthetic_arms_need_their_cohort(tiny_real, tmp_path):
    from bap.compare import run_comparison
    from bap.config import load_config
    from configs import config_path
    from flowlet.data.cohort import load_cohort
    from pipelines.study.config import StudyConfigError, study_config_from_dict

    cfg = load_config(config_path("bap", "demo"))
    real = load_cohort(tiny_real).table
    with pytest.raises(ValueError, match=r"'synthetic-filtered:0\.5' needs a filtered synthetic cohort"):
        run_comparison(cfg, real, tmp_path, arms="real,synthetic-filtered:0.5")
    with pytest.raises(ValueError, match=r"'synthetic:1' needs a synthetic cohort"):
        run_comparison(cfg, real, tmp_path, arms="real,synthetic:1")
    raw = {"cohort": {"path": "x"}, "bap": {"arms": ["real", "synthetic-filtered:1"]}}
    with pytest.raises(StudyConfigError, match=r"bap\.filtered_synthetic"):
        study_config_from_dict(raw)
    with pytest.raises(StudyConfigError, match=r"bap\.arms: arm 'smote'"):
        study_config_from_dict({"cohort": {"path": "x"}, "bap": {"arms": ["smote"]}})


def test_an_effect_carried_by_one_training_seed_is_not_called():
    rng = np.random.default_rng(5)
    n = 80
    ages = rng.uniform(20, 60, n)
    frames = []
    for arm, shifts in {"real": [0, 0, 0, 0], "synthetic:1": [-6.0, 0.5, 0.5, 0.5]}.items():
        for seed, shift in enumerate(shifts):
            err = 8.0 + shift + rng.normal(0.0, 0.3, n)
            frames.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "ratio": 0.0,
                        "seed": seed,
                        "subject_id": [f"s{i:03d}" for i in range(n)],
                        "session_id": "n/a",
                        "age": ages,
                        "pred": ages + err,
                        "pred_corrected": ages + err,
                    }
                )
            )
    table = arm_statistics(pd.concat(frames, ignore_index=True), bin_width=100.0, n_boot=1000)
    row = table[(table.arm == "synthetic:1") & (table.age_bin == "all")].iloc[0]
    assert row.diff_years == pytest.approx(-1.125, abs=0.1)
    # Scans alone would put the CI far from 0; the seeds, resampled, reach across it.
    assert row.diff_low_years < 0.0 < row.diff_high_years
    assert row.verdict == "no detectable effect"
