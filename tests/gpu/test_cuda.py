"""CUDA agrees with the CPU: sampling, training steps, the official fixtures, the Haar codec, the memory probe.

Marked ``gpu``: ``pytest -m gpu`` runs them on a machine with CUDA; elsewhere ``tests/conftest.py`` skips them with
the reason. The comparisons live in ``agreement.py`` and are proven on the CPU by ``test_agreement_logic.py``.
"""

from __future__ import annotations

import pytest
import torch
from agreement import (
    TOLERANCE,
    codec_errors,
    fixture_bundle,
    official_fixture_errors,
    sampling_error,
    training_errors,
)

pytestmark = pytest.mark.gpu
CUDA = "cuda"


@pytest.fixture(autouse=True)
def _release_cuda_memory():
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sampling_on_cuda_matches_the_cpu(precision):
    # fp32: cuDNN convolutions run in TF32 by default; bf16: the autocast flowlet-augment uses on CUDA
    assert sampling_error(fixture_bundle(), CUDA, precision) <= TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_on_cuda_match_the_cpu(precision):
    loss_error, update_error = training_errors(CUDA, precision)
    assert loss_error <= TOLERANCE[precision]
    assert update_error <= TOLERANCE[precision]


def test_official_fixtures_match_on_cuda():
    errors = official_fixture_errors(CUDA)
    assert max(errors.values()) <= TOLERANCE["fp32"], errors


def test_haar_codec_on_cuda_matches_the_cpu():
    # the GPU paths (gather + matmul, permute) are exact float32 under the default matmul precision
    assert torch.get_float32_matmul_precision() == "highest"
    errors = codec_errors(CUDA)
    assert max(errors.values()) <= 1e-5, errors


def test_the_memory_probe_choice_fits():
    """Generating at the batch the probe picks stays inside the memory it was given (and does not run out)."""
    from flowlet.batching import auto_batch_size
    from flowlet.checkpoint import FlowLetBundle
    from flowlet.models import ConditionalUNet, UNetConfig
    from flowlet.sampling import SamplingConfig, generate_wavelets, sample_seeds

    config = UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        attention_resolutions=(4,),
        num_heads=4,
        norm_num_groups=8,
        condition_embedding_dim=64,
        dropout=0.0,
    )
    bundle = FlowLetBundle(
        model=ConditionalUNet(config).eval(),
        model_config=config,
        condition_ranges={"Age": (5.9, 95.46)},
        model_input_size=(96, 96, 96),
        save_size=None,
        path_name="rectified",
        num_flow_steps=None,
        source_format="flowlet",
    )
    sampling = SamplingConfig(num_steps=1, device=CUDA)
    free, _ = torch.cuda.mem_get_info()
    budget = 2 * 2**30  # a budget the batch has to respect, whatever the card's size
    batch = auto_batch_size(bundle, sampling, memory_fraction=budget / free, max_batch=256)
    assert 1 < batch < 256, "the probe should be limited by memory here, not by max_batch"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ages = [50.0] * batch
    config = SamplingConfig(num_steps=1, device=CUDA, batch_size=batch)
    out = generate_wavelets(bundle, ages, sample_seeds(0, batch), config, progress=False)
    peak = torch.cuda.max_memory_allocated() - before
    assert out.shape[0] == batch and torch.isfinite(out).all()
    # The probe measures one network call (its input and output included); the midpoint solver also keeps the
    # state and the first slope alive while the second is computed: 2 more latent-sized tensors per sample, plus
    # 5 % for allocator rounding and cuDNN workspaces that change with the batch.
    solver_states = 2 * batch * 8 * 48**3 * 4
    limit = 1.05 * budget + solver_states
    assert peak <= limit, f"batch {batch}: peak {peak / 2**30:.2f} GiB > {limit / 2**30:.2f} GiB"
