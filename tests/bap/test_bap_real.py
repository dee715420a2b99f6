"""Brain age on real cohorts: per-scan normalisation, trusted bias correction, the ridge baseline, --init."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from bap_helpers import phantom_scan, tiny_run_sets
from torch import nn

from bap import metrics
from bap.baseline import fit_ridge_baseline, results_table, wide_features
from bap.checkpoint import load_init_weights
from bap.config import DataConfig, config_from_dict
from bap.data import apply_normalisation, brain_zscore, fit_normalisation, prepare_data, scan_brain_mask
from bap.sfcn import SFCN
from flowlet.data.cohort import load_cohort
from flowlet.data.preprocessing import zscore
from pipelines import bap_train

SMALL = [4, 4, 8, 8, 8, 4]


# --- per-scan normalisation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("background", "mask"),
    [("zero", "auto"), ("zero", "nonzero"), ("zero", "otsu"), ("noisy", "auto"), ("noisy", "otsu")],
)
def test_brain_zscore_is_invariant_to_a_per_scan_gain(background, mask):
    scan = phantom_scan(50.0, np.random.default_rng(0))
    if background == "zero":
        scan = np.where(scan > 50.0, scan, 0.0).astype(np.float32)
    reference = brain_zscore(scan, mask)
    for gain in (0.3, 3.0, 40.0):
        np.testing.assert_allclose(brain_zscore(scan * gain, mask), reference, atol=1e-4)
    inside = scan_brain_mask(scan, mask)
    assert 0.05 < inside.mean() < 0.95
    assert float(reference[inside].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(reference[inside].std()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("mask", ["auto", "nonzero", "otsu"])
def test_brain_zscore_is_the_shared_masked_zscore(mask):
    """``brain_zscore`` is :func:`flowlet.data.preprocessing.zscore` inside the scan's own brain mask, bit for bit;
    a brain of one constant intensity is only centred (no division by a vanishing SD)."""
    scan = phantom_scan(50.0, np.random.default_rng(3))
    scan = np.where(scan > 50.0, scan, 0.0).astype(np.float32)
    expected = zscore(scan, mask=scan_brain_mask(scan, mask))
    np.testing.assert_array_equal(brain_zscore(scan, mask), expected)
    flat = np.where(scan > 0, np.float32(80.0), np.float32(0.0))
    out = brain_zscore(flat, mask)
    np.testing.assert_array_equal(out, flat - 80.0)


def test_brain_zscore_uses_each_scan_alone():
    rng = np.random.default_rng(1)
    scans = np.stack([phantom_scan(age, rng, scale) for age, scale in ((30, 100.0), (70, 300.0), (50, 7.0))])
    stats = fit_normalisation(scans, DataConfig())
    assert stats["kind"] == "brain_zscore"
    together = apply_normalisation(scans, stats)
    for i, scan in enumerate(scans):
        np.testing.assert_array_equal(together[i], apply_normalisation(scan, stats))
    # The same anatomy 3x brighter normalises to the same image: a scanner gain cannot carry age.
    np.testing.assert_allclose(apply_normalisation(scans[0] * 3.0, stats), together[0], atol=1e-4)


def test_default_normalisation_cannot_see_a_scanner_gain(tiny_real):
    real = load_cohort(tiny_real).table
    memo: dict[str, np.ndarray] = {}
    base = prepare_data(real, DataConfig(split_seed=1), memo=memo)
    for path in list(memo):
        memo[path] = memo[path] * 3.0  # every scan from a 3x brighter scanner
    bright = prepare_data(real, DataConfig(split_seed=1), memo=memo)
    np.testing.assert_allclose(bright.images, base.images, atol=1e-4)
    old = prepare_data(real, DataConfig(split_seed=1, normalisation="minmax"), memo=memo)
    assert old.norm["kind"] == "minmax" and old.norm["high"] > 1.0


# --- bias correction ------------------------------------------------------------------------------------------


def test_bias_correction_recovers_a_known_slope_on_a_good_fit():
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, 200)
    pred = 0.6 * age + 20.0 + rng.normal(0, 1.0, age.size)
    decision = metrics.decide_bias_correction(age, pred)
    assert decision.reason == "used" and decision.correction is not None
    assert decision.correction.slope == pytest.approx(0.6, abs=0.02)
    assert decision.correction.intercept == pytest.approx(20.0, abs=1.0)
    assert decision.mae_corrected < decision.mae
    assert decision.to_dict()["used"] is True


@pytest.mark.parametrize(
    ("n", "slope", "low", "high", "reason"),
    [
        (8, 0.8, 20, 80, "subjects < 20"),
        (60, 0.014, 20, 80, "slope"),
        (60, 0.8, 40, 50, "age range"),
    ],
)
def test_bias_correction_refuses_degenerate_fits(n, slope, low, high, reason):
    rng = np.random.default_rng(2)
    age = np.linspace(low, high, n)
    pred = slope * age + (1 - slope) * age.mean() + rng.normal(0, 2.0, n)
    decision = metrics.decide_bias_correction(age, pred)
    assert decision.correction is None and reason in decision.reason
    assert decision.to_dict()["used"] is False


def test_bias_correction_refuses_a_fit_that_raises_its_own_mae():
    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 40)
    # Predictions that follow age weakly but with a big scatter: dividing by the slope inflates the scatter.
    pred = 0.35 * age + 0.65 * age.mean() + rng.normal(0, 8.0, age.size)
    decision = metrics.decide_bias_correction(age, pred)
    assert decision.fitted.slope > 0.3  # passes the slope check ...
    assert decision.mae_corrected > decision.mae  # ... but would make things worse
    assert decision.correction is None and "raises the MAE" in decision.reason


# --- ridge baseline -------------------------------------------------------------------------------------------


def _synthetic_features(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    subjects = [f"s{i:03d}" for i in range(n)]
    table = pd.DataFrame(
        {
            "subject_id": subjects,
            "session_id": "1",
            "age": age,
            "split": np.where(
                np.arange(n) < 0.7 * n, "train", np.where(np.arange(n) < 0.85 * n, "val", "test")
            ),
            "source": "real",
        }
    )
    features = pd.DataFrame(
        {
            "subject_id": subjects,
            "session_id": "1",
            "gm": 800 - 3.0 * age + rng.normal(0, 20, n),
            "ventricles": 10 + 0.4 * age + rng.normal(0, 4, n),
            "noise": rng.normal(0, 1, n),
        }
    )
    return table, features.sample(frac=1.0, random_state=1)  # rows shuffled: pairing must use the keys


def test_ridge_baseline_beats_the_mean_predictor_and_pairs_by_key():
    table, features = _synthetic_features()
    result = fit_ridge_baseline(table, features)
    test = result.predictions[result.predictions.split == "test"]
    assert len(test) == int((table.split == "test").sum()) and result.missing == 0
    mean_mae = float(np.abs(test.age - table.loc[table.split == "train", "age"].mean()).mean())
    ridge_mae = float(np.abs(test.pred - test.age).mean())
    assert ridge_mae < 0.5 * mean_mae
    assert result.n_features == 3
    shown = results_table({"ridge": result.predictions}, float(table.age[table.split == "train"].mean()))
    row = shown[(shown.model == "ridge") & (shown.split == "test")].iloc[0]
    assert row.mae_years == pytest.approx(ridge_mae)
    assert shown[(shown.model == "mean-age") & (shown.split == "test")].mae_years.iloc[0] == pytest.approx(
        mean_mae
    )


def test_ridge_baseline_does_not_extrapolate_a_feature_beyond_its_training_range():
    """A region that is (nearly) empty in every training scan and not in one test scan must not throw that
    scan's prediction far outside the ages the model was fitted on."""
    table, features = _synthetic_features()
    features = features.set_index("subject_id")
    train = table.loc[table.split == "train", "subject_id"]
    features["rare"] = 0.0
    features.loc[train, "rare"] = np.random.default_rng(2).normal(0, 1e-3, len(train))
    victim = table.loc[table.split == "test", "subject_id"].iloc[0]
    features.loc[victim, "rare"] = 5.0  # 5000 training standard deviations out
    result = fit_ridge_baseline(table, features.reset_index())
    pred = result.predictions.set_index("subject_id")["pred"]
    assert table.age.min() - 20 < pred[victim] < table.age.max() + 20


