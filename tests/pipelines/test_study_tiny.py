"""The whole study end to end on a tiny configuration: phantoms → split → tiny generator → augmentation → BAP
comparison → evaluation → report; then a rerun reuses everything and a BAP-only change reruns BAP and later."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from checkpoint_helpers import write_random_checkpoint

from flowlet.data.grid import mni_grid
from flowlet.models import UNetConfig
from pipelines.study.cli import main


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> str:
    config = UNetConfig(
        model_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        num_heads=2,
        norm_num_groups=4,
        condition_embedding_dim=16,
        num_res_blocks=1,
    )
    path = tmp_path_factory.mktemp("gen") / "tiny-4mm.pt"
    write_random_checkpoint(
        path,
        config,
        model_input_size=(48, 56, 48),
        save_size=(46, 55, 46),
        affine=mni_grid(4).affine,
        age_range=(8.0, 90.0),
        scale=0.02,
    )
    return str(path)


def _config(tmp_path, checkpoint, *, epochs=2):
    raw = {
        "name": "tiny",
        "cohort": {"phantoms": {"n": 20, "voxel_size": 4, "age_hist": "uniform", "sites": 2, "seed": 3}},
        "test": {"phantoms": {"per_bin": 2, "bin_width": 40.0, "seed": 11}},
        "split": {"fractions": [0.7, 0.3, 0.0], "seed": 0, "age_bin_width": 20.0},
        "generator": {"checkpoint": checkpoint},
        "augment": {"bin_width": 20.0, "synthetic_ratio": 0.5, "steps": 2, "batch_size": 4},
        "bap": {
            "config": "demo",
            "arms": ["real", "oversample", "reweight", "synthetic:0.5"],
            "seeds": 2,
            "overrides": {
                "train": {"epochs": epochs, "patience": 0, "num_threads": 1},
                "eval": {"n_boot": 50},
            },
        },
        "eval": {"registration": "none", "max_images": 6},
        "report": {"title": "tiny study", "montage_ages": [20.0, 70.0]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.filterwarnings("ignore")
def test_tiny_study_runs_reuses_and_reruns_from_bap(tmp_path, tiny_generator, capsys):
    out = tmp_path / "study"
    config = _config(tmp_path, tiny_generator)
    assert main(["--config", str(config), "--out", str(out)]) == 0
    html = (out / "report" / "report.html").read_text()
    for section in (
        "Conclusion",
        "Augmentation plan",
        "Generated brains",
        "Brain-age prediction",
        "Regional anatomical fidelity",
        "Privacy",
        "Reproducibility",
    ):
        assert section in html
    assert html.count("data:image/png;base64,") >= 4
    assert "The regional evaluation" in (out / "report" / "conclusion.md").read_text()
    records = {
        s: json.loads((out / s / "stage.json").read_text()) for s in ("cohort", "augment", "bap", "report")
    }
    split = pd.read_csv(out / "split" / "split.tsv", sep="\t", dtype={"subject_id": str})
    n_train = int((split.split == "train").sum())
    assert records["augment"]["outputs"]["n_synthetic"] == round(0.5 * n_train)
    # the test scans are the external cohort's (2 per 40-year bin), none from the training cohort
    test = split[split.split == "test"]
    assert len(test) >= 4 and test.subject_id.str.startswith("test").all()
    assert set(split.loc[split.split != "test", "split"]) == {"train", "val"}
    bins = pd.read_csv(out / "bap" / "comparison_bins.csv")
    assert set(bins.arm) == {"real", "oversample", "reweight", "synthetic:0.5"} and (bins.n_seeds == 2).all()
    assert "ridge on true region volumes" in html and "sparse" in html
    assert (out / "report" / "reference_ridge_bins.csv").is_file()

    capsys.readouterr()
    assert main(["--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 7

    assert main(["--config", str(_config(tmp_path, tiny_generator, epochs=3)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reused = [line.split()[0] for line in printed.splitlines() if line.strip().endswith("reused")]
    assert reused == ["cohort", "split", "generator", "augment", "eval"]
    assert np.isfinite(json.loads((out / "bap" / "stage.json").read_text())["outputs"]["n_test_scans"])


def test_bad_study_config_is_named(tmp_path, tiny_generator, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"cohort": {"phantoms": {"n": "many"}}}))
    assert main(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "cohort.phantoms.n: expected an integer" in capsys.readouterr().err
