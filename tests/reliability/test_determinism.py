"""Same seed, same bytes, on the CPU: phantoms, generation, augmentation, brain-age training and predictions.

Each test also changes the seed and checks that the output changes, so that "identical" is not trivially true.
GPU limits are documented in docs/reliability.md (cuDNN/cuBLAS kernels are not bitwise reproducible by default).
"""

from __future__ import annotations

import json

import torch
from reliability_helpers import snapshot, write_bids, write_table_cohort

from pipelines import augment, bap_predict, bap_train, generate, phantoms, train


def _without_command(files: dict[str, bytes]) -> dict[str, bytes]:
    """``generation.json`` records the command line (which names the output folder); drop only that field."""
    out = dict(files)
    meta = json.loads(out["generation.json"])
    meta.pop("command")
    out["generation.json"] = json.dumps(meta, sort_keys=True).encode()
    return out


def test_phantoms_same_seed_same_bytes(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert phantoms.main(["--n", "1", "--out", str(tmp_path / name), "--voxel-size", "4", "--seed", str(seed),
                              "--no-progress"]) == 0  # fmt: skip
        runs[name] = snapshot(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"]["sub-0001/anat/sub-0001_T1w.nii.gz"] != runs["c"]["sub-0001/anat/sub-0001_T1w.nii.gz"]


def test_generate_same_seed_same_bytes(tmp_path, tiny_checkpoint):
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        argv = ["--checkpoint_path", str(tiny_checkpoint), "--output_dir", str(tmp_path / name),
                "--generation_conditions", "Age=35", "Age=65", "--num_synthetic", "2", "--num_flow_steps", "2",
                "--solver", "heun", "--seed", str(seed), "--device", "cpu", "--no-progress"]  # fmt: skip
        assert generate.main(argv) == 0
        runs[name] = _without_command(snapshot(tmp_path / name))
    assert len(runs["a"]) == 5
    assert runs["a"] == runs["b"]
    volume = "Age_35.00/FlowLet_synthetic_brain_0.nii.gz"
    assert runs["a"][volume] != runs["c"][volume]


def test_augment_same_seed_same_bytes(tmp_path, tiny_checkpoint):
    real = write_bids(tmp_path / "real")
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        argv = ["--real", str(real), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / name),
                "--bin-width", "20", "--steps", "2", "--max-synthetic", "3", "--seed", str(seed), "--device", "cpu",
                "--no-progress"]  # fmt: skip
        assert augment.main(argv) == 0
        runs[name] = snapshot(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"]["participants.tsv"] != runs["c"]["participants.tsv"]  # seeds and drawn ages change


def test_bap_predict_same_checkpoint_same_bytes(tmp_path, bap_checkpoint):
    real = write_bids(tmp_path / "real")
    for name in ("a", "b"):
        argv = [
            "--checkpoint",
            str(bap_checkpoint),
            "--cohort",
            str(real),
            "--out",
            str(tmp_path / f"{name}.csv"),
        ]
        assert bap_predict.main(argv) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 9


def test_bap_train_same_seed_same_model_and_predictions(tmp_path):
    table = write_table_cohort(tmp_path / "cohort")
    weights, predictions = {}, {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        argv = ["--real", str(table), "--config", "demo", "--out", str(out), "--epochs", "1", "--seed", str(seed),
                "--set", "model.options.channels=[4, 8]", "--set", "eval.n_boot=10", "--set",
                "train.num_threads=1", "--no-progress"]  # fmt: skip
        assert bap_train.main(argv) == 0
        weights[name] = torch.load(out / "best.pt", weights_only=True)["state_dict"]
        predictions[name] = (out / "predictions.csv").read_bytes()
    assert predictions["a"] == predictions["b"]
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_flowlet_train_same_seed_same_weights(tmp_path):
    source = write_bids(tmp_path / "cohort")
    weights = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = tmp_path / name
        argv = ["--config", "tiny", "--set", f"data.source={source}", "--run-dir", str(run_dir),
                "--set", "training.max_steps=2", "--set", f"training.seed={seed}"]  # fmt: skip
        assert train.main(argv) == 0
        weights[name] = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