@pytest.mark.parametrize("prefixed", ["table", "features"])
def test_ridge_baseline_joins_bids_prefixed_keys_with_bare_ones(prefixed):
    """``sub-s001``/``ses-1`` on one side and ``s001``/``1`` on the other name the same scan."""
    table, features = _synthetic_features()
    bare = fit_ridge_baseline(table, features).predictions
    side = table if prefixed == "table" else features
    side["subject_id"] = "sub-" + side["subject_id"]
    side["session_id"] = "ses-" + side["session_id"]
    result = fit_ridge_baseline(table, features)
    assert result.missing == 0 and len(result.predictions) == len(table)
    # the predictions keep the table's own spelling of the keys
    assert result.predictions.subject_id.tolist() == table.subject_id.tolist()
    assert result.predictions.session_id.tolist() == table.session_id.tolist()
    np.testing.assert_allclose(result.predictions.pred, bare.pred)


def test_ridge_features_from_tidy_volumes_and_participant_ids():
    tidy = pd.DataFrame(
        {
            "participant_id": ["sub-a", "sub-a", "sub-b", "sub-b"],
            "region": ["hippocampus", "hippocampus", "hippocampus", "hippocampus"],
            "tissue": ["gm", "csf", "gm", "csf"],
            "volume_mm3": [1.0, 2.0, 3.0, 4.0],
        }
    )
    wide = wide_features(tidy)
    assert list(wide.columns) == ["subject_id", "session_id", "hippocampus/csf", "hippocampus/gm"]
    assert wide.set_index("subject_id").loc["b", "hippocampus/gm"] == 3.0
    read_back = wide_features(pd.DataFrame({"subject_id": ["a"], "session_id": [np.nan], "x": [1.0]}))
    assert read_back.session_id.tolist() == ["n/a"]  # the cohort's unknown session, as written to disk
    with pytest.raises(ValueError, match="more than once"):
        wide_features(pd.DataFrame({"subject_id": ["a", "a"], "x": [1.0, 2.0]}))
    table, features = _synthetic_features(10)
    with pytest.raises(ValueError, match="at least 3"):
        fit_ridge_baseline(table.assign(split="test"), features)


