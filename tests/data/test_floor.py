"""The shared helpers of the floor (``flowlet.data``): config serialising, age bins, voxel volume, figures."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from flowlet.data.bins import (
    age_bin_labels,
    bin_counts,
    bin_index,
    bin_label,
    check_edges,
    edge_labels,
    histogram,
    inverse_frequency_weights,
    label_ages,
    label_start,
    width_edges,
)
from flowlet.data.config import ConfigTypeError, build_section, to_plain
from flowlet.data.grid import MNI_2MM_AFFINE, Grid
from flowlet.data.nifti import Volume, voxel_volume_mm3


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


@dataclass(frozen=True)
class _Checked:
    low: float = 0.0

    def __post_init__(self) -> None:
        if self.low < 0:
            raise ValueError(f"low must be >= 0, got {self.low}")


@dataclass(frozen=True)
class _Top:
    inner: _Inner = field(default_factory=_Inner)
    checked: _Checked = field(default_factory=_Checked)


def test_build_section_checks_mapping_values_and_makes_str_keys():
    built = build_section(_Outer, {"options": {1: 2, "j": 0.5}}, "cfg")
    assert built.options == {"1": 2.0, "j": 0.5} and all(type(v) is float for v in built.options.values())
    with pytest.raises(ConfigTypeError, match=r"cfg\.options\.j: expected a number, got 'x'"):
        build_section(_Outer, {"options": {"j": "x"}}, "cfg")


def test_build_section_names_the_key_value_and_expected_type():
    with pytest.raises(
        ConfigTypeError, match=r"cfg\.pairs\[0\]: expected 2 values, got 3: \['a', 'b', 'c'\]"
    ):
        build_section(_Outer, {"pairs": [["a", "b", "c"]]}, "cfg")
    with pytest.raises(
        ConfigTypeError, match=r"cfg\.inner: unknown key\(s\) \['rat'\]; expected some of \['rate'"
    ):
        build_section(_Outer, {"inner": {"rat": 1.0}}, "cfg")


def test_build_section_top_level_names_keys_bare_and_sections_own_errors():
    with pytest.raises(ConfigTypeError, match=r"^inner\.rate: expected a number, got 'slow'$"):
        build_section(_Top, {"inner": {"rate": "slow"}}, "")
    with pytest.raises(ConfigTypeError, match=r"^unknown key\(s\) \['iner'\]"):
        build_section(_Top, {"iner": {}}, "")
    with pytest.raises(ConfigTypeError, match=r"^checked: low must be >= 0, got -1\.0$"):
        build_section(_Top, {"checked": {"low": -1}}, "")
    assert build_section(_Top, {"checked": None}, "") == _Top()


def test_to_plain_leaves_scalars_and_does_not_share_lists():
    value = {"a": [1, [2]]}
    plain = to_plain(value)
    assert plain == value and plain["a"] is not value["a"]
    assert to_plain(3.5) == 3.5 and to_plain(None) is None


def _oblique_affine() -> np.ndarray:
    """A rotated, sheared, x-flipped grid of 2 x 3 x 4 mm voxels: its voxel volume is 24 mm³ by construction."""
    rotation = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix()
    shear = np.array([[1.0, 0.4, 0.0], [0.0, 1.0, -0.3], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-2.0, 3.0, 4.0]) @ shear
    affine[:3, 3] = [90.0, -126.0, -72.0]
    return affine


def test_voxel_volume_of_an_oblique_sheared_affine():
    affine = _oblique_affine()
    assert voxel_volume_mm3(affine) == pytest.approx(24.0, rel=1e-12)
    # The product of the edge lengths (the zooms) overstates it once the axes are not orthogonal.
    assert np.prod(np.linalg.norm(affine[:3, :3], axis=0)) > 24.5
    assert Volume(np.zeros((2, 2, 2)), affine).voxel_volume_mm3 == voxel_volume_mm3(affine)
    assert Grid((2, 2, 2), affine).voxel_volume_mm3 == voxel_volume_mm3(affine)
    assert voxel_volume_mm3(MNI_2MM_AFFINE) == pytest.approx(8.0, rel=1e-12)


def _backend_after_pyplot(setup: str, env_backend: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if env_backend is not None:
        env["MPLBACKEND"] = env_backend
    code = f"{setup}\nfrom flowlet.data.figures import pyplot\nprint(pyplot().get_backend().lower())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("setup", "env_backend", "expected"),
    [
        ("", None, "agg"),  # nothing chosen: a file backend, no display needed
        ("", "svg", "svg"),  # MPLBACKEND is the user's choice
        ("import matplotlib; matplotlib.use('pdf')", None, "pdf"),  # so is matplotlib.use before us
    ],
)
def test_pyplot_selects_agg_only_when_no_backend_was_chosen(setup, env_backend, expected):
    assert _backend_after_pyplot(setup, env_backend) == expected


# ------------------------------------------------------------------------------------------------ age bins
def test_width_edges_are_multiples_that_cover_every_age():
    ages = np.array([8.2, 19.99, 20.0, 63.5, 89.9])
    edges = width_edges(ages, 5.0)
    assert edges[0] == 5.0 and edges[-1] == 90.0 and np.allclose(np.diff(edges), 5.0)
    assert width_edges([40.0], 10.0).tolist() == [40.0, 50.0]  # an age on an edge opens its bin
    with pytest.raises(ValueError, match="positive"):
        width_edges(ages, 0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_edges([10, 10, 20])


def test_bins_between_edges_are_left_closed_and_the_last_holds_its_end():
    edges = [10, 30, 90]
    ages = [5, 10, 29.9, 30, 90, 95, np.nan]
    assert bin_index(ages, edges).tolist() == [-1, 0, 0, 1, 1, -1, -1]
    assert histogram(ages, edges).tolist() == [2, 2]
    assert edge_labels(edges) == ["[10, 30)", "[30, 90]"]
    assert label_ages(ages, edges).tolist() == [
        None,
        "[10, 30)",
        "[10, 30)",
        "[30, 90]",
        "[30, 90]",
        None,
        None,
    ]
    # numpy.histogram has the same convention: the two must agree on any ages
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 100, 500).round(0)
    assert histogram(many, [0, 20, 50, 100]).tolist() == np.histogram(many, [0, 20, 50, 100])[0].tolist()


def test_fixed_width_labels_say_which_bin_holds_a_boundary_age():
    labels = age_bin_labels([39.999, 40.0, 49.5, 50.0, 7.5], 10.0)
    assert labels.tolist() == ["[30, 40)", "[40, 50)", "[40, 50)", "[50, 60)", "[0, 10)"]
    assert age_bin_labels([12.0], 5.0, origin=2.5).tolist() == ["[7.5, 12.5)"]
    shuffled = ["[100, 110)", "[5, 10)", "[40, 50)", "[40, 50]"]
    assert sorted(shuffled, key=label_start) == ["[5, 10)", "[40, 50)", "[40, 50]", "[100, 110)"]
    assert bin_label(80, 120, closed=True) == "[80, 120]"


def test_inverse_frequency_weights_give_every_occupied_bin_the_same_share():
    ages = np.concatenate([np.full(6, 24.0), np.full(3, 45.0), [84.0]])
    weights = inverse_frequency_weights(ages, 10.0)
    # N = 10 ages in K = 3 bins: weight N / (K n_b) = 10 / 18, 10 / 9, 10 / 3
    np.testing.assert_allclose(weights, np.r_[np.full(6, 10 / 18), np.full(3, 10 / 9), 10 / 3], rtol=1e-15)
    assert weights.sum() == pytest.approx(ages.size)
    shares = [weights[bin_counts(ages, 10.0)[0] == b].sum() for b in (2, 4, 8)]
    np.testing.assert_allclose(shares, ages.size / 3)
    np.testing.assert_allclose(
        inverse_frequency_weights(ages, 10.0, total=1.0), weights / ages.size, rtol=1e-15
    )
    assert bin_counts(ages, 10.0)[1].tolist() == [6] * 6 + [3] * 3 + [1]
    with pytest.raises(ValueError, match="no ages"):
        inverse_frequency_weights([], 10.0)
