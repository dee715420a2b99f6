"""Config loading: every key and type is checked, errors name the file and the key."""

from __future__ import annotations

import pytest

from configs import config_path
from flowlet.training.config import ConfigError, apply_overrides, config_to_dict, load_train_config


def _write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["tiny", "demo", "paper-base", "paper-large"])
def test_packaged_configs_load(name):
    cfg = load_train_config(config_path("flowlet", name))
    assert cfg.model.condition_names == ("Age",)


def test_paper_configs_are_official():
    base = load_train_config(config_path("flowlet", "paper-base"))
    large = load_train_config(config_path("flowlet", "paper-large"))
    for cfg in (base, large):
        assert cfg.training.lr == 3e-6 and cfg.training.min_lr == 1e-7 and cfg.training.batch_size == 4
        assert cfg.training.weight_decay == 1e-5 and cfg.training.grad_clip_norm == 1.0
        assert cfg.data.image_size == (112, 112, 112) and cfg.data.pad_mode == "edge"
        assert (cfg.flow.path, cfg.flow.time_sampler, cfg.flow.condition_dropout) == (
            "rectified",
            "uniform",
            0.0,
        )
        assert (cfg.flow.lll_loss_weight, cfg.flow.detail_loss_weight) == (1.0, 1.0)
        assert cfg.model.is_official and cfg.model.model_channels == 128
    assert base.model.channel_mult == (1, 2, 3, 4) and base.model.attention_resolutions == (16, 8)
    assert large.model.channel_mult == (1, 2, 4, 8) and large.model.attention_resolutions == (4, 8)


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "training:\n  learning_rate: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml: training: unknown key\(s\) \['learning_rate'\]; expected some of"
    ):
        load_train_config(path)


def test_unknown_model_key(tmp_path):
    path = _write(tmp_path, "model:\n  channels: 3\n")
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['channels'\]"):
        load_train_config(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  batch_size: four\n", "training.batch_size"),
        ("training:\n  batch_size: 2.5\n", "training.batch_size"),
        ("training:\n  compile: 1\n", "training.compile"),
        ("data:\n  image_size: [8, 8]\n", "data.image_size"),
        ("model:\n  channel_mult: [1, two]\n", r"model.channel_mult\[1\]"),
        ("flow: 3\n", "flow"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"cfg\.yaml: {key}: expected"):
        load_train_config(_write(tmp_path, text))


def test_semantic_errors(tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        load_train_config(
            _write(tmp_path, "data:\n  image_size: [8, 8, 10]\nmodel:\n  channel_mult: [1, 2, 2]\n")
        )
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(_write(tmp_path, "training:\n  precision: fp8\n"))
    with pytest.raises(ConfigError, match="skip_kernel_size"):
        load_train_config(_write(tmp_path, "model:\n  skip_kernel_size: 5\n"))


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, "training:\n  lr: 0.1\n")
    cfg = load_train_config(path, ["training.lr=1e-4", "model.channel_mult=[1,2]", "data.source=/x/y"])
    assert cfg.training.lr == 1e-4 and cfg.model.channel_mult == (1, 2) and cfg.data.source == "/x/y"
    with pytest.raises(ConfigError, match=r"training: unknown key\(s\) \['nope'\]"):
        load_train_config(path, ["training.nope=1"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["lr"])


def test_round_trip_through_dict():
    cfg = load_train_config(config_path("flowlet", "demo"))
    from flowlet.training.config import config_from_dict

    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["tiny", "demo", "paper-base", "paper-large"])
def test_packaged_configs_round_trip_through_yaml_byte_for_byte(name):
    import yaml

    from flowlet.training.config import config_from_dict

    cfg = load_train_config(config_path("flowlet", name))
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg and yaml.safe_dump(config_to_dict(again), sort_keys=False) == text


def test_typed_mapping_values(tmp_path):
    cfg = load_train_config(_write(tmp_path, "flow:\n  path_options: {beta_min: 1, 2: 3}\n"))
    assert cfg.flow.path_options == {"beta_min": 1.0, "2": 3.0}
    assert all(type(v) is float for v in cfg.flow.path_options.values())
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml: flow\.path_options\.beta_min: expected a number, got 'x'"
    ):
        load_train_config(_write(tmp_path, "flow:\n  path_options: {beta_min: x}\n"))


def test_semantic_errors_name_the_section(tmp_path):
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml: model: UNetConfig\.skip_kernel_size must be 1 or 3, got 5"
    ):
        load_train_config(_write(tmp_path, "model:\n  skip_kernel_size: 5\n"))
    with pytest.raises(ConfigError, match=r"cfg\.yaml: training\.precision must be one of"):
        load_train_config(_write(tmp_path, "training:\n  precision: fp8\n"))