# --- starting from pretrained weights -------------------------------------------------------------------------


class PengSFCN(nn.Module):
    """The layer names and order of the public SFCN code (Peng et al. 2021), written out for the test."""

    def __init__(self, channels=SMALL, output_dim: int = 40, pool=(1, 1, 1)) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential()
        c_in = 1
        for i, c_out in enumerate(channels):
            last = i == len(channels) - 1
            layers = [
                nn.Conv3d(c_in, c_out, 1 if last else 3, padding=0 if last else 1),
                nn.BatchNorm3d(c_out),
            ]
            if not last:
                layers.append(nn.MaxPool3d(2, stride=2))
            self.feature_extractor.add_module(f"conv_{i}", nn.Sequential(*layers, nn.ReLU()))
            c_in = c_out
        self.classifier = nn.Sequential()
        self.classifier.add_module("average_pool", nn.AvgPool3d(pool))
        self.classifier.add_module("dropout", nn.Dropout(0.5))
        self.classifier.add_module(f"conv_{len(channels)}", nn.Conv3d(c_in, output_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.classifier(self.feature_extractor(x)).flatten(1), dim=1)


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g) + 0.5 if "running_var" in name else None
                tensor.copy_(values if values is not None else torch.randn(tensor.shape, generator=g) * 0.2)


@pytest.fixture
def peng_file(tmp_path):
    """A random-weight file in the public UK Biobank SFCN format: ``nn.DataParallel`` keys (``module.``)."""
    torch.manual_seed(0)
    net = PengSFCN()
    _randomise(net, 0)
    path = tmp_path / "run_20190719_00_epoch_best_mae.p"
    torch.save(nn.DataParallel(net).state_dict(), path)
    assert next(iter(torch.load(path, weights_only=True))).startswith("module.feature_extractor.conv_0")
    return net.eval(), path


