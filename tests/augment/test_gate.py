"""The quality gate of flowlet-augment: planted bad samples are rejected, resampled from recorded seeds and
recorded with their reason; too many rejections stop the run with a clear error; reruns make the same brains."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pandas as pd
import pytest

import pipelines.augment as augment_cli
import pipelines.augment_gate as augment_gate
from flowlet.augment.gate import Gate, retry_seed, run_gate
from flowlet.data.nifti import load_volume


def test_run_gate_retries_rejected_samples_with_derived_seeds():
    ages = np.array([20.0, 40.0, 60.0, 80.0])
    seeds = np.array([11, 12, 13, 14])
    calls = []

    def generate(indices, batch_seeds):
        calls.append((list(indices), list(batch_seeds)))
        return np.stack([np.full((2, 2, 2), float(s % 1000)) for s in batch_seeds])

    bad_first = {12, 14}  # the first tries of samples 1 and 3 are bad

    def check(volumes, requested):
        return [
            f"planted bad sample at age {a:g}" if int(v[0, 0, 0]) in {s % 1000 for s in bad_first} else None
            for v, a in zip(volumes, requested)
        ]

    accepted, outcomes = run_gate(Gate(check, max_tries=3), generate, [0, 1, 2, 3], ages, seeds, list("abcd"))
    assert calls[0] == ([0, 1, 2, 3], [11, 12, 13, 14])
    assert calls[1] == ([1, 3], [retry_seed(12, 1), retry_seed(14, 1)])
    assert len(calls) == 2 and sorted(accepted) == [0, 1, 2, 3]
    by_id = {o.participant_id: o for o in outcomes}
    assert by_id["b"].accepted_seed == retry_seed(12, 1) != 12
    assert by_id["b"].rejections == [{"try": 0, "seed": 12, "reason": "planted bad sample at age 40"}]
    assert by_id["a"].tries == 1 and by_id["a"].rejections == []
    assert retry_seed(12, 1) == retry_seed(12, 1) != retry_seed(12, 2)


def _args(cohort, ckpt, out, *extra):
    return ["--real", cohort, "--checkpoint", ckpt, "--out", str(out), "--bin-width", "10", "--steps", "2",
            "--batch-size", "4", "--no-progress", "--gate-bap", "model.pt", *extra]  # fmt: skip


@pytest.fixture
def planted_gate(monkeypatch, tmp_path):
    """``--gate-bap`` with a predictor that calls every first try of the planted ages 30 years off."""
    (tmp_path / "model.pt").write_bytes(b"stand-in brain-age model")
    monkeypatch.chdir(tmp_path)
    state = {"planted": set(), "first": {}}

    def fake_age_check(checkpoint, tolerance):
        def check(volumes, ages):
            reasons = []
            for volume, age in zip(volumes, ages):
                key = round(float(age), 4)
                first = key not in state["first"]
                state["first"].setdefault(key, volume.copy())
                off = key in state["planted"] and first
                reasons.append(f"predicted age {age + 30:.1f} for requested {age:.1f}" if off else None)
            return reasons

        return check

    monkeypatch.setattr(augment_gate, "_age_check", fake_age_check)
    return state


def test_gate_rejects_records_and_resamples_planted_samples(
    tiny_cohort, tiny_checkpoint, tmp_path, planted_gate
):
    ungated = tmp_path / "plain"
    plain_args = [
        a for a in _args(tiny_cohort, tiny_checkpoint, ungated) if a not in ("--gate-bap", "model.pt")
    ]
    assert augment_cli.main(plain_args) == 0
    participants = pd.read_csv(ungated / "participants.tsv", sep="\t")
    planted = participants["participant_id"].iloc[[1, 4]].tolist()
    planted_gate["planted"] = {
        round(float(a), 4) for a in participants.set_index("participant_id").loc[planted, "age"]
    }
    out = tmp_path / "gated"
    assert augment_cli.main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    rejections = pd.read_csv(out / "rejections.tsv", sep="\t")
    assert sorted(rejections["participant_id"]) == sorted(planted)
    assert rejections["reason"].str.contains("predicted age").all()
    gate = pd.read_csv(out / "gate.tsv", sep="\t").set_index("participant_id")
    assert (gate["status"] == "accepted").all() and len(gate) == len(participants)
    for pid in planted:
        assert gate.loc[pid, "tries"] == 2
        assert gate.loc[pid, "accepted_seed"] == retry_seed(int(gate.loc[pid, "seed"]), 1)
    # accepted first tries are the brains an ungated run makes; resampled ones differ
    for pid in participants["participant_id"]:
        same = filecmp.cmp(
            ungated / pid / "anat" / f"{pid}_T1w.nii.gz",
            out / pid / "anat" / f"{pid}_T1w.nii.gz",
            shallow=False,
        )
        assert same == (pid not in planted), pid
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Config"]["gate"]["age_tolerance_years"] == 10.0
    assert "CheckpointSource" not in description["GeneratedBy"][0]  # a local file: no hub provenance
    # resume: a deleted resampled brain comes back byte for byte
    victim = out / planted[0] / "anat" / f"{planted[0]}_T1w.nii.gz"
    before = load_volume(victim).data.copy()
    victim.unlink()
    planted_gate["first"].clear()
    assert augment_cli.main(_args(tiny_cohort, tiny_checkpoint, out)) == 0
    assert np.array_equal(load_volume(victim).data, before)
    assert sorted(pd.read_csv(out / "rejections.tsv", sep="\t")["participant_id"]) == sorted(planted)


def test_gate_that_rejects_too_much_stops_with_a_clear_error(
    tiny_cohort, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    (tmp_path / "model.pt").write_bytes(b"stand-in")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        augment_gate,
        "_age_check",
        lambda checkpoint, tolerance: lambda v, a: [f"predicted age 99 for {x:.1f}" for x in a],
    )
    out = tmp_path / "out"
    assert augment_cli.main(_args(tiny_cohort, tiny_checkpoint, out, "--gate-max-tries", "2")) == 2
    message = capsys.readouterr().err
    assert "quality gate rejected" in message and "predicted age 99" in message
    rejections = pd.read_csv(out / "rejections.tsv", sep="\t")
    assert len(rejections) > 0 and set(rejections["try"]) <= {0, 1}
    assert not list(out.glob("sub-*/anat/*_T1w.nii.gz"))  # no rejected brain was written


def test_volume_gate_passes_real_brains_of_their_age_and_rejects_an_old_brain_asked_to_be_young(tmp_path):
    """``--gate-volumes`` end to end on 4 mm phantoms: the trend is fitted on the reference cohort, a z beyond the
    tolerance is a rejection with its reason."""
    import nibabel as nib

    from flowlet.data.cohort import load_cohort
    from flowlet.data.phantom import write_phantom_cohort
    from pipelines.augment_gate import _volume_check

    write_phantom_cohort(tmp_path / "ref", 12, voxel_size=4, seed=3, progress=False)
    table = load_cohort(tmp_path / "ref").table
    first = nib.load(table["path"].iloc[0])
    check = _volume_check(str(tmp_path / "ref"), 3.0, first.affine)
    volumes = np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in table["path"].iloc[:3]])
    ages = table["age"].iloc[:3].to_numpy()
    assert check(volumes, ages) == [None, None, None]
    oldest, youngest = table["age"].idxmax(), table["age"].idxmin()
    old_brain = nib.load(table["path"].loc[oldest]).get_fdata(dtype=np.float32)[None]
    (reason,) = check(old_brain, [table["age"].loc[youngest]])  # an old brain requested as the youngest age
    assert reason is not None and "SD off the reference trend" in reason, reason


def test_volume_gate_skips_a_combined_region_the_atlas_lacks_as_the_reference_does(tmp_path, monkeypatch):
    """A combined region whose members the atlas lacks is skipped when the reference cohort is measured
    (``measure_cohort``); the gate's check of each generated brain skips it by the same rule instead of failing."""
    import dataclasses

    import nibabel as nib

    import pipelines.eval.common as eval_common
    from flowlet.data.cohort import load_cohort
    from flowlet.data.phantom import write_phantom_cohort
    from pipelines.augment_gate import _volume_check

    load_config = eval_common.load_config

    def with_absent_group(*args, **kwargs):
        config = load_config(*args, **kwargs)
        groups = {**config.combined_regions, "amygdala": ["Left_Amygdala_Absent", "Right_Amygdala_Absent"]}
        return dataclasses.replace(config, combined_regions=groups)

    monkeypatch.setattr(eval_common, "load_config", with_absent_group)
    write_phantom_cohort(tmp_path / "ref", 12, voxel_size=4, seed=3, progress=False)
    table = load_cohort(tmp_path / "ref").table
    check = _volume_check(str(tmp_path / "ref"), 3.0, nib.load(table["path"].iloc[0]).affine)
    volumes = np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in table["path"].iloc[:2]])
    assert check(volumes, table["age"].iloc[:2].to_numpy()) == [None, None]
