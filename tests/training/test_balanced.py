"""Age-balanced sampling in flowlet-train: inverse-frequency weights per age bin, drawn at the configured rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flowlet.training.data import StepBatchSampler, age_balanced_weights

# A skewed cohort: 60 scans in their twenties, 25 in their forties, 10 in their sixties, 5 over 80.
AGES = np.concatenate([np.full(60, 24.0), np.full(25, 45.0), np.full(10, 63.0), np.full(5, 84.0)])


def test_weights_give_every_bin_the_same_share():
    balance = age_balanced_weights(AGES, 10.0)
    table = balance.table.set_index("bin")
    assert list(table.index) == ["[20, 30)", "[40, 50)", "[60, 70)", "[80, 90)"]
    assert table["n_scans"].tolist() == [60, 25, 10, 5]
    assert balance.weights.sum() == pytest.approx(1.0)
    per_bin = pd.Series(balance.weights).groupby(np.floor(AGES / 10)).sum()
    assert np.allclose(per_bin.to_numpy(), 0.25)
    assert table.loc["[80, 90)", "draws_per_scan"] == pytest.approx(100 / 4 / 5)
    assert table.loc["[20, 30)", "natural_probability"] == pytest.approx(0.6)


def test_sampler_draws_bins_at_the_configured_rates():
    balance = age_balanced_weights(AGES, 10.0)
    sampler = StepBatchSampler(len(AGES), 8, seed=3, start_step=0, total_steps=2000, weights=balance.weights)
    drawn = np.array([i for batch in sampler for i, _ in batch])
    counts = pd.Series(np.floor(AGES[drawn] / 10)).value_counts().sort_index().to_numpy()
    assert counts.sum() == 16000
    chi2 = stats.chisquare(counts, np.full(4, counts.sum() / 4))
    assert chi2.pvalue > 1e-3
    assert np.all(np.abs(counts / counts.sum() - 0.25) < 0.02)
    # without weights the bins keep the cohort's proportions
    plain = StepBatchSampler(len(AGES), 8, seed=3, start_step=0, total_steps=500)
    natural = np.array([i for batch in plain for i, _ in batch])
    assert np.mean(AGES[natural] > 80) == pytest.approx(0.05, abs=0.01)


def test_balanced_batches_are_seeded_by_step_and_split_across_ranks():
    weights = age_balanced_weights(AGES, 10.0).weights
    whole = StepBatchSampler(len(AGES), 8, seed=5, start_step=0, total_steps=20, weights=weights)
    resumed = StepBatchSampler(len(AGES), 8, seed=5, start_step=10, total_steps=20, weights=weights)
    assert list(whole)[10:] == list(resumed)
    ranks = [
        list(
            StepBatchSampler(
                len(AGES), 8, seed=5, start_step=0, total_steps=20, rank=r, world_size=2, weights=weights
            )
        )
        for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks)] == list(whole)
    seeds = [s for batch in whole for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # repeated scans get different augmentations
    with pytest.raises(ValueError, match="sampling weights"):
        StepBatchSampler(len(AGES), 8, seed=5, start_step=0, total_steps=2, weights=weights[:-1])


def test_trainer_writes_and_uses_the_balance(tiny_config):
    from flowlet.training.trainer import Trainer

    trainer = Trainer(
        tiny_config("data.age_balanced=true", "data.age_balance_bin_width=20", "training.max_steps=2")
    )
    trainer.fit()
    table = pd.read_csv(trainer.run_dir / "age_balance.tsv", sep="\t")
    assert table["n_scans"].sum() == len(trainer.train_set)
    assert np.allclose(table["probability"], 1 / len(table))
    assert trainer._loader().batch_sampler.weights is not None


def test_bad_bin_width_is_refused(tiny_config):
    from flowlet.training.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="age_balance_bin_width"):
        tiny_config("data.age_balanced=true", "data.age_balance_bin_width=0")
