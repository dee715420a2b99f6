import json

import pandas as pd
import pytest

from pipelines.eval.cli import main


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "flowlet-eval regions" in capsys.readouterr().out


def _custom_atlas(phantoms_4mm) -> list[str]:
    """The first subject's warped label map and the cohort's dseg.tsv, used as a custom atlas."""
    first = sorted(phantoms_4mm.glob("sub-*/anat/*_dseg.nii.gz"))[0]
    return ["--atlas-image", str(first), "--atlas-table", str(phantoms_4mm / "dseg.tsv")]


def test_every_subcommand_runs_on_tiny_data(phantoms_4mm, tmp_path):
    """Fast smoke test: custom atlas, no registration, two images per set."""
    args = ["--voxel-size", "4", "--no-progress", "--registration", "none", *_custom_atlas(phantoms_4mm)]
    assert (
        main(["regions", "--cohort", str(phantoms_4mm), "--out", str(tmp_path / "r"), "--limit", "2", *args])
        == 0
    )
    volumes = pd.read_csv(tmp_path / "r" / "volumes.tsv", sep="\t")
    assert volumes["image_id"].nunique() == 2 and "lateral-ventricles" in set(volumes["region"])
    cohort = str(phantoms_4mm)
    assert (
        main(
            [
                "quality",
                "--real",
                cohort,
                "--synthetic",
                cohort,
                "--out",
                str(tmp_path / "q"),
                "--limit",
                "2",
                *args,
            ]
        )
        == 0
    )
    rows = pd.read_csv(tmp_path / "q" / "roi_pairs.csv")
    assert rows["dice"].dropna().eq(1.0).all()  # a set compared with itself
    assert (
        main(
            [
                "privacy",
                "--train",
                cohort,
                "--holdout",
                cohort,
                "--synthetic",
                cohort,
                "--out",
                str(tmp_path / "p"),
                "--limit",
                "2",
                "--voxel-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(["tables", "--inputs", str(tmp_path / "q"), str(tmp_path / "p"), "--out", str(tmp_path / "t")])
        == 0
    )
    assert (tmp_path / "t" / "roi_global.tex").is_file()


@pytest.mark.slow
def test_regions_quality_privacy_tables_end_to_end(phantoms_4mm, tmp_path):
    regions = tmp_path / "regions"
    args = ["--voxel-size", "4", "--no-progress"]
    assert main(["regions", "--cohort", str(phantoms_4mm), "--out", str(regions), "--limit", "3", *args]) == 0
    volumes = pd.read_csv(regions / "volumes.tsv", sep="\t")
    assert volumes["image_id"].nunique() == 3
    assert {"lateral-ventricles", "whole-brain"} <= set(volumes["region"])
    for name in (
        "region_volumes.csv",
        "region_volumes.md",
        "region_volumes.tex",
        "volume_vs_age.png",
        "config.yaml",
        "truth_agreement.csv",
    ):
        assert (regions / name).is_file(), name
    summary = json.loads((regions / "summary.json").read_text())
    assert summary["n_images"] == 3 and "lateral-ventricles" in summary["truth"]

    table = pd.read_csv(phantoms_4mm / "participants.tsv", sep="\t")
    anat = [phantoms_4mm / p / "anat" / f"{p}_T1w.nii.gz" for p in table["participant_id"]]
    cohort = pd.DataFrame(
        {"subject_id": table["participant_id"], "path": [str(a) for a in anat], "age": table["age"]}
    )
    cohort.iloc[:3].to_csv(tmp_path / "real.tsv", sep="\t", index=False)
    cohort.iloc[6:9].to_csv(tmp_path / "synth.tsv", sep="\t", index=False)
    quality = tmp_path / "quality"
    assert (
        main(
            [
                "quality",
                "--real",
                str(tmp_path / "real.tsv"),
                "--synthetic",
                str(tmp_path / "synth.tsv"),
                "--out",
                str(quality),
                "--registration",
                "none",
                *args,
            ]
        )
        == 0
    )
    rows = pd.read_csv(quality / "roi_pairs.csv")
    assert rows["pair"].nunique() == 3 and rows["dice"].between(0, 1).all()
    assert (quality / "roi_global.tex").is_file() and (quality / "image_metrics.md").is_file()

    privacy = tmp_path / "privacy"
    assert (
        main(
            [
                "privacy",
                "--train",
                str(tmp_path / "real.tsv"),
                "--holdout",
                str(tmp_path / "synth.tsv"),
                "--synthetic",
                str(tmp_path / "real.tsv"),
                "--out",
                str(privacy),
                *args,
            ]
        )
        == 0
    )
    assert json.loads((privacy / "summary.json").read_text())["flag_rate"] == 1.0  # exact copies of training

    out = tmp_path / "tables"
    assert (
        main(
            ["tables", "--inputs", str(quality), str(privacy), "--names", "model", "audit", "--out", str(out)]
        )
        == 0
    )
    assert "model" in (out / "roi_global.md").read_text()
    assert (out / "privacy.csv").is_file()


def test_bad_config_key_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("atlas:\n  nmae: aal\n")
    assert (
        main(["regions", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    )
    err = capsys.readouterr().err
    assert "nmae" in err and err.startswith("flowlet-eval: error:")


def test_regions_real_versus_synthetic_writes_the_plausibility_table(phantoms_4mm, tmp_path):
    """``regions --real R --synthetic S``: the issue's command; a set against itself flags nothing."""
    args = ["--voxel-size", "4", "--no-progress", "--registration", "none", *_custom_atlas(phantoms_4mm)]
    cohort = str(phantoms_4mm)
    out = tmp_path / "pair"
    code = main(
        ["regions", "--real", cohort, "--synthetic", cohort, "--out", str(out), "--limit", "6", *args]
    )
    assert code == 0
    table = pd.read_csv(out / "plausibility.csv")
    assert {"region", "tissue", "flagged"} <= set(table.columns)
    assert "lateral-ventricles" in set(table["region"])
    assert not table["flagged"].any()
    assert json.loads((out / "summary.json").read_text())["n_synthetic"] == 6
    assert main(["regions", "--real", cohort, "--out", str(tmp_path / "x"), *args]) == 2
    assert not (tmp_path / "x").exists()  # refused before the output folder is made


def test_regions_reports_tissue_dice_against_true_tissue_maps(tmp_path):
    from flowlet.data.phantom.cohort import write_phantom_cohort

    cohort = write_phantom_cohort(tmp_path / "ph", 2, voxel_size=4, seed=3, progress=False, tissue_maps=True)
    assert len(list(cohort.glob("sub-*/anat/*_label-GM_probseg.nii.gz"))) == 2
    out = tmp_path / "r"
    args = ["regions", "--cohort", str(cohort), "--out", str(out), "--voxel-size", "4", "--no-progress"]
    assert main([*args, "--registration", "none"]) == 0
    dice = pd.read_csv(out / "tissue_dice_per_image.tsv", sep="\t")
    assert len(dice) == 2
    assert (dice[["dice_gm", "dice_wm"]] > 0.8).all().all()  # 4 mm, no registration: CSF is the weak class
    assert (dice["dice_csf"] > 0.3).all()
    assert json.loads((out / "summary.json").read_text())["tissue_dice"]["dice_wm"] > 0.8


def test_tissue_dice_is_one_for_identical_maps_and_zero_for_swapped_classes():
    import numpy as np

    from analysis.validation import tissue_dice

    rng = np.random.default_rng(0)
    raw = rng.dirichlet([1, 1, 1, 1], size=(6, 6, 6)).astype(np.float32)
    maps = {"csf": raw[..., 1], "gm": raw[..., 2], "wm": raw[..., 3]}
    same = tissue_dice(maps, maps)
    assert same["dice_gm"] == 1.0 and same["dice_csf"] == 1.0
    hard = {
        t: (np.argmax(raw, axis=-1) == k).astype(np.float32) for k, t in enumerate(("csf", "gm", "wm"), 1)
    }
    swapped = tissue_dice(hard, {"csf": hard["gm"], "gm": hard["csf"], "wm": hard["wm"]})
    assert swapped["dice_csf"] == 0.0 and swapped["dice_gm"] == 0.0 and swapped["dice_wm"] == 1.0


def test_regions_with_two_jobs_equals_one_job(phantoms_4mm, tmp_path):
    args = ["--voxel-size", "4", "--no-progress", "--registration", "none", *_custom_atlas(phantoms_4mm)]
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        code = main(["regions", "--cohort", str(phantoms_4mm), "--out", str(out), "--limit", "3", *args,
                     "--jobs", str(jobs)])  # fmt: skip
        assert code == 0
    one = pd.read_csv(tmp_path / "j1" / "volumes.tsv", sep="\t")
    two = pd.read_csv(tmp_path / "j2" / "volumes.tsv", sep="\t")
    pd.testing.assert_frame_equal(one, two)
