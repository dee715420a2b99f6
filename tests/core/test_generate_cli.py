"""End-to-end ``flowlet-generate`` runs on the tiny official fixture model, on the CPU, in tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipelines.generate import condition_folder, main, parse_condition_items

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
CKPT = str(FIXTURES / "model.pth")


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _run(out: Path, *extra: str) -> int:
    return main(
        ["--checkpoint_path", CKPT, "--output_dir", str(out), "--device", "cpu", "--no-progress", *extra]
    )


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_official_flags_give_the_official_layout_and_data(tmp_path):
    from flowlet.checkpoint import load_bundle
    from flowlet.export import decode_and_export
    from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds

    out = tmp_path / "out"
    code = _run(out, "--generation_conditions", "Age=30", "Age=70 Unknown=1", "--num_synthetic", "2",
                "--num_flow_steps", "1", "--seed", "5", "--affine", "identity", "--model_input_size", "32", "32", "32")  # fmt: skip
    assert code == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert files == [f"Age_{a}.00/FlowLet_synthetic_brain_{i}.nii.gz" for a in (30, 70) for i in (0, 1)]
    data, affine = _load(out / "Age_30.00" / "FlowLet_synthetic_brain_1.nii.gz")
    assert data.dtype == np.float32 and data.shape == (27, 30, 27)  # save_size from config.json
    assert np.array_equal(affine, np.eye(4))
    assert data.min() >= 0.0 and data.max() <= 1.0
    # The file holds exactly the library's output for the same seeds (official Euler chosen automatically).
    bundle = load_bundle(CKPT)
    wave = generate_wavelets(
        bundle, [30.0, 30.0], sample_seeds(5, 2), SamplingConfig(solver="euler", num_steps=1), progress=False
    )
    assert np.array_equal(data, decode_and_export(wave, (27, 30, 27))[1])
    meta = json.loads((out / "generation.json").read_text())
    assert meta["checkpoint_sha256"] == hashlib.sha256(Path(CKPT).read_bytes()).hexdigest()
    assert meta["checkpoint_source"] is None  # a local file: no hub provenance
    assert meta["sampling"]["solver"] == "euler" and meta["sampling"]["num_steps"] == 1
    assert [r["seed"] for r in meta["outputs"]] == sample_seeds(5, 2) * 2
    assert meta["outputs"][2]["conditions"] == {"Age": 70.0}
    # Paired noise across conditions: the same seed drives sample 0 in both folders, but age changes the result.
    other, _ = _load(out / "Age_70.00" / "FlowLet_synthetic_brain_1.nii.gz")
    assert np.abs(other - data).max() > 1e-3


def test_batch_size_invariance(tmp_path):
    common = ["--generation_conditions", "Age=50", "--num_synthetic", "3", "--num_flow_steps", "1",
              "--affine", "identity", "--save_size", "32", "32", "32"]  # fmt: skip
    assert _run(tmp_path / "b1", *common, "--batch_size", "1") == 0
    assert _run(tmp_path / "b3", *common, "--batch_size", "3") == 0
    for i in range(3):
        a, _ = _load(tmp_path / "b1" / "Age_50.00" / f"FlowLet_synthetic_brain_{i}.nii.gz")
        b, _ = _load(tmp_path / "b3" / "Age_50.00" / f"FlowLet_synthetic_brain_{i}.nii.gz")
        assert a.shape == (32, 32, 32)
        # CPU convolutions may reduce in a batch-size dependent order: equal up to float32 rounding.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_linspace_layout_and_paired_ablations(tmp_path):
    out = tmp_path / "lin"
    code = _run(out, "--ages-linspace", "20", "80", "3", "--ablation", "baseline", "unconditional", "--solver",
                "euler", "--num_flow_steps", "1", "--affine", "identity", "--filename_prefix", "Abl")  # fmt: skip
    assert code == 0
    meta = json.loads((out / "generation.json").read_text())
    assert meta["sampling"]["solver"] == "euler" and meta["sampling"]["num_steps"] == 1
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    expected = [
        f"Abl_{s}_AgeLin_20.0-80.0_N3_Steps1/Abl_{s}_AGE_{a}_sample_{i}.nii.gz"
        for s in ("Baseline", "Unconditional")
        for i, a in enumerate(("20.00", "50.00", "80.00"))
    ]
    assert names == sorted(expected)
    seeds = {(r["ablation"], r["sample_index"]): r["seed"] for r in meta["outputs"]}
    assert all(seeds[("baseline", i)] == seeds[("unconditional", i)] for i in range(3))


def test_mni_affine_default_needs_a_known_shape(tmp_path, capsys):
    assert _run(tmp_path / "x", "--generation_conditions", "Age=50", "--num_synthetic", "1") == 2
    assert "--affine identity" in capsys.readouterr().err
    assert not (tmp_path / "x" / "generation.json").exists()


def test_bad_inputs(tmp_path, capsys):
    assert _run(tmp_path / "y", "--generation_conditions", "Age:50") == 2
    with pytest.raises(SystemExit):
        main(["--checkpoint_path", CKPT, "--output_dir", str(tmp_path)])  # neither conditions nor linspace
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "flowlet-generate --checkpoint_path" in capsys.readouterr().out


def test_condition_parsing_and_folders():
    groups = parse_condition_items(["Age=45 Sex=1", "Age=75.5"])
    assert groups == [{"Age": 45.0, "Sex": 1.0}, {"Age": 75.5}]
    assert condition_folder({"Sex": 1.0, "Age": 45.0}) == "Age_45.00_Sex_1.00"
    with pytest.raises(ValueError, match="KEY=NUMBER"):
        parse_condition_items(["Age=old"])


@pytest.mark.parametrize(
    ("source", "steps_flag", "solver_flag", "expected"),
    [
        ("official", 7, None, ("euler", 7, "uniform")),
        ("official", None, None, ("midpoint", 10, "cosine")),
        ("official", None, "euler", ("euler", 4, "uniform")),
        ("flowlet", 7, None, ("midpoint", 7, "cosine")),
        ("flowlet", None, None, ("midpoint", 10, "cosine")),
        ("flowlet", None, "euler", ("euler", 100, "uniform")),
        ("flowlet", None, "rk4", ("rk4", 10, "cosine")),
    ],
)
def test_solver_and_step_defaults(source, steps_flag, solver_flag, expected):
    from types import SimpleNamespace

    from pipelines.generate import build_parser, resolve_sampling

    argv = [
        "--checkpoint_path",
        "x",
        "--output_dir",
        "y",
        "--generation_conditions",
        "Age=1",
        "--device",
        "cpu",
    ]
    argv += [] if steps_flag is None else ["--num_flow_steps", str(steps_flag)]
    argv += [] if solver_flag is None else ["--solver", solver_flag]
    bundle = SimpleNamespace(source_format=source, num_flow_steps=4 if source == "official" else None)
    config = resolve_sampling(build_parser().parse_args(argv), bundle)
    assert (config.solver, config.num_steps, config.time_grid) == expected
