"""Checkpoint formats: official config/ranges/.pth readers, our format, export, safety and error messages."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlet.checkpoint import (
    CheckpointError,
    export_official,
    load_bundle,
    read_checkpoint_payload,
    save_bundle,
)
from flowlet.models import ConditionalUNet, UNetConfig
from flowlet.official import SLIM_CONFIG_KEYS, official_config_from_dict, read_condition_ranges

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
TINY = UNetConfig(
    model_channels=8,
    num_heads=2,
    norm_num_groups=4,
    condition_embedding_dim=16,
    channel_mult=(1, 2),
    attention_resolutions=(2,),
)


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def official_dir(tmp_path):
    for name in ("model.pth", "config.json", "condition_ranges.json"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


def _randomised(config: UNetConfig, seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    net = ConditionalUNet(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(
                torch.randn_like(p) / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1 * torch.randn_like(p)
            )
    return net


def _outputs(model: ConditionalUNet, size: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, size, size, size, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([0.2, 0.8]), {"Age": torch.tensor([[0.3], [0.6]])})


def _save(path, model, config, **extra):
    kwargs = {
        "condition_ranges": {"Age": (5.9, 95.46)},
        "model_input_size": (8, 8, 8),
        "save_size": (7, 8, 7),
        "path_name": "rectified",
        "provenance": {"step": 12, "data_hash": "abc"},
    } | extra
    return save_bundle(path, model, config, **kwargs)


# ------------------------------------------------------------------------------------------------ official files
def test_official_config_parsing_defaults_and_comma_strings():
    cfg = official_config_from_dict(
        {"model_input_size": [112, 112, 112], "unet_channel_mult": "1, 2, 4, 8", "unet_attention_res": " 4, 8",
         "condition_vars": ["Age"], "wandb_project": "x"}
    )  # fmt: skip
    unet = cfg.unet
    assert unet.channel_mult == (1, 2, 4, 8) and unet.attention_resolutions == (4, 8)
    assert (unet.model_channels, unet.num_heads, unet.condition_embedding_dim, unet.dropout) == (
        128,
        8,
        512,
        0.1,
    )
    assert unet.use_cross_attention and unet.condition_film and unet.attention_backend == "auto"
    assert cfg.num_flow_steps is None and cfg.save_size is None and cfg.path_name == "rectified"
    assert cfg.ignored_fields == ("wandb_project",)


@pytest.mark.parametrize(
    ("extra", "cross"),
    [({}, True), ({"unet_disable_cross_attn": True}, False), ({"condition_vars": []}, False)],
)
def test_cross_attention_needs_conditions_and_no_disable_flag(extra, cross):
    raw = {
        "model_input_size": [32] * 3,
        "unet_channel_mult": "1,2",
        "unet_attention_res": "2",
        "condition_vars": ["Age"],
    }
    unet = official_config_from_dict(raw | extra).unet
    assert unet.use_cross_attention is cross and unet.condition_film is cross


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"unet_channel_mult": "1,2", "unet_attention_res": "2"}, r"required field\(s\) \['model_input_size'\]"),
        ({"model_input_size": [32] * 3, "unet_channel_mult": "1,x", "unet_attention_res": "2"}, "'unet_channel_mult'"),
        ({"model_input_size": [31] * 3, "unet_channel_mult": "1,2", "unet_attention_res": "2"}, "'model_input_size'"),
        ({"model_input_size": [32] * 3, "unet_channel_mult": "1", "unet_attention_res": "2", "unet_model_channels": "8"},
         "'unet_model_channels' must be a int"),
        ({"model_input_size": [32] * 3, "unet_channel_mult": "1", "unet_attention_res": "2", "flow_type": "ddpm"},
         "'flow_type'"),
    ],
)  # fmt: skip
def test_bad_official_config_names_file_and_field(raw, message):
    with pytest.raises(CheckpointError, match=message) as info:
        official_config_from_dict(raw, source="run/config.json")
    assert "run/config.json" in str(info.value)


def test_missing_required_field_in_file_is_reported(official_dir):
    raw = json.loads((official_dir / "config.json").read_text())
    del raw["unet_attention_res"]
    (official_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config.json: required field\(s\) \['unet_attention_res'\]"):
        load_bundle(official_dir / "model.pth")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Age": {"min": 5.9}}', "condition 'Age' must be"),
        ('{"Age": {"min": 50, "max": 10}}', "min <= max"),
        ('{"Age": {"min": "a", "max": 10}}', "min <= max"),
        ('["Age"]', "expected a JSON object"),
        ("{not json", "not a readable JSON"),
    ],
)
def test_bad_condition_ranges_file(tmp_path, text, message):
    path = tmp_path / "condition_ranges.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        read_condition_ranges(path)
    assert str(path) in str(info.value)


def test_condition_ranges_missing_a_model_condition(official_dir):
    (official_dir / "condition_ranges.json").write_text('{"Sex": {"min": 0, "max": 1}}')
    with pytest.raises(CheckpointError, match=r"no condition range for \['Age'\]"):
        load_bundle(official_dir / "model.pth")
    (official_dir / "condition_ranges.json").unlink()
    with pytest.raises(CheckpointError, match=r"condition_ranges\.json was not found"):
        load_bundle(official_dir / "model.pth")


def test_missing_config_json_is_reported(official_dir):
    (official_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"need the training config\.json"):
        load_bundle(official_dir / "model.pth")


def test_wrong_architecture_message_names_config_fields(official_dir):
    raw = json.loads((official_dir / "config.json").read_text()) | {"unet_model_channels": 128}
    (official_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as info:
        load_bundle(official_dir / "model.pth")
    message = str(info.value)
    assert "says unet_model_channels=128 but the checkpoint has 8" in message
    assert "shape mismatches" in message and "input_blocks.0.0.weight: checkpoint (8, 8, 3, 3, 3)" in message


def test_wrong_condition_name_reports_missing_and_unexpected_keys(official_dir):
    raw = json.loads((official_dir / "config.json").read_text()) | {"condition_vars": ["age"]}
    (official_dir / "config.json").write_text(json.dumps(raw))
    (official_dir / "condition_ranges.json").write_text('{"age": {"min": 5.9, "max": 95.46}}')
    with pytest.raises(CheckpointError) as info:
        load_bundle(official_dir / "model.pth")
    message = str(info.value)
    assert "missing keys: ['condition_embedder.embedders.age.0.weight'" in message
    assert "unexpected keys: ['condition_embedder.embedders.Age.0.weight'" in message
    assert "condition_vars=('age',) but the checkpoint has ('Age',)" in message


@pytest.mark.parametrize(("container", "prefix"), [("flow_net_state_dict", "_orig_mod."), (None, "module.")])
def test_training_checkpoint_layouts_and_prefixes(official_dir, container, prefix):
    state = torch.load(official_dir / "model.pth")["model_state_dict"]
    state = {prefix + k: v for k, v in state.items()}
    payload = state if container is None else {container: state, "epoch": 3, "best_val_loss": 0.5}
    torch.save(payload, official_dir / "fmw_best.pth")
    reference = load_bundle(official_dir / "model.pth")
    bundle = load_bundle(official_dir / "fmw_best.pth")
    assert torch.equal(_outputs(bundle.model, 8), _outputs(reference.model, 8))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "model.pth"
    payload = {"model_state_dict": {"w": torch.zeros(1)}, "x": _Exploit(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    shutil.copy(FIXTURES / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_bundle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ our format
def test_our_format_round_trip_with_metadata_and_ema(tmp_path):
    model, ema = _randomised(TINY, 0), _randomised(TINY, 1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = _save(tmp_path / "ckpt.pt", model, TINY, ema_state_dict=ema.state_dict(), affine=affine,
                 num_flow_steps=50, training={"optimizer": {"step": torch.tensor(3.0)}, "epoch": 2})  # fmt: skip
    bundle = load_bundle(path)
    assert torch.equal(_outputs(bundle.model), _outputs(ema))
    assert torch.equal(_outputs(load_bundle(path, use_ema=False).model), _outputs(model))
    assert bundle.model_config == TINY and bundle.source_format == "flowlet"
    assert bundle.condition_ranges == {"Age": (5.9, 95.46)}
    assert (bundle.model_input_size, bundle.save_size, bundle.num_flow_steps) == ((8, 8, 8), (7, 8, 7), 50)
    assert np.array_equal(bundle.affine, affine)
    assert bundle.provenance["step"] == 12 and bundle.provenance["weights"] == "ema"
    assert {"toolkit_version", "created", "checkpoint_sha256"} <= set(bundle.provenance)
    payload = read_checkpoint_payload(path)
    assert payload["format"] == "flowlet-checkpoint" and payload["format_version"] == 1
    assert payload["training"]["epoch"] == 2


def test_our_format_keeps_improvement_switches(tmp_path):
    config = UNetConfig(
        **{**TINY.to_dict(), "time_scale": 1000.0, "skip_kernel_size": 1, "num_context_tokens": 3}
    )
    model = _randomised(config)
    bundle = load_bundle(_save(tmp_path / "ckpt.pt", model, config))
    assert bundle.model_config == config
    assert torch.equal(_outputs(bundle.model), _outputs(model))
    with pytest.raises(CheckpointError, match="improvement switches are not official"):
        export_official(bundle, tmp_path / "export")


def test_newer_format_version_is_refused(tmp_path):
    path = _save(tmp_path / "ckpt.pt", _randomised(TINY), TINY)
    payload = torch.load(path, weights_only=True) | {"format_version": 99}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        load_bundle(path)


def test_our_format_architecture_mismatch(tmp_path):
    path = _save(tmp_path / "ckpt.pt", _randomised(TINY), TINY)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["model_channels"] = 16
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="model_config says model_channels=16 but the checkpoint has 8"):
        load_bundle(path)


# ------------------------------------------------------------------------------------------------ export
def test_ours_to_official_round_trip_gives_identical_outputs(tmp_path):
    model = _randomised(TINY)
    bundle = load_bundle(_save(tmp_path / "ckpt.pt", model, TINY, num_flow_steps=20))
    paths = export_official(bundle, tmp_path / "export")
    config = json.loads(paths["config"].read_text())
    assert config["unet_channel_mult"] == "1,2" and config["unet_attention_res"] == "2"
    assert config["save_size"] == [7, 8, 7] and config["flow_type"] == "rectified"
    assert json.loads(paths["condition_ranges"].read_text()) == {"Age": {"min": 5.9, "max": 95.46}}
    slim = torch.load(paths["checkpoint"], weights_only=True)
    assert set(slim) == {"model_state_dict", "config"} and set(slim["config"]) <= set(SLIM_CONFIG_KEYS)
    assert list(slim["model_state_dict"]) == list(model.state_dict())
    again = load_bundle(paths["checkpoint"])
    assert (
        again.source_format == "official" and again.model_config.attention_backend == TINY.attention_backend
    )
    assert torch.equal(_outputs(again.model), _outputs(model))


def test_official_fixture_export_reload(official_dir, tmp_path):
    bundle = load_bundle(official_dir / "model.pth")
    again = load_bundle(export_official(bundle, tmp_path / "export")["checkpoint"])
    assert again.model_config == bundle.model_config
    assert torch.equal(_outputs(again.model, 8), _outputs(bundle.model, 8))


def test_export_refuses_unconditional_model_with_cross_attention(tmp_path):
    config = UNetConfig(**{**TINY.to_dict(), "condition_names": []})
    bundle = load_bundle(_save(tmp_path / "ckpt.pt", _randomised(config), config, condition_ranges={}))
    with pytest.raises(CheckpointError, match="no cross-attention without conditions"):
        export_official(bundle, tmp_path / "export")