def test_init_loads_the_public_sfcn_format_and_predicts_the_same(peng_file):
    reference, path = peng_file
    model = SFCN(channels=SMALL, age_range=(42, 82), bin_width=1.0)  # 40 one-year bins over 42-82 y
    info = load_init_weights(model, path, model_name="sfcn")
    assert (
        info["skipped_head"] == [] and len(info["loaded"]) == len(model.state_dict()) - 1
    )  # not bin_centers
    x = torch.randn(2, 1, 32, 32, 32)
    model.eval()
    torch.testing.assert_close(model.log_probs(x), reference(x))
    assert model.bin_centers[0] == pytest.approx(42.5) and model.bin_centers[-1] == pytest.approx(81.5)


def test_init_refuses_wrong_shapes_naming_the_file_and_skips_the_head_only_on_request(peng_file):
    _, path = peng_file
    with pytest.raises(
        ValueError, match=r"run_20190719_00_epoch_best_mae\.p.*shape mismatch.*features\.0\.weight"
    ):
        load_init_weights(SFCN(channels=[8, 4, 8, 8, 8, 4], age_range=(42, 82)), path, model_name="sfcn")
    wider = SFCN(channels=SMALL, age_range=(10, 90))  # 80 bins: only the output layer differs
    with pytest.raises(ValueError, match="--init-skip-head"):
        load_init_weights(wider, path, model_name="sfcn")
    head_before = wider.classifier[2].weight.detach().clone()
    info = load_init_weights(wider, path, model_name="sfcn", skip_head_mismatch=True)
    assert info["skipped_head"] == ["classifier.2.bias", "classifier.2.weight"]
    assert torch.equal(wider.classifier[2].weight, head_before)
    loaded = {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True).items()}
    assert torch.equal(wider.features[0].weight, loaded["feature_extractor.conv_0.0.weight"])
    with pytest.raises(ValueError, match="missing key"):
        load_init_weights(nn.Sequential(nn.Linear(2, 2)), path, model_name="small")
    (path.parent / "junk.p").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.p: cannot read"):
        load_init_weights(wider, path.parent / "junk.p", model_name="sfcn")


# --- training: small validation sets, the CLI's baseline and --init --------------------------------------------

TINY = {
    "model": {"name": "small", "options": {"channels": [4, 8]}},
    "train": {"epochs": 3, "batch_size": 8, "num_threads": 1, "patience": 1},
    "eval": {"n_boot": 20},
}


def test_selection_score_ignores_one_outlying_epoch():
    from bap.train import selection_score

    assert selection_score([9.0, 6.0, 41.0], 3) == 9.0  # an unstable epoch is not a setback
    assert selection_score([9.0, 2.0, 8.5], 3) == 8.5  # a lucky epoch is not progress
    assert selection_score([9.0, 2.0], 1) == 2.0


def test_small_validation_set_keeps_the_last_epoch_with_a_warning(tiny_real, tmp_path, caplog):
    from bap.train import train

    cfg = config_from_dict(TINY)
    data = prepare_data(load_cohort(tiny_real).table, cfg.data)
    with caplog.at_level(logging.WARNING, logger="bap.train"):
        result = train(cfg, data, tmp_path, progress=False)
    assert "too noisy to select a model" in caplog.text
    assert result.best_epoch == 3 and result.summary["epochs_run"] == 3  # patience 1 did not stop it
    assert result.summary["selection"] == "last epoch"
    check = result.summary["bias_correction_check"]
    assert check["used"] is False and "subjects < 20" in check["reason"]
    assert result.summary["bias_correction"] is None
    np.testing.assert_array_equal(result.predictions.pred_corrected, result.predictions.pred)


def _features_file(cohort_csv, path) -> None:
    table = pd.read_csv(cohort_csv)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "participant_id": "sub-" + table.subject_id.astype(str),
            "session_id": table.session_id.astype(str),
            "core_volume": (1 + table.age / 20.0) ** 3 + rng.normal(0, 1, len(table)),
            "age": table.age,  # never used as a feature
        }
    )
    frame.to_csv(path, sep="\t", index=False)


