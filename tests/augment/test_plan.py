"""Planning is maths: totals, fill order, proportions and errors are checked exactly."""

from __future__ import annotations

import numpy as np
import pytest

from flowlet.augment.plan import (
    PlanError,
    age_bins,
    allocate,
    draw_ages,
    gaussian_proportions,
    make_plan,
)
from flowlet.data.bins import histogram


@pytest.fixture
def skewed_ages() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.uniform(20, 40, 150), rng.uniform(40, 90, 40), rng.uniform(8, 20, 10)])


def test_bins_cover_the_range_and_histogram_counts_everyone(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=5)
    assert edges[0] <= skewed_ages.min() and edges[-1] > skewed_ages.max()
    assert histogram(skewed_ages, edges).sum() == skewed_ages.size
    assert histogram([10.0, 15.0, 20.0], np.array([10.0, 15.0, 20.0])).tolist() == [1, 2]


@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0, 2.5])
def test_total_equals_the_budget_exactly(skewed_ages, ratio):
    edges = age_bins(skewed_ages, bin_width=5)
    plan = make_plan(skewed_ages, edges, np.ones(len(edges) - 1), synthetic_ratio=ratio)
    assert plan.table["synthetic_count"].sum() == round(ratio * skewed_ages.size) == plan.budget


def test_uniform_with_enough_budget_equalises_every_bin(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=5)
    plan = make_plan(skewed_ages, edges, np.ones(len(edges) - 1))
    combined = plan.table["combined_count"].to_numpy()
    assert combined.min() == combined.max() == plan.table["real_count"].max()
    assert plan.max_min_ratio() == 1.0
    big = make_plan(skewed_ages, edges, np.ones(len(edges) - 1), synthetic_ratio=5.0)
    assert big.table["combined_count"].max() - big.table["combined_count"].min() <= 1


def test_tight_budget_fills_the_smallest_bins_first():
    real = np.array([50, 2, 10, 0])
    counts = allocate(real, np.ones(4), 5)
    assert counts.tolist() == [
        0,
        2,
        0,
        3,
    ]  # level 2.5: bins 1 and 3 rise to 4 and 3 (tie-break to the lower bin)
    counts = allocate(real, np.ones(4), 20)
    assert counts.tolist() == [
        0,
        9,
        1,
        10,
    ]  # level 10.5 → 11, 11, 11, 10: bins with the most unmet need first


def test_bins_above_target_get_nothing(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=5)
    plan = make_plan(skewed_ages, edges, np.ones(len(edges) - 1), synthetic_ratio=0.3)
    filled = plan.table[plan.table["synthetic_count"] > 0]
    level = filled["combined_count"].max()  # the water level the budget reached
    full = plan.table[plan.table["real_count"] >= level]
    assert len(filled) > 0 and len(full) > 0  # both kinds of bin exist, so the check below can fail
    assert (full["synthetic_count"] == 0).all()
    assert (filled["real_count"] < level).all()


def test_match_target_reproduces_proportions_within_one_sample(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=10)
    target_ages = np.random.default_rng(1).uniform(10, 90, 500)
    p = histogram(target_ages, edges).astype(float)
    plan = make_plan(skewed_ages, edges, p, target="match")
    combined = plan.table["combined_count"].to_numpy()
    kept = (
        p > 0
    )  # real brains in a bin the target leaves empty cannot be removed; they are left out of the check
    expected = combined[kept].sum() * p[kept] / p.sum()
    assert np.all(np.abs(combined[kept] - expected) <= 1.0 + 1e-9)
    assert (plan.table["synthetic_count"].to_numpy()[~kept] == 0).all()


def test_gaussian_proportions_sum_to_one_and_peak_at_the_mean():
    edges = np.arange(0, 101, 10.0)
    p = gaussian_proportions(edges, 55.0, 10.0)
    assert p.sum() == pytest.approx(1.0)
    assert int(np.argmax(p)) == 5
    with pytest.raises(PlanError, match="positive SD"):
        gaussian_proportions(edges, 50, 0)


def test_min_per_bin_and_max_synthetic(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=5)
    plan = make_plan(skewed_ages, edges, np.ones(len(edges) - 1), max_synthetic=60, min_per_bin=4)
    assert plan.table["synthetic_count"].sum() == 60
    assert (plan.table["combined_count"] >= 4).all()
    with pytest.raises(PlanError, match="min_per_bin"):
        make_plan(skewed_ages, edges, np.ones(len(edges) - 1), max_synthetic=5, min_per_bin=30)


