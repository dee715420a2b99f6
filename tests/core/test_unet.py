"""ConditionalUNet: official topology on the meta device, flags, switches and training-mode features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from flowlet.models import ConditionalUNet, UNetConfig
from flowlet.models.state_dict import infer_architecture
from flowlet.models.unet import SpatialTransformer, _xformers_attention, timestep_embedding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP contention makes tiny ops 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = UNetConfig(
    model_channels=8,
    num_heads=2,
    norm_num_groups=4,
    condition_embedding_dim=16,
    channel_mult=(1, 2),
    attention_resolutions=(1, 2),
)


def _manifest(name: str) -> list[tuple[str, list[int]]]:
    rows = (FIXTURES / f"manifest-rfm-{name}.tsv").read_text().splitlines()
    return [(key, json.loads(shape)) for key, shape in (row.split("\t") for row in rows)]


def _randomised(config: UNetConfig, seed: int = 0) -> ConditionalUNet:
    """A net whose zero-initialised layers are overwritten, so that every pathway reaches the output."""
    torch.manual_seed(seed)
    net = ConditionalUNet(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) / math.sqrt(fan_in) if p.dim() > 1 else 0.1 * torch.randn_like(p))
    return net


def _inputs(batch: int = 2, size: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, size, size, size, generator=g)
    return x, torch.rand(batch, generator=g), {"Age": torch.rand(batch, 1, generator=g)}


@pytest.mark.parametrize(
    ("name", "config", "count"),
    [
        ("base", UNetConfig(), 356_366_088),
        ("large", UNetConfig(channel_mult=(1, 2, 4, 8), attention_resolutions=(4, 8)), 1_001_968_392),
    ],
)
def test_full_size_topology_matches_released_manifest(name, config, count):
    with torch.device("meta"):
        net = ConditionalUNet(config)
    assert sum(p.numel() for p in net.parameters()) == count
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == _manifest(name)
    assert infer_architecture(net.state_dict())["attention_resolutions"] == tuple(
        sorted(set(config.attention_resolutions) & {1, 2, 4, 8})
    )


def test_untrained_net_outputs_exact_zero_and_keeps_shape():
    x, t, cond = _inputs()
    v = ConditionalUNet(TINY).eval()(x, t, cond)
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0


def test_time_sinusoid_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(freqs), torch.sin(freqs)]))


def test_spatial_size_not_divisible_raises():
    net = ConditionalUNet(UNetConfig(**{**TINY.to_dict(), "channel_mult": [1, 1, 2]}))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 8, 8, 6, 8), torch.zeros(1))


def test_unknown_condition_name_raises():
    x, t, _ = _inputs()
    with pytest.raises(ValueError, match="unknown conditions"):
        ConditionalUNet(TINY)(x, t, {"age": torch.zeros(2, 1)})


def test_flags_are_independent():
    net = _randomised(TINY)
    x, t, _ = _inputs()
    young, old = {"Age": torch.full((2, 1), 0.1)}, {"Age": torch.full((2, 1), 0.9)}
    with torch.no_grad():
        for kwargs in ({}, {"film": False}, {"cross_attention": False}):
            assert (net(x, t, young, **kwargs) - net(x, t, old, **kwargs)).abs().max() > 1e-3, kwargs
        both_off = [net(x, t, c, film=False, cross_attention=False) for c in (young, old, None)]
        assert torch.equal(both_off[0], both_off[1]) and torch.equal(both_off[0], both_off[2])
        # the official coupling bug would make this equal to the both-off output
        assert (net(x, t, young, cross_attention=False) - both_off[0]).abs().max() > 1e-3
        assert torch.equal(net(x, t, None), net(x, t, {}))


def test_condition_film_false_is_film_off():
    net = _randomised(TINY)
    off = ConditionalUNet(UNetConfig(**{**TINY.to_dict(), "condition_film": False})).eval()
    off.load_state_dict(net.state_dict())
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(off(x, t, cond), net(x, t, cond, film=False))


def test_time_scale_switch_changes_output_not_keys():
    base = _randomised(TINY)
    scaled = ConditionalUNet(UNetConfig(**{**TINY.to_dict(), "time_scale": 1000.0})).eval()
    scaled.load_state_dict(base.state_dict(), strict=True)
    x, t, cond = _inputs()
    with torch.no_grad():
        assert (scaled(x, t, cond) - base(x, t, cond)).abs().max() > 1e-2
        assert torch.allclose(scaled.embed_time(t / 1000.0), base.embed_time(t), atol=1e-6)


def test_skip_kernel_size_one_shrinks_skip_convs():
    def skip_shapes(cfg):
        with torch.device("meta"):
            sd = ConditionalUNet(cfg).state_dict()
        return {k: tuple(v.shape) for k, v in sd.items() if "skip_connection.weight" in k}

    three, one = skip_shapes(TINY), skip_shapes(UNetConfig(**{**TINY.to_dict(), "skip_kernel_size": 1}))
    assert three.keys() == one.keys() and three
    assert all(s[-3:] == (3, 3, 3) for s in three.values()) and all(s[-3:] == (1, 1, 1) for s in one.values())
    with torch.device("meta"):
        base = ConditionalUNet(UNetConfig()).state_dict()
        base_one = ConditionalUNet(UNetConfig(skip_kernel_size=1))
    skip_weights = sum(v.numel() for k, v in base.items() if k.endswith("skip_connection.weight"))
    assert 86e6 < skip_weights < 88e6  # spec §2.2: the 3³ skips hold 87.2 M parameters in base
    assert 356_366_088 - sum(p.numel() for p in base_one.parameters()) == skip_weights * 26 // 27


def test_context_tokens_add_keys_and_make_cross_attention_spatial():
    config = UNetConfig(**{**TINY.to_dict(), "num_context_tokens": 4})
    with torch.device("meta"):
        keys_k = list(ConditionalUNet(config).state_dict())
        keys_1 = list(ConditionalUNet(TINY).state_dict())
    assert set(keys_k) - set(keys_1) == {
        "context_tokens.proj.weight",
        "context_tokens.proj.bias",
        "context_tokens.position",
    }
    assert [k for k in keys_k if k in keys_1] == keys_1
    net = _randomised(config)
    x, t, cond = _inputs()
    with torch.no_grad():
        assert (net(x, t, cond) - _randomised(TINY)(x, t, cond)).abs().max() > 1e-3


@pytest.mark.parametrize(("tokens", "spatial"), [(1, False), (4, True)])
def test_cross_attention_term_is_constant_only_for_one_token(tokens, spatial):
    torch.manual_seed(0)
    block = SpatialTransformer(16, TINY, context_dim=16).eval()
    with torch.no_grad():
        block.proj_out.weight.copy_(torch.eye(16)[..., None, None, None])
        x, context = torch.randn(2, 16, 3, 3, 3), torch.randn(2, tokens, 16)
        term = block(x, context) - block(x, None)  # the cross-attention contribution at each voxel
    spread = term.flatten(2).std(dim=2).max().item()
    assert (spread > 1e-2) if spatial else (spread < 1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    plain = _randomised(TINY)
    ckpt = ConditionalUNet(UNetConfig(**{**TINY.to_dict(), "use_checkpoint": True}))
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond = _inputs()
    grads = []
    for net in (plain.train(), ckpt.train()):
        net.zero_grad()
        net(x, t, cond).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.skipif(_xformers_attention() is not None, reason="xformers installed")
def test_requesting_missing_xformers_fails_clearly():
    with pytest.raises(ImportError, match="xformers is not installed"):
        ConditionalUNet(UNetConfig(**{**TINY.to_dict(), "attention_backend": "xformers"}))


def test_config_round_trip_and_validation():
    assert UNetConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="unknown UNetConfig fields \\['bogus'\\]"):
        UNetConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="attention_backend"):
        UNetConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="skip_kernel_size"):
        UNetConfig(skip_kernel_size=5)


@pytest.mark.skipif(_xformers_attention() is not None, reason="xformers installed")
def test_auto_attention_without_xformers_is_settled_as_sdpa_at_construction(monkeypatch):
    from flowlet.models import unet

    block = SpatialTransformer(
        16, UNetConfig(**{**TINY.to_dict(), "attention_backend": "auto"}), context_dim=16
    )
    assert block.backend == "sdpa"

    def no_lookup():
        raise AssertionError("forward looked xformers up")

    monkeypatch.setattr(unet, "_xformers_attention", no_lookup)
    out = block(torch.randn(1, 16, 2, 2, 2), torch.randn(1, 1, 16))
    assert out.shape == (1, 16, 2, 2, 2)
