"""Age-fidelity evaluation: the maths on planted effects, and ``flowlet-eval fidelity`` on phantoms whose ageing
effect is deliberately halved."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.fidelity import age_gap_by_bin, binned_differences, slope_ratios, structure_table
from analysis.fidelity_report import Bars, evaluate_fidelity
from analysis.metrics.texture import median_residual_noise
from flowlet.data.bins import label_ages

EDGES = [10, 30, 50, 70, 90]


def _structure_frame(ages, volumes, name="lateral_ventricles", prefix="r"):
    return pd.DataFrame(
        {
            "image_id": [f"{prefix}{i}" for i in range(len(ages))],
            "age": ages,
            "structure": name,
            "volume_mm3": volumes,
        }
    )


def test_slope_ratio_and_binned_difference_recover_planted_effects():
    rng = np.random.default_rng(0)
    ages = np.repeat(
        [20.0, 40.0, 60.0, 80.0], 100
    )  # every bin at its centre: the planted difference is exact
    real = _structure_frame(ages, 5000 + 100 * ages + rng.normal(0, 200, ages.size))
    syn_ages = ages.copy()
    # half the ageing effect, same volume at age 50
    synthetic = _structure_frame(syn_ages, 10000 + 50 * (syn_ages - 50) + rng.normal(0, 200, 400), prefix="s")
    slopes = slope_ratios(real, synthetic, n_boot=500)
    row = slopes.iloc[0]
    assert row.slope_ratio == pytest.approx(0.5, abs=0.03)
    assert row.ci_low < 0.5 < row.ci_high and row.ci_high - row.ci_low < 0.1
    by_bin = binned_differences(real, synthetic, EDGES, n_boot=500).set_index("bin")
    centres = {"[10, 30)": 20.0, "[30, 50)": 40.0, "[50, 70)": 60.0, "[70, 90]": 80.0}
    # real = 10000 + 100·(age − 50), synthetic = 10000 + 50·(age − 50): the difference in % of real at the centre
    expected = {k: 100 * (-50 * (c - 50)) / (10000 + 100 * (c - 50)) for k, c in centres.items()}
    for label, value in expected.items():
        pct = by_bin.loc[label]
        assert pct.diff_pct == pytest.approx(value, abs=1.0)
        assert pct.diff_pct_ci_low < value < pct.diff_pct_ci_high


def test_age_gap_noise_ratio_and_bars():
    rng = np.random.default_rng(1)
    ages = np.repeat([15.0, 35.0, 55.0, 75.0], 25)
    predictions = pd.DataFrame(
        {"age": ages, "pred": ages + np.where(ages > 60, 8.0, 1.0) + rng.normal(0, 1, 100)}
    )
    gap = age_gap_by_bin(predictions, EDGES, n_boot=500).set_index("bin")
    assert gap.loc["[70, 90]", "mean_gap"] == pytest.approx(8.0, abs=0.5)
    assert gap.loc["[10, 30)", "ci_low"] < 1.0 < gap.loc["[10, 30)", "ci_high"]
    real = _structure_frame(ages, 1000 + 10 * ages)
    images_real = pd.DataFrame({"age": ages, "noise": 0.02 + rng.normal(0, 0.001, 100)})
    images_syn = pd.DataFrame({"age": ages, "noise": 0.05 + rng.normal(0, 0.001, 100)})
    report = evaluate_fidelity(
        real, real, edges=EDGES, predictions=predictions, images_real=images_real,
        images_synthetic=images_syn, n_boot=200,
    )  # fmt: skip
    bars = report.bars.set_index("bar")
    assert bool(bars.loc["lateral_ventricles slope ratio", "met"])
    assert bool(bars.loc["lateral_ventricles volume % difference per bin", "met"])
    assert not bool(bars.loc["brain-age gap per bin (years)", "met"])
    assert bars.loc["brain-age gap per bin (years)", "worst_bin"] == "[70, 90]"
    assert not bool(bars.loc["texture noise ratio", "met"])
    assert report.noise.set_index("bin").loc["all", "ratio"] == pytest.approx(2.5, abs=0.1)
    assert Bars().max_noise_ratio == 1.5


def test_structure_table_names_missing_region():
    volumes = pd.DataFrame(
        {"image_id": ["a"], "age": [30.0], "region": ["whole-brain"], "tissue": ["gm"], "volume_mm3": [1.0]}
    )
    with pytest.raises(ValueError, match="lateral-ventricles"):
        structure_table(volumes)


def test_age_bins_edges():
    labels = label_ages([5, 10, 29.9, 30, 90, 95], [10, 30, 90]).tolist()
    assert labels == [None, "[10, 30)", "[10, 30)", "[30, 90]", "[30, 90]", None]


def test_texture_noise_flags_salt_and_pepper(phantom_arrays):
    scaled = [a / np.percentile(a[a > 0], 99) for a in phantom_arrays[:6]]
    clean = [median_residual_noise(a) for a in scaled]
    rng = np.random.default_rng(0)
    noisy = []
    for b in scaled:
        b = b.copy()
        inside = np.flatnonzero(b > 0)
        hit = rng.choice(
            inside, inside.size // 10, replace=False
        )  # 10 % of the brain turned to salt or pepper
        b.flat[hit] = rng.choice([0.05, 1.0], hit.size)
        noisy.append(median_residual_noise(b))
    assert np.mean(noisy) / np.mean(clean) > 1.5
    assert np.max(clean) / np.min(clean) < 1.3  # clean scans of different subjects and sites agree
    dense = [
        median_residual_noise(b + (b > 0) * rng.normal(0, 0.1, b.shape), statistic="mad") for b in scaled
    ]
    assert np.mean(dense) / np.mean([median_residual_noise(b, statistic="mad") for b in scaled]) > 1.5


# --------------------------------------------------------------------------------------- end to end
def _write_cohort(out, made_at, labelled, config, *, truth: bool):
    """One phantom individual made at the ages ``made_at`` and recorded with the ages ``labelled``."""
    from flowlet.data.io import write_json_atomic, write_table_atomic
    from flowlet.data.nifti import save_volume
    from flowlet.data.phantom import make_phantom

    rows = []
    for i, (age, label) in enumerate(zip(made_at, labelled)):
        subject = make_phantom(float(age), sex="F", site=0, seed=1000, config=config)
        pid = f"sub-{i + 1:04d}"
        save_volume(out / pid / "anat" / f"{pid}_T1w.nii.gz", subject.image, subject.affine, dtype=np.float32)
        rows.append({"participant_id": pid, "age": float(label), "sex": "F", "site": subject.site})
    write_table_atomic(out / "participants.tsv", pd.DataFrame(rows))
    if truth:
        write_json_atomic(out / "code" / "phantom_config.json", {"config": config.to_dict()})
    return out


@pytest.mark.slow
def test_cli_recovers_halved_ageing_on_phantoms(tmp_path):
    """A synthetic set whose ageing effect is exactly half the real one, whatever the shape of the lifespan curves
    and of the measurement: every requested age gets two brains of one phantom individual, one made at that age and
    one made at age 50. The mean volume at a requested age is then (V(age) + V(50)) / 2, so every least-squares slope
    ratio synthetic/real is 0.5, for every structure, against real and against the phantom's lifespan curves."""
    from flowlet.data.phantom import PhantomConfig
    from pipelines.eval.cli import main

    config = PhantomConfig.from_yaml(voxel_size=4)
    ages = np.linspace(12, 88, 10)
    real = _write_cohort(tmp_path / "real", ages, ages, config, truth=True)
    made_at = np.concatenate([ages, np.full(ages.size, 50.0)])
    syn = _write_cohort(tmp_path / "syn", made_at, np.concatenate([ages, ages]), config, truth=False)
    out = tmp_path / "fid"
    code = main(
        ["fidelity", "--real", str(real), "--synthetic", str(syn), "--out", str(out), "--voxel-size", "4",
         "--registration", "none", "--n-boot", "400", "--bins", "10", "50", "90", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    slopes = pd.read_csv(out / "slopes.tsv", sep="\t").set_index("structure")
    for name in ("lateral_ventricles", "hippocampus", "total_gm", "total_wm", "total_csf"):
        assert slopes.loc[name, "slope_ratio"] == pytest.approx(0.5, abs=0.02), name
        assert slopes.loc[name, "ci_low"] < 0.5 < slopes.loc[name, "ci_high"], name
    truth = pd.read_csv(out / "truth.tsv", sep="\t").set_index(["structure", "set"])
    for name in ("lateral_ventricles", "total_wm"):
        ratio = truth.loc[(name, "synthetic"), "slope_ratio"] / truth.loc[(name, "real"), "slope_ratio"]
        assert ratio == pytest.approx(0.5, abs=0.05), name
    noise = pd.read_csv(out / "noise.tsv", sep="\t").set_index("bin")
    assert 0.9 < noise.loc["all", "ratio"] < 1.1  # the same kind of clean scans
    summary = json.loads((out / "fidelity.json").read_text())
    assert (summary["n_real"], summary["n_synthetic"]) == (10, 20)
    bars = pd.read_csv(out / "bars.tsv", sep="\t").set_index("bar")
    assert not bool(bars.loc["lateral_ventricles slope ratio", "met"])
    assert (out / "summary.md").read_text().startswith("# Age fidelity")
