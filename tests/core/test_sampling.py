"""Sampling: official fixture reproduction, seeding, batching, ablations, guidance, export and affines."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from flowlet.data.grid import mni_grid
from flowlet.data.nifti import load_volume
from flowlet.data.preprocessing import crop_start
from flowlet.export import decode_and_export, resolve_affine, write_volumes
from flowlet.guidance import ModelVelocity, get_ablation
from flowlet.models.config import UNetConfig
from flowlet.models.unet import ConditionalUNet
from flowlet.sampling import (
    SamplingConfig,
    default_time_grid,
    generate_wavelets,
    initial_noise,
    normalize_conditions,
    sample_seed,
    sample_seeds,
)
from flowlet.solvers import SOLVERS, get_solver, uniform_grid

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
RANGES = {"Age": {"min": 5.9, "max": 95.46}}


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _official_model() -> ConditionalUNet:
    try:
        from flowlet.checkpoint import load_bundle
    except ImportError:  # the checkpoint reader is optional for these tests
        load_bundle = None
    if load_bundle is not None:
        return load_bundle(FIXTURES / "model.pth").model
    config = UNetConfig(model_channels=8, num_heads=4, condition_embedding_dim=64, norm_num_groups=4)
    model = ConditionalUNet(config)
    model.load_state_dict(torch.load(FIXTURES / "model.pth", weights_only=True)["model_state_dict"])
    return model.eval()


@pytest.fixture(scope="module")
def official_model():
    return _official_model()


@pytest.fixture(scope="module")
def sample_fixture():
    return torch.load(FIXTURES / "sample.pt", weights_only=True)


def _bundle(model, input_size=(32, 32, 32), save_size=(27, 30, 27)):
    return SimpleNamespace(
        model=model,
        model_config=model.config,
        condition_ranges={"Age": (5.9, 95.46)},
        model_input_size=input_size,
        save_size=save_size,
        affine=None,
    )


class ZeroVelocity(nn.Module):
    """Velocity 0: the sampler returns its initial noise unchanged."""

    def __init__(self, names=("Age",)):
        super().__init__()
        self.config = UNetConfig(
            channel_mult=(1,), condition_names=names, model_channels=8, norm_num_groups=4
        )

    def forward(self, x, t, conditions=None, *, film=True, cross_attention=True):
        return torch.zeros_like(x)


def test_reproduces_official_euler_sample(official_model, sample_fixture):
    s = sample_fixture
    cfg = SamplingConfig(solver="euler", num_steps=4, batch_size=2)
    wave = generate_wavelets(
        _bundle(official_model), s["ages_years_list"], [0, 1], cfg, progress=False, noise=s["x0"]
    )
    torch.testing.assert_close(wave, s["x1_wavelet"], rtol=0, atol=5e-5)
    exported = decode_and_export(wave, s["save_size"])
    np.testing.assert_allclose(exported, s["exported"][:, 0].numpy(), rtol=0, atol=5e-5)


def test_reproduces_official_trajectory(official_model, sample_fixture):
    s = sample_fixture
    conditions = normalize_conditions({"Age": s["ages_years_list"]}, s["condition_ranges"])
    assert torch.equal(conditions["Age"], s["age_norm"])
    with torch.no_grad():
        result = get_solver("euler").solve(
            ModelVelocity(official_model),
            s["x0"],
            uniform_grid(4),
            return_trajectory=True,
            conditions=conditions,
        )
    torch.testing.assert_close(result.trajectory, s["trajectory"], rtol=0, atol=5e-5)


def test_decode_and_export_is_the_official_procedure(sample_fixture):
    s = sample_fixture
    assert crop_start((32, 32, 32), (27, 30, 27)) == tuple(s["crop_start"]) == (2, 1, 2)
    exported = decode_and_export(s["x1_wavelet"], (27, 30, 27))
    assert exported.dtype == np.float32 and exported.shape == (2, 27, 30, 27)
    np.testing.assert_allclose(exported, s["exported"][:, 0].numpy(), rtol=0, atol=1e-6)
    assert exported.min() >= 0 and exported.max() <= 1
    raw = decode_and_export(s["x1_wavelet"], (32, 32, 32), clamp=False)
    np.testing.assert_allclose(raw, (s["image_unclamped"][:, 0].numpy() + 1) / 2, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="must not exceed"):
        decode_and_export(s["x1_wavelet"], (34, 30, 27))


def test_batch_size_does_not_change_samples(official_model):
    bundle = _bundle(official_model, input_size=(16, 16, 16), save_size=(16, 16, 16))
    seeds = sample_seeds(7, 3)
    ages = [20.0, 50.0, 80.0]
    one = generate_wavelets(
        bundle, ages, seeds, SamplingConfig(solver="euler", num_steps=2, batch_size=1), progress=False
    )
    three = generate_wavelets(
        bundle, ages, seeds, SamplingConfig(solver="euler", num_steps=2, batch_size=3), progress=False
    )
    torch.testing.assert_close(one, three, rtol=0, atol=1e-5)
    # Any subset regenerates alone.
    alone = generate_wavelets(
        bundle, ages[1:2], seeds[1:2], SamplingConfig(solver="euler", num_steps=2), progress=False
    )
    torch.testing.assert_close(alone, one[1:2], rtol=0, atol=1e-5)


def test_ablations_change_the_output(official_model):
    bundle = _bundle(official_model, input_size=(16, 16, 16), save_size=(16, 16, 16))
    seeds = sample_seeds(3, 2)
    out = {
        name: generate_wavelets(
            bundle,
            [30.0, 80.0],
            seeds,
            SamplingConfig(solver="euler", num_steps=1, ablation=name),
            progress=False,
        )
        for name in ("baseline", "film_only", "crossattn_only", "unconditional")
    }
    for a in out:
        for b in out:
            if a < b:
                assert (out[a] - out[b]).abs().max() > 1e-3, (a, b)
    # Without FiLM and cross-attention the age cannot matter: both samples equal their age-swapped versions.
    swapped = generate_wavelets(
        bundle,
        [80.0, 30.0],
        seeds,
        SamplingConfig(solver="euler", num_steps=1, ablation="unconditional"),
        progress=False,
    )
    torch.testing.assert_close(swapped, out["unconditional"], rtol=0, atol=1e-6)


def test_seeds_pair_noise_across_ablations_and_subsets():
    bundle = _bundle(ZeroVelocity(), input_size=(4, 6, 8), save_size=(4, 6, 8))
    seeds = sample_seeds(42, 4)
    assert seeds == [sample_seed(42, i) for i in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(42, 0) != sample_seed(43, 0)
    base = generate_wavelets(bundle, [40.0] * 4, seeds, SamplingConfig(batch_size=3), progress=False)
    assert base.shape == (4, 8, 2, 3, 4)
    torch.testing.assert_close(base, initial_noise(seeds, (8, 2, 3, 4)), rtol=0, atol=0)
    film = generate_wavelets(
        bundle, [40.0] * 4, seeds, SamplingConfig(batch_size=2, ablation="film_only"), progress=False
    )
    assert torch.equal(base, film)
    part = generate_wavelets(bundle, [40.0], seeds[2:3], SamplingConfig(), progress=False)
    assert torch.equal(part[0], base[2])


class TwoLevelVelocity(nn.Module):
    """Returns a when the condition vector is absent and b otherwise, to check the guidance formula."""

    config = None

    def forward(self, x, t, conditions=None, *, film=True, cross_attention=True):
        return torch.full_like(x, 1.0 if conditions is None else 3.0)


@pytest.mark.parametrize(("scale", "expected"), [(1.0, 3.0), (0.0, 1.0), (2.5, 1.0 + 2.5 * 2.0)])
def test_classifier_free_guidance(scale, expected):
    velocity = ModelVelocity(TwoLevelVelocity(), guidance_scale=scale, autocast_dtype=torch.bfloat16)
    v = velocity(torch.zeros(2, 3), torch.zeros(2), conditions={"Age": torch.zeros(2, 1)})
    assert torch.all(v == expected) and v.dtype == torch.float32  # CPU: autocast is not applied
    assert velocity.nfe == (1 if scale == 1.0 else 2)


def test_ablation_flags():
    assert (get_ablation("film_only").film, get_ablation("film_only").cross_attention) == (True, False)
    assert (get_ablation("crossattn_only").film, get_ablation("crossattn_only").cross_attention) == (
        False,
        True,
    )
    assert (get_ablation("unconditional").film, get_ablation("unconditional").cross_attention) == (
        False,
        False,
    )
    with pytest.raises(ValueError, match="unknown ablation 'x'"):
        get_ablation("x")


def test_normalize_conditions(caplog):
    out = normalize_conditions({"Age": [5.9, 50.68, 95.46]}, {"Age": (5.9, 95.46)})
    assert out["Age"].shape == (3, 1) and out["Age"].dtype == torch.float32
    np.testing.assert_allclose(out["Age"].flatten().numpy(), [0.0, 0.5, 1.0], atol=1e-7)
    with caplog.at_level(logging.WARNING, logger="flowlet.sampling"):
        clipped = normalize_conditions({"Age": [0.0, 120.0]}, RANGES)
    assert clipped["Age"].flatten().tolist() == [0.0, 1.0]
    assert "outside the training range" in caplog.text
    assert normalize_conditions({"Age": [3.0]}, {"Age": (10.0, 10.0)})["Age"].item() == 0.5
    with pytest.raises(ValueError, match="no training range"):
        normalize_conditions({"Sex": [1.0]}, RANGES)


def test_missing_model_condition_gets_mid_range(caplog):
    seen = {}

    class Spy(ZeroVelocity):
        def forward(self, x, t, conditions=None, *, film=True, cross_attention=True):
            seen.update(conditions)
            return torch.zeros_like(x)

    bundle = _bundle(Spy(names=("Age", "Sex")), input_size=(2, 2, 2), save_size=(2, 2, 2))
    bundle.condition_ranges = {"Age": (0.0, 100.0), "Sex": (0.0, 1.0)}
    with caplog.at_level(logging.WARNING, logger="flowlet.sampling"):
        generate_wavelets(
            bundle, {"Age": [25.0], "Site": [3.0]}, [0], SamplingConfig(num_steps=1), progress=False
        )
    assert seen["Age"].item() == pytest.approx(0.25) and seen["Sex"].item() == 0.5
    assert "Site" in caplog.text and "'Sex'" in caplog.text


def test_sampling_config_validation():
    with pytest.raises(ValueError, match=r"SamplingConfig\.solver"):
        SamplingConfig(solver="dopri")
    with pytest.raises(ValueError, match=r"SamplingConfig\.ablation"):
        SamplingConfig(ablation="both")
    with pytest.raises(ValueError, match="batch_size"):
        SamplingConfig(batch_size=0)


def test_affines(tmp_path):
    assert np.array_equal(resolve_affine("mni", (91, 109, 91)), mni_grid(2).affine)
    assert abs(np.linalg.det(mni_grid(2).affine[:3, :3])) == pytest.approx(8.0)
    assert np.array_equal(resolve_affine("mni", (182, 218, 182)), mni_grid(1).affine)
    assert np.array_equal(resolve_affine("identity", (27, 30, 27)), np.eye(4))
    own = np.diag([3.0, 3.0, 3.0, 1.0])
    assert np.array_equal(resolve_affine("mni", (27, 30, 27), own), own)
    with pytest.raises(ValueError, match="--affine identity"):
        resolve_affine("mni", (27, 30, 27))
    with pytest.raises(ValueError, match="unknown affine"):
        resolve_affine("lps", (91, 109, 91))
    vols = np.random.default_rng(0).random((2, 4, 5, 6), dtype=np.float32)
    paths = write_volumes(vols, [tmp_path / "a.nii.gz", tmp_path / "b" / "c.nii.gz"], mni_grid(2).affine)
    back = load_volume(paths[1])
    assert np.array_equal(back.data, vols[1]) and np.array_equal(back.affine, mni_grid(2).affine)
    assert back.voxel_volume_mm3 == pytest.approx(8.0)


def test_batch_from_probe_fits_the_free_memory():
    from flowlet.batching import batch_from_probe

    gib = 2**30
    # 2 GiB fixed + 1 GiB per sample; 80 % of 40 GiB = 32 GiB -> 30 samples
    assert batch_from_probe(3 * gib, 4 * gib, 40 * gib) == 30
    assert batch_from_probe(3 * gib, 4 * gib, 40 * gib, max_batch=8) == 8
    assert batch_from_probe(3 * gib, 4 * gib, 2 * gib) == 1  # never below 1
    assert batch_from_probe(3 * gib, 3 * gib, 40 * gib) == 32  # no measurable growth: the cap


def test_auto_batch_size_off_cuda_is_the_cpu_default():
    from flowlet.batching import CPU_BATCH_SIZE, auto_batch_size

    assert auto_batch_size(object(), SamplingConfig(device="cpu")) == CPU_BATCH_SIZE


def test_batch_size_argument():
    import argparse

    from pipelines.arguments import batch_size_arg

    assert batch_size_arg("auto") == "auto" and batch_size_arg("3") == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or 'auto'"):
            batch_size_arg(bad)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_the_default_time_grid_is_uniform_for_euler_and_cosine_otherwise(solver):
    expected = "uniform" if solver == "euler" else "cosine"
    assert default_time_grid(solver) == expected
    assert SamplingConfig(solver=solver).time_grid == expected
    assert SamplingConfig(solver=solver, time_grid="shifted").time_grid == "shifted"
