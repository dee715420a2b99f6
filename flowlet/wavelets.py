"""Single-level orthonormal 3-D Haar wavelet transform, used as a fixed (parameter-free) codec.

The flow model works on the 8 Haar sub-bands of a volume instead of its voxels, the way latent diffusion works on
VAE latents. Unlike a VAE the codec is exact: :func:`idwt3d` inverts :func:`dwt3d` up to rounding, and the
transform preserves the Euclidean norm.

Per axis, neighbouring samples ``(a, b) = (x[2i], x[2i+1])`` become ``L = (a + b)/√2`` and ``H = (a - b)/√2``.
The transform is written with reshapes: the volume is viewed as ``(B, C, D/2, 2, H/2, 2, W/2, 2)`` and each
trailing pair axis is replaced by its (L, H) butterfly. No dense matrices are built, so the cost is linear in the
number of voxels and any even size works, cubic or not.

Band order (:data:`BAND_NAMES`): the letters are the (D, H, W) axes, so ``LLH`` is low-pass in depth and height
and high-pass in width. This equals ``pywt.dwtn(x, "haar")`` keys ``aaa, aad, ada, add, daa, dad, dda, ddd`` and
the channel order of the official FlowLet code (spec §1). There is no per-band scaling: a constant volume of value
``v`` has ``LLL = 2√2·v`` and zero detail bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BAND_NAMES", "HaarCodec", "dwt3d", "idwt3d"]

BAND_NAMES: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
_AXES = ("D", "H", "W")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _butterfly(x: Tensor, dim: int) -> Tensor:
    """Replace the size-2 axis ``dim`` holding ``(a, b)`` by ``((a + b)/√2, (a - b)/√2)``.

    The 2×2 Haar matrix ``[[1, 1], [1, -1]]/√2`` is symmetric and orthogonal, hence its own inverse, so the same
    butterfly serves both the forward and the inverse transform.
    """
    a, b = x.unbind(dim)
    return torch.stack((a + b, a - b), dim=dim) * _INV_SQRT2


def _check_even(shape: Sequence[int]) -> None:
    for axis, size in zip(_AXES, shape):
        if size % 2:
            raise ValueError(
                f"Haar DWT needs even spatial sizes, but axis {axis} has odd size {size} "
                f"(spatial shape {tuple(shape)}); pad the volume to even sizes first"
            )


def dwt3d(x: Tensor) -> Tensor:
    """Forward single-level 3-D Haar transform.

    Args:
        x: volume batch ``(B, C, D, H, W)`` with even D, H and W.

    Returns:
        Bands ``(B, 8·C, D/2, H/2, W/2)``; channel ``c·8 + k`` holds band ``BAND_NAMES[k]`` of input channel ``c``.

    Raises:
        ValueError: if ``x`` is not 5-D or a spatial size is odd (the message names the axis).

    Example:
        >>> bands = dwt3d(torch.zeros(1, 1, 4, 6, 8))
        >>> tuple(bands.shape)
        (1, 8, 2, 3, 4)
    """
    if x.dim() != 5:
        raise ValueError(f"dwt3d expects a 5-D tensor (B, C, D, H, W), got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    _check_even((d, h, w))
    y = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
    for dim in (3, 5, 7):
        y = _butterfly(y, dim)
    # (B, C, D2, kd, H2, kh, W2, kw) -> (B, C, kd, kh, kw, D2, H2, W2): band index k = 4·kd + 2·kh + kw.
    y = y.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return y.reshape(b, c * 8, d // 2, h // 2, w // 2)


def idwt3d(bands: Tensor) -> Tensor:
    """Inverse of :func:`dwt3d`.

    Args:
        bands: ``(B, 8·C, d, h, w)`` in the channel layout produced by :func:`dwt3d`.

    Returns:
        Volume ``(B, C, 2d, 2h, 2w)``.

    Raises:
        ValueError: if ``bands`` is not 5-D or its channel count is not a multiple of 8.
    """
    if bands.dim() != 5 or bands.shape[1] % 8:
        raise ValueError(
            f"idwt3d expects (B, 8·C, d, h, w) with a channel count divisible by 8, got shape {tuple(bands.shape)}"
        )
    b, c8, d, h, w = bands.shape
    y = bands.reshape(b, c8 // 8, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    for dim in (3, 5, 7):
        y = _butterfly(y, dim)
    return y.reshape(b, c8 // 8, 2 * d, 2 * h, 2 * w)


class HaarCodec:
    """The wavelet codec seen by the generative model: image space <-> 8-band Haar space.

    Stateless and parameter-free; an instance only exists so that the codec can be passed around like a VAE.

    Example:
        >>> codec = HaarCodec()
        >>> z = codec.encode(torch.zeros(2, 1, 32, 32, 32))
        >>> tuple(z.shape), codec.latent_shape((32, 32, 32))
        ((2, 8, 16, 16, 16), (8, 16, 16, 16))
    """

    band_names: tuple[str, ...] = BAND_NAMES

    def encode(self, volume: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` (usually C = 1) -> ``(B, 8·C, D/2, H/2, W/2)``."""
        return dwt3d(volume)

    def decode(self, bands: Tensor) -> Tensor:
        """``(B, 8·C, d, h, w)`` -> ``(B, C, 2d, 2h, 2w)``."""
        return idwt3d(bands)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the encoding of an image of shape ``image_shape``.

        Args:
            image_shape: ``(D, H, W)`` (one single-channel volume), ``(C, D, H, W)`` or ``(B, C, D, H, W)``.

        Returns:
            ``(8, D/2, H/2, W/2)``, ``(8·C, D/2, H/2, W/2)`` or ``(B, 8·C, D/2, H/2, W/2)`` respectively.
        """
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (3, 4, 5):
            raise ValueError(f"image_shape must have 3, 4 or 5 entries, got {shape}")
        spatial = shape[-3:]
        _check_even(spatial)
        half = tuple(s // 2 for s in spatial)
        if len(shape) == 3:
            return (8, *half)
        if len(shape) == 4:
            return (8 * shape[0], *half)
        return (shape[0], 8 * shape[1], *half)
