"""Configuration of the conditional 3-D U-Net (:class:`flowlet.models.unet.ConditionalUNet`).

The defaults reproduce the official FlowLet "base" network (spec §2). Three switches change the architecture in
ways the official code does not offer; at their defaults the state-dict keys are exactly the official ones, so
official checkpoints load and export unchanged:

* ``time_scale``: t is multiplied by this before the sinusoidal embedding. The official net embeds raw
  t ∈ [0, 1] with max period 10⁴, so most features barely move over the whole flow (spec §11.3); 1000 is the
  usual diffusion scaling.
* ``skip_kernel_size``: kernel of the channel-changing ResBlock skip convolution (official 3; 1 is the standard
  choice and removes about a quarter of the parameters, spec §11.6).
* ``num_context_tokens``: number of cross-attention context tokens made from the condition embedding. With the
  official single token the softmax is over one key, so cross-attention is a per-sample constant bias (spec §11.2);
  K > 1 tokens let every voxel attend differently to the condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ATTENTION_BACKENDS", "UNetConfig"]

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")
_TUPLE_FIELDS = ("channel_mult", "attention_resolutions", "condition_names")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`~flowlet.models.unet.ConditionalUNet`.

    Attributes:
        in_channels: input channels (8 Haar bands).
        out_channels: output channels (8 velocity bands).
        model_channels: width of level 0; level ℓ has ``channel_mult[ℓ]·model_channels`` channels and the time
            embedding has ``4·model_channels``.
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        attention_resolutions: downsample factors ``ds`` (1, 2, 4, ...) that get a transformer; values that never
            occur (e.g. 16 with 4 levels) are allowed and ignored, as in the official code. The middle block
            always has one.
        dropout: dropout in ResBlocks and attention (training only).
        num_heads: attention heads, used when ``num_head_channels == -1``.
        num_head_channels: channels per head; -1 derives it from ``num_heads``.
        condition_names: names of the scalar conditions (case-sensitive: they appear in state-dict keys).
        condition_embedding_dim: width of the summed condition embedding (the cross-attention context).
        use_cross_attention: build cross-attention layers (the official loader turns them off when there are no
            conditions).
        norm_num_groups: GroupNorm groups (a smaller divisor is used for widths it does not divide).
        norm_eps: GroupNorm eps in ResBlocks and the output head.
        use_checkpoint: gradient checkpointing in training mode.
        attention_backend: ``"auto"`` (xformers on CUDA when installed, else SDPA), ``"sdpa"`` or ``"xformers"``.
        time_scale: multiplier of t before the sinusoidal embedding (official 1.0).
        skip_kernel_size: kernel of channel-changing skip convolutions, 1 or 3 (official 3).
        num_context_tokens: cross-attention context tokens made from the condition embedding (official 1).
        condition_film: apply the condition FiLM at all. Only False for official models built without
            cross-attention: the official code feeds FiLM from the cross-attention context, so such a model (and every
            unconditional official model) never applies its condition FiLM (spec §11.1).
    """

    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.0
    num_heads: int = 8
    num_head_channels: int = -1
    condition_names: tuple[str, ...] = ("Age",)
    condition_embedding_dim: int = 512
    use_cross_attention: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    use_checkpoint: bool = False
    attention_backend: str = "auto"
    time_scale: float = 1.0
    skip_kernel_size: int = 3
    num_context_tokens: int = 1
    condition_film: bool = True

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # accept lists (YAML/JSON) but store tuples so the config stays hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_heads")
        for name in (*positive, "condition_embedding_dim", "norm_num_groups", "num_context_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(int(m) < 1 for m in self.channel_mult):
            raise ValueError(
                f"UNetConfig.channel_mult must be non-empty positive integers, got {self.channel_mult}"
            )
        if self.num_head_channels != -1 and self.num_head_channels < 1:
            raise ValueError(
                f"UNetConfig.num_head_channels must be -1 or positive, got {self.num_head_channels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention_backend {self.attention_backend!r}; choose from {list(ATTENTION_BACKENDS)}"
            )
        if self.skip_kernel_size not in (1, 3):
            raise ValueError(f"UNetConfig.skip_kernel_size must be 1 or 3, got {self.skip_kernel_size}")
        if not self.time_scale > 0:
            raise ValueError(f"UNetConfig.time_scale must be positive, got {self.time_scale}")
        bad_names = [n for n in self.condition_names if not isinstance(n, str) or not n or "." in n]
        if bad_names:
            raise ValueError(
                f"UNetConfig.condition_names must be non-empty strings without '.', got {bad_names}"
            )
        if len(set(self.condition_names)) != len(self.condition_names):
            raise ValueError(f"UNetConfig.condition_names has duplicates: {self.condition_names}")
        if self.num_context_tokens > 1 and not self.use_cross_attention:
            raise ValueError("num_context_tokens > 1 needs use_cross_attention=True")

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding (4·model_channels)."""
        return 4 * self.model_channels

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def grid_divisor(self) -> int:
        """The wavelet grid must be divisible by this (one factor 2 per downsampling)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def is_official(self) -> bool:
        """True when the improvement switches are at their official values (the net can be exported)."""
        return self.time_scale == 1.0 and self.skip_kernel_size == 3 and self.num_context_tokens == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Build from a dict such as :meth:`to_dict` writes; missing keys take the defaults.

        Raises:
            ValueError: naming any unknown keys.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**dict(d))
