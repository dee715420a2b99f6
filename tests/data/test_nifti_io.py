"""NIfTI reading/writing and atomic file writing: round trips, determinism, and one test per bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flowlet.data.io import atomic_path, resolve_inside, write_table_atomic, write_text_atomic
from flowlet.data.nifti import NiftiError, load_volume, save_volume, validate_affine


def _data(shape=(4, 5, 6)) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_round_trip_keeps_data_and_affine(tmp_path: Path, name: str, aniso_affine: np.ndarray) -> None:
    data = _data()
    save_volume(tmp_path / name, data, aniso_affine)
    volume = load_volume(tmp_path / name)
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.affine, aniso_affine, atol=1e-6)
    assert volume.voxel_volume_mm3 == pytest.approx(2.0 * 1.5 * 3.0)
    assert volume.shape == (4, 5, 6)
    assert volume.path == tmp_path / name


def test_double_save_is_byte_identical(tmp_path: Path, aniso_affine: np.ndarray) -> None:
    save_volume(tmp_path / "a.nii.gz", _data(), aniso_affine)
    save_volume(tmp_path / "b.nii.gz", _data(), aniso_affine)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_singleton_fourth_axis_is_squeezed(tmp_path: Path, raw_nifti) -> None:
    path = raw_nifti(tmp_path / "x.nii", _data((4, 5, 6, 1)))
    assert load_volume(path).shape == (4, 5, 6)


def _expect(path: Path, *words: str) -> None:
    with pytest.raises(NiftiError) as info:
        load_volume(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.nii.gz", "not found")


def test_truncated_gz(tmp_path: Path) -> None:
    path = tmp_path / "cut.nii.gz"
    save_volume(path, np.random.default_rng(1).normal(size=(20, 20, 20)), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _expect(path, "truncated")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(2).bytes(600))
    _expect(path, "not a NIfTI")


def test_2d_image(tmp_path: Path, raw_nifti) -> None:
    _expect(raw_nifti(tmp_path / "flat.nii", _data((4, 5))), "3D", "2D")


def test_4d_image(tmp_path: Path, raw_nifti) -> None:
    _expect(raw_nifti(tmp_path / "series.nii", _data((4, 5, 6, 2))), "3D", "4D")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path: Path, raw_nifti, bad: float) -> None:
    data = _data()
    data[1, 2, 3] = bad
    data[0, 0, 0] = -bad
    path = raw_nifti(tmp_path / "bad.nii", data)
    _expect(path, "2 voxels", "NaN or Inf")
    assert np.isnan(load_volume(path, allow_non_finite=True).data[1, 2, 3]) == np.isnan(bad)


def test_singular_affine(tmp_path: Path) -> None:
    # Only the sform can hold a singular matrix (nibabel cannot turn it into a qform quaternion).
    img = nib.Nifti1Image(_data(), None)
    img.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)
    path = tmp_path / "flat_affine.nii"
    nib.save(img, str(path))
    _expect(path, "not invertible")


def test_non_finite_affine() -> None:
    affine = np.eye(4)
    affine[0, 3] = np.nan
    with pytest.raises(NiftiError, match=r"my\.nii: affine contains NaN or Inf"):
        validate_affine(affine, source="my.nii")


def test_non_finite_affine_in_file(tmp_path: Path, raw_nifti) -> None:
    path = raw_nifti(tmp_path / "nan_affine.nii", _data())
    raw = bytearray(path.read_bytes())
    # srow_x starts at byte 280 of a NIfTI-1 header; a NaN there makes the sform non-finite.
    raw[280:284] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError) as info:
        load_volume(path)
    assert str(path) in str(info.value)
    assert "NaN or Inf" in str(info.value) or "not invertible" in str(info.value)


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match="2D"):
        save_volume(tmp_path / "x.nii", np.zeros((3, 3)), np.eye(4))
    with pytest.raises(NiftiError, match="not invertible"):
        save_volume(tmp_path / "x.nii", np.zeros((3, 3, 3)), np.zeros((4, 4)))
    assert not list(tmp_path.iterdir())


def test_atomic_failure_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "table.tsv"
    write_text_atomic(target, "old\n")

    def write_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.tsv"]


def test_atomic_write_table_is_tsv(tmp_path: Path) -> None:
    import pandas as pd

    path = write_table_atomic(tmp_path / "sub" / "t.tsv", pd.DataFrame({"a": [1.5, 2.0], "b": ["x", "y"]}))
    assert path.read_text() == "a\tb\n1.5\tx\n2\ty\n"


def test_resolve_inside(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "a/b.nii") == tmp_path.resolve() / "a" / "b.nii"
    with pytest.raises(ValueError, match=r"\.\./x"):
        resolve_inside(tmp_path, "../x")
    with pytest.raises(ValueError, match="/abs"):
        resolve_inside(tmp_path, "/abs")