def test_bad_options_are_named():
    with pytest.raises(PlanError, match=r"^bins: "):
        age_bins([1, 2], edges=[10, 5])
    with pytest.raises(PlanError, match=r"^bin_width: "):
        age_bins([1, 2], bin_width=0)
    with pytest.raises(PlanError, match=r"^synthetic_ratio: "):
        make_plan([20, 30], np.array([20.0, 25, 35]), np.ones(2), synthetic_ratio=-1)
    with pytest.raises(PlanError, match="empty cohort"):
        age_bins([], bin_width=5)


def test_draw_ages_stays_in_bins_and_refuses_out_of_range(skewed_ages):
    edges = age_bins(skewed_ages, bin_width=5)
    plan = make_plan(skewed_ages, edges, np.ones(len(edges) - 1), synthetic_ratio=1.0)
    ages = draw_ages(plan, np.random.default_rng(0))
    assert ages.size == plan.budget
    assert np.array_equal(histogram(ages, edges), plan.table["synthetic_count"].to_numpy())
    clipped = draw_ages(plan, np.random.default_rng(0), age_range=(10.0, 85.0))
    assert clipped.min() >= 10.0 and clipped.max() <= 85.0
    with pytest.raises(PlanError, match="allow_extrapolation"):
        draw_ages(plan, np.random.default_rng(0), age_range=(30.0, 50.0))
    wide = draw_ages(plan, np.random.default_rng(0), age_range=(30.0, 50.0), allow_extrapolation=True)
    assert wide.size == plan.budget


def test_parse_target_forms(tmp_path):
    from flowlet.augment.targets import parse_target

    edges = np.arange(20, 61, 10.0)
    assert parse_target("uniform", edges).proportions.tolist() == [1, 1, 1, 1]
    (tmp_path / "participants.tsv").write_text("participant_id\tAge\nsub-1\t25.5\nsub-2\t26\nsub-3\t55\n")
    assert parse_target(f"match:{tmp_path / 'participants.tsv'}", edges).proportions.tolist() == [2, 0, 0, 1]
    assert parse_target("gaussian:40,5", edges).proportions.sum() == pytest.approx(1.0)
    (tmp_path / "bins.tsv").write_text("bin_start\tbin_end\tcount\n0\t50\t10\n50\t100\t30\n")
    explicit = parse_target(str(tmp_path / "bins.tsv"), edges)
    assert explicit.edges.tolist() == [0, 50, 100]
    assert explicit.counts.tolist() == [10, 30]


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("gaussian:40", None, "gaussian:MEAN,SD"),
        ("triangle", None, "expected uniform"),
        ("match:{dir}/nope.tsv", None, "not found"),
        ("match:{dir}/p.tsv", "participant_id\tyears\nsub-1\t3\n", "expected an age column"),
        ("match:{dir}/p.tsv", "participant_id\tage\nsub-1\told\n", "non-negative numbers"),
        ("{dir}/p.tsv", "bin_start\tbin_end\n0\t10\n", "expected columns bin_start"),
        ("{dir}/p.tsv", "bin_start\tbin_end\tcount\n0\t10\t1\n20\t30\t1\n", "contiguous"),
    ],
)
def test_parse_target_errors(tmp_path, spec, content, message):
    from flowlet.augment.targets import parse_target

    if content is not None:
        (tmp_path / "p.tsv").write_text(content)
    with pytest.raises(PlanError, match=message):
        parse_target(spec.format(dir=tmp_path), np.arange(20, 61, 10.0))


def test_explicit_counts_are_reached_exactly():
    ages = [21, 22, 23, 31, 45]
    edges = np.array([20.0, 30, 40, 50])
    plan = make_plan(ages, edges, np.array([5, 5, 2]), target_counts=np.array([5, 5, 2]))
    assert plan.table["synthetic_count"].tolist() == [2, 4, 1]
    assert plan.table["combined_count"].tolist() == [5, 5, 2]
    tight = make_plan(ages, edges, np.array([5, 5, 2]), target_counts=np.array([5, 5, 2]), max_synthetic=3)
    assert tight.table["synthetic_count"].sum() == 3


def test_front_ends_translate_parameter_names_to_flags():
    from flowlet.augment.plan import with_flags

    assert with_flags("bin_width: expected a positive number") == "--bin-width: expected a positive number"
    assert with_flags("bins: expected at least two") == "--bins: expected at least two"
    assert (
        with_flags("min_per_bin 50 needs 7 synthetic samples (raise synthetic_ratio or max_synthetic)")
        == "--min-per-bin 50 needs 7 synthetic samples (raise --synthetic-ratio or --max-synthetic)"
    )
    assert with_flags("set allow_extrapolation to force it") == "set --allow-extrapolation to force it"
    # Words that are not parameters stay as they are.
    assert with_flags("puts no mass in the bins 10-90") == "puts no mass in the bins 10-90"
    assert with_flags("gaussian target: expected a positive SD") == "gaussian target: expected a positive SD"
