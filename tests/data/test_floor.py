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

from flowlet.data.config import build_section, to_plain
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
