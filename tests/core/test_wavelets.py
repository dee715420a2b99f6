"""Haar codec: official fixtures, exact inverse, orthonormality and band semantics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flowlet import wavelets
from flowlet.wavelets import BAND_NAMES, HAAR_MATRIX, HaarCodec, dwt3d, idwt3d

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP contention makes tiny ops 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_official_dwt_fixture_bands_and_reconstruction():
    ref = torch.load(FIXTURES / "dwt.pt")
    assert list(ref["band_names"]) == list(BAND_NAMES)
    bands = dwt3d(ref["x"])
    assert bands.shape == ref["bands"].shape == (1, 8, 5, 8, 11)
    assert (bands - ref["bands"]).abs().max() <= 1e-5
    assert (idwt3d(ref["bands"]) - ref["recon"]).abs().max() <= 1e-5


def test_official_preprocess_fixture_wavelet_from_padded():
    ref = torch.load(FIXTURES / "preprocess.pt")
    bands = dwt3d(ref["padded"][None, None])
    assert bands.shape == ref["wavelet"].shape
    assert (bands - ref["wavelet"]).abs().max() <= 1e-5


@pytest.mark.parametrize("shape", [(1, 1, 2, 2, 2), (2, 1, 4, 6, 10), (1, 3, 8, 2, 6), (3, 2, 12, 10, 4)])
def test_round_trip_and_norm_preservation_float64(shape):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
    bands = dwt3d(x)
    b, c, d, h, w = shape
    assert bands.shape == (b, 8 * c, d // 2, h // 2, w // 2)
    assert torch.allclose(idwt3d(bands), x, atol=1e-12, rtol=0)
    assert math.isclose(bands.norm().item(), x.norm().item(), rel_tol=1e-12)


def test_constant_volume_has_only_lll_equal_two_root_two_times_value():
    bands = dwt3d(-torch.ones(1, 1, 4, 6, 8, dtype=torch.float64))
    assert torch.allclose(bands[:, 0], torch.full_like(bands[:, 0], -2 * math.sqrt(2)), atol=1e-12)
    assert bands[:, 1:].abs().max() < 1e-12


@pytest.mark.parametrize(("axis", "band"), [(2, "HLL"), (3, "LHL"), (4, "LLH")])
def test_band_letters_follow_d_h_w_axes(axis, band):
    # a ±1 alternation along one axis is pure high-pass on that axis and constant on the others
    shape = [1, 1, 4, 4, 4]
    sign = (torch.arange(4) % 2 == 0).double() * 2 - 1
    view = [1, 1, 1, 1, 1]
    view[axis] = 4
    x = sign.reshape(view).expand(shape)
    bands = dwt3d(x)
    energy = bands.pow(2).sum(dim=(0, 2, 3, 4))
    assert energy.argmax().item() == BAND_NAMES.index(band)
    assert math.isclose(energy.sum().item(), energy.max().item(), rel_tol=1e-12)


def test_multichannel_layout_is_channel_major():
    x = torch.randn(2, 3, 4, 4, 6, dtype=torch.float64)
    bands = dwt3d(x)
    for c in range(3):
        assert torch.equal(bands[:, 8 * c : 8 * (c + 1)], dwt3d(x[:, c : c + 1]))


@pytest.mark.parametrize(
    ("shape", "axis", "size"), [((5, 4, 4), "D", 5), ((4, 7, 4), "H", 7), ((4, 4, 9), "W", 9)]
)
def test_odd_size_raises_naming_axis(shape, axis, size):
    with pytest.raises(ValueError, match=rf"axis {axis} has odd size {size}"):
        dwt3d(torch.zeros(1, 1, *shape))
    with pytest.raises(ValueError, match=rf"axis {axis}"):
        HaarCodec().latent_shape(shape)


def test_idwt_rejects_channel_count_not_multiple_of_eight():
    with pytest.raises(ValueError, match="divisible by 8"):
        idwt3d(torch.zeros(1, 7, 2, 2, 2))


def test_codec_interface_and_gradients():
    codec = HaarCodec()
    assert codec.latent_shape((112, 112, 112)) == (8, 56, 56, 56)
    assert codec.latent_shape((2, 1, 10, 16, 22)) == (2, 8, 5, 8, 11)
    x = torch.randn(1, 1, 2, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: codec.decode(codec.encode(v) * 2.0), (x,))
    assert torch.autograd.gradcheck(codec.encode, (x,))


def test_matches_per_axis_butterflies_on_non_cubic_input():
    x = torch.randn(2, 1, 6, 4, 10, dtype=torch.float64)
    bands = dwt3d(x)
    s = 1.0 / math.sqrt(2.0)
    for kd in range(2):
        for kh in range(2):
            for kw in range(2):
                expected = x
                for axis, k in ((2, kd), (3, kh), (4, kw)):
                    even = expected.index_select(axis, torch.arange(0, expected.shape[axis], 2))
                    odd = expected.index_select(axis, torch.arange(1, expected.shape[axis], 2))
                    expected = (even + odd) * s if k == 0 else (even - odd) * s
                band = 4 * kd + 2 * kh + kw
                torch.testing.assert_close(bands[:, band : band + 1], expected)


def test_haar_matrix_is_orthogonal():
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(HAAR_MATRIX @ HAAR_MATRIX.T, eye)


def test_autocast_does_not_lower_the_codec_precision():
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bands = dwt3d(x)
        back = idwt3d(bands)
    assert bands.dtype == torch.float32 and back.dtype == torch.float32
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inverse_without_a_complex_dtype_takes_the_permute_path_and_agrees(dtype):
    # float32/float64 interleave through torch.complex; other dtypes copy through a permute. Both must give the
    # same volume (up to the rounding of the low-precision dtype).
    bands = torch.randn(2, 16, 3, 4, 5)
    low = idwt3d(bands.to(dtype))
    assert low.dtype == dtype and low.shape == (2, 2, 6, 8, 10)
    torch.testing.assert_close(low.float(), idwt3d(bands), atol=0.05, rtol=0.02)


def test_inverse_with_and_without_autograd_agree_and_are_contiguous():
    bands = torch.randn(2, 8, 3, 4, 5)
    plain = idwt3d(bands)
    tracked = idwt3d(bands.clone().requires_grad_())
    assert plain.is_contiguous() and tracked.is_contiguous() and tracked.requires_grad
    torch.testing.assert_close(plain, tracked.detach(), atol=0, rtol=0)


def test_gpu_strategies_agree_with_the_cpu_ones():
    # dwt3d/idwt3d pick a strategy per device (conv3d and torch.complex on the CPU, gather/permute + matrix product
    # on GPUs); both pairs are run here on the CPU so that the GPU code paths are checked without a GPU.
    x = torch.randn(3, 1, 6, 4, 10, dtype=torch.float64)
    matrix = wavelets._matrix(x)
    gathered = wavelets._dwt_gather(x, matrix).reshape(3, 8, 3, 2, 5)
    torch.testing.assert_close(gathered, dwt3d(x), atol=1e-12, rtol=0)
    bands = dwt3d(x)
    permuted = wavelets._idwt_permute(bands.reshape(3, 8, -1), matrix, (3, 2, 5)).reshape(x.shape)
    torch.testing.assert_close(permuted, idwt3d(bands), atol=1e-12, rtol=0)
    torch.testing.assert_close(permuted, x, atol=1e-12, rtol=0)
