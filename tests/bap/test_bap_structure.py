"""The paper model's structure, packaged configs, and the dependency rule for ``bap``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import bap.metrics
from bap.config import load_config
from bap.models import build_model
from configs import config_path


def test_paper_densenet_matches_spec():
    net = build_model(
        "densenet121"
    )  # spec §9.2: growth 32, blocks (6, 12, 24, 16), 64 features, Linear(1024->1)
    backbone = net.backbone
    first = backbone.features.conv0
    assert (first.kernel_size, first.stride, first.in_channels, first.out_channels) == (
        (7, 7, 7),
        (2, 2, 2),
        1,
        64,
    )
    linear = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(1024, 1)]
    assert float(linear[0].bias.detach()) == 0.0
    assert float(net.age_mean) == 0.0 and float(net.age_std) == 1.0  # raw-age target


@pytest.mark.parametrize("name", ["default", "demo", "paper"])
def test_packaged_configs_load(name):
    cfg = load_config(config_path("bap", name))
    assert cfg.model.name in {"sfcn", "small", "densenet121"}
    if name == "paper":
        assert (
            cfg.train.optimizer,
            cfg.train.lr,
            cfg.train.epochs,
            cfg.train.batch_size,
            cfg.train.seed,
        ) == ("sgd", 0.01, 100, 16, 82)
        assert (cfg.train.schedule, cfg.train.t_0, cfg.train.t_mult, cfg.train.loss) == (
            "cosine_restarts",
            17,
            2,
            "l1",
        )


def test_bap_imports_only_flowlet_data():
    root = Path(bap.metrics.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert not name.startswith(("pipelines", "analysis")), f"{path.name} imports {name}"
                if name.startswith("flowlet"):
                    assert name.startswith("flowlet.data"), f"{path.name} imports {name}"