def test_cli_reports_the_ridge_baseline_next_to_the_cnn_and_starts_from_init(tiny_real, tmp_path):
    features = tmp_path / "volumes.tsv"
    _features_file(tiny_real, features)
    common = [
        "--real",
        str(tiny_real),
        "--config",
        "demo",
        "--epochs",
        "2",
        "--no-progress",
        *tiny_run_sets(20),
    ]
    out = tmp_path / "run"
    assert bap_train.main([*common, "--out", str(out), "--baseline-features", str(features)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert {"cnn", "ridge", "mean-age"} <= set(results.model)
    test = results[results.split == "test"].set_index("model").mae_years
    assert test["ridge"] < test["mean-age"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["n_features"] == 1 and summary["bias_correction_check"]["used"] is False
    ridge = pd.read_csv(out / "baseline_predictions.csv")
    assert len(ridge) == len(pd.read_csv(tiny_real))
    # Not on an MNI grid and no features: 'auto' skips the baseline, 'ridge' refuses.
    assert bap_train.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert set(pd.read_csv(tmp_path / "plain" / "results.csv").model) == {"cnn", "mean-age"}
    assert bap_train.main([*common, "--out", str(tmp_path / "x"), "--baseline", "ridge"]) == 2
    compare = [*common, "--out", str(tmp_path / "c"), "--compare", "0", "--baseline-features", str(features)]
    assert bap_train.main(compare) == 2  # the baseline is not silently dropped
    # --init from the first run's checkpoint, given as a URL with its hash; a wrong architecture is refused before
    # training.
    from flowlet.data.io import sha256_file

    again, cache = tmp_path / "again", tmp_path / "cache"
    url = [
        *("--init", (out / "best.pt").as_uri(), "--init-sha256", sha256_file(out / "best.pt")),
        *("--init-cache", str(cache)),
    ]
    assert bap_train.main([*common, "--out", str(again), *url, "--epochs", "1"]) == 0
    (cached,) = cache.glob("*/best.pt")
    assert f"init: {cached}" in (again / "config.yaml").read_text()
    wrong = [*common, "--out", str(tmp_path / "w"), "--init", str(out / "best.pt")]
    assert bap_train.main([*wrong, "--set", "model.options.channels=[4, 16]"]) == 2
    assert not (tmp_path / "w" / "best.pt").exists()


# --- the real IXI development subset ---------------------------------------------------------------------------


def _ixi_dev():
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("FLOWLET_IXI_DEV"), repo.parent / "shared/data/ixi-dev"]
    candidates.append(repo.parent.parent / "shared/data/ixi-dev")  # a worktree one level further down
    for folder in candidates:
        if folder and (Path(folder) / "participants.tsv").is_file():
            return Path(folder)
    pytest.skip("../shared/data/ixi-dev (or $FLOWLET_IXI_DEV) is absent")


def test_ridge_on_ixi_dev_reference_volumes_beats_the_mean_predictor():
    folder = _ixi_dev()
    volumes = pd.read_csv(folder / "derivatives/dlmuse/volumes.tsv", sep="\t")
    people = pd.read_csv(folder / "participants.tsv", sep="\t").sort_values("age").reset_index(drop=True)
    people["subject_id"] = people.participant_id.str.removeprefix("sub-")
    people["session_id"] = "n/a"
    errors, mean_errors = [], []
    for fold in range(5):  # age-stratified folds: every 5th subject by age
        table = people.assign(split=np.where(np.arange(len(people)) % 5 == fold, "test", "train"))
        test = fit_ridge_baseline(table, volumes).predictions.query("split == 'test'")
        assert len(test) == int((table.split == "test").sum())
        errors += list(np.abs(test.pred - test.age))
        mean_errors += list(np.abs(test.age - table.loc[table.split == "train", "age"].mean()))
    assert np.mean(errors) < 0.7 * np.mean(mean_errors)  # measured: 7.6 against 14.2 years
