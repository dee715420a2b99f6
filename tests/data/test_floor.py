"""The shared helpers of the floor (``flowlet.data``): config serialising, age bins, voxel volume, figures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from flowlet.data.config import build_section, to_plain


@dataclass(frozen=True)
class _Inner:
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    pairs: tuple[tuple[str, str], ...] = (("a", "b"),)
    options: dict[str, float] = field(default_factory=lambda: {"k": 1.0})
    maybe: _Inner | None = None


def test_to_plain_is_lists_and_dicts_only():
    plain = to_plain(_Outer())
    assert plain == {
        "name": "x",
        "inner": {"rate": 0.5, "sizes": [1, 2, 3]},
        "pairs": [["a", "b"]],
        "options": {"k": 1.0},
        "maybe": None,
    }
    assert list(plain) == [f.name for f in dataclasses.fields(_Outer)]


def test_to_plain_round_trips_through_yaml_and_build_section():
    config = _Outer(name="y", inner=_Inner(0.25, (4,)), maybe=_Inner(1.0, ()), options={"k": 2.0, "j": 3.0})
    text = yaml.safe_dump(to_plain(config), sort_keys=False)
    assert build_section(_Outer, yaml.safe_load(text), "cfg") == config


def test_to_plain_leaves_scalars_and_does_not_share_lists():
    value = {"a": [1, [2]]}
    plain = to_plain(value)
    assert plain == value and plain["a"] is not value["a"]
    assert to_plain(3.5) == 3.5 and to_plain(None) is None
