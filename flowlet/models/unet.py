"""Conditional 3-D U-Net velocity network, state-dict compatible with the official FlowLet model (spec §2).

The network maps ``(x_t, t, conditions) -> v``: ``x_t`` is the 8-band Haar state ``(B, 8, d, h, w)``, ``t`` the raw
flow time in [0, 1] (0 = noise) and ``conditions`` a dict of min-max normalised scalars such as
``{"Age": (B, 1)}``. Conditions enter twice: FiLM in every ResBlock and cross-attention in every transformer.

Module names, parameter shapes and registration order equal the official ones, so the released checkpoints load
with ``strict=True``. Differences from the official code, all opt-in or bug fixes:

* ``film`` and ``cross_attention`` forward flags act independently (the official flags are coupled, spec §11.1);
* a spatial size not divisible by ``2**(levels-1)`` raises instead of silently resizing skips;
* the improvement switches of :class:`~flowlet.models.config.UNetConfig` (time scale, 1³ skips, context tokens).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flowlet.models.config import UNetConfig

__all__ = ["ConditionalUNet", "ResBlock", "SpatialTransformer", "timestep_embedding"]

TRANSFORMER_NORM_EPS = 1e-5  # the official transformer GroupNorm keeps torch's default eps (spec §2.2)
LAYER_NORM_EPS = 1e-6


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t·f), sin(t·f)]`` (cos first), ``f_i = max_period^(-i/half)``.

    Args:
        t: ``(B,)`` times (already scaled).
        dim: number of features; an odd ``dim`` gets one trailing zero.

    Returns:
        ``(B, dim)`` float tensor.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` that divides ``channels``."""
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@functools.lru_cache(maxsize=1)
def _xformers_attention() -> Callable | None:
    """``xformers.ops.memory_efficient_attention`` if xformers is importable (imported lazily), else None."""
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError:
        return None
    return memory_efficient_attention


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, dropout: float, backend: str) -> Tensor:
    """Multi-head scaled dot-product attention, scale ``1/sqrt(head_dim)``.

    Args:
        q: ``(B, N, C)`` queries; k, v: ``(B, M, C)``.
        heads: number of heads (C divisible by it).
        dropout: attention dropout probability (pass 0 in eval mode).
        backend: ``"auto"``, ``"sdpa"`` or ``"xformers"``.

    Returns:
        ``(B, N, C)``.
    """
    b, n, c = q.shape
    q, k, v = (z.reshape(b, z.shape[1], heads, c // heads) for z in (q, k, v))
    xformers_fn = _xformers_attention() if backend != "sdpa" else None
    if xformers_fn is not None and (backend == "xformers" or q.is_cuda):
        out = xformers_fn(q.contiguous(), k.contiguous(), v.contiguous(), p=dropout)  # (B, N, H, Dh) layout
    else:
        if backend == "xformers":
            raise ImportError(
                "attention_backend='xformers' but xformers is not installed; use 'auto' or 'sdpa'"
            )
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout
        ).transpose(1, 2)
    return out.reshape(b, n, c)


class ResBlock(nn.Module):
    """FiLM ResBlock with optional up/down sampling (the official ``ResBlock``, scale-shift norm, resblock up/down).

    ``h = GN(conv(SiLU(GN(x))))·(1 + s_t) + b_t``, then ``h·(1 + s_c) + b_c`` when FiLM is on, then
    SiLU → dropout → zero-initialised conv, plus the skip path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: UNetConfig,
        *,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.up, self.down = up, down
        self.use_checkpoint = config.use_checkpoint
        self.in_layers = nn.Sequential(
            group_norm(in_channels, groups, eps),
            nn.SiLU(),
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(config.time_embed_dim, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(config.condition_embedding_dim, 2 * out_channels)
        )
        self.out_layers = nn.Sequential(
            group_norm(out_channels, groups, eps),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            _zero(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        if in_channels == out_channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            k = config.skip_kernel_size
            self.skip_connection = nn.Conv3d(in_channels, out_channels, k, padding=k // 2)

    def _resample(self, x: Tensor) -> Tensor:
        if self.down:
            return F.avg_pool3d(x, 2)
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def _forward(self, x: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        if self.up or self.down:  # resample after norm+SiLU and before the conv, skip input too
            h = conv(self._resample(norm_act(x)))
            x = self._resample(x)
        else:
            h = conv(norm_act(x))
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        if cond is not None:
            scale_c, shift_c = self.cond_emb_layers(cond).to(h.dtype)[..., None, None, None].chunk(2, dim=1)
            h = h * (1 + scale_c) + shift_c
        return self.skip_connection(x) + self.out_layers[1:](h)

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None) -> Tensor:
        """x ``(B, C_in, d, h, w)``, emb ``(B, 4·mc)``, cond ``(B, E)`` or None (no FiLM) -> ``(B, C_out, ...)``."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, cond, use_reentrant=False)
        return self._forward(x, emb, cond)


class SpatialTransformer(nn.Module):
    """The official ``SpatialTransformerConditional``: self-attention then cross-attention, no feed-forward.

    GN(eps 1e-5) → 1³ conv → tokens → LN → (+ self-attention) → (+ cross-attention to the LN'd context) →
    zero-initialised 1³ conv → + input. Residuals are added to the layer-normalised sequence, as in the official
    code.
    """

    def __init__(self, channels: int, config: UNetConfig, context_dim: int | None) -> None:
        super().__init__()
        if config.num_head_channels == -1:
            self.heads = config.num_heads
        else:
            self.heads = max(1, channels // config.num_head_channels)
        if channels % self.heads:
            raise ValueError(f"transformer width {channels} is not divisible by {self.heads} attention heads")
        self.dropout = config.dropout
        # "auto" without xformers is SDPA: settled here, once, so that forward never looks xformers up (under
        # torch.compile every failed lookup in forward broke the graph).
        backend = config.attention_backend
        self.backend = "sdpa" if backend == "auto" and _xformers_attention() is None else backend
        self.use_checkpoint = config.use_checkpoint
        self.norm = group_norm(channels, config.norm_num_groups, TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv3d(channels, channels, 1)
        self.norm_seq = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        if context_dim is not None:
            self.norm_context = nn.LayerNorm(context_dim, eps=LAYER_NORM_EPS)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.proj_self_attn_out = nn.Linear(channels, channels)
        self.has_cross = context_dim is not None
        if context_dim is not None:
            self.to_q_cross = nn.Linear(channels, channels, bias=False)
            self.to_kv_cross = nn.Linear(context_dim, 2 * channels, bias=False)
            self.proj_cross_attn_out = nn.Linear(channels, channels)
        self.proj_out = _zero(nn.Conv3d(channels, channels, 1))

    def _forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        b, c, *spatial = x.shape
        p = self.dropout if self.training else 0.0
        h = self.norm_seq(self.proj_in(self.norm(x)).flatten(2).transpose(1, 2))  # (B, N, C)
        h = h + self.proj_self_attn_out(
            attention(self.to_q(h), self.to_k(h), self.to_v(h), self.heads, p, self.backend)
        )
        if self.has_cross and context is not None:
            # K is the first half of the projection. With one context token the softmax is over one key, so this
            # is a per-sample constant; several tokens (num_context_tokens > 1) make it voxel-dependent.
            k, v = self.to_kv_cross(self.norm_context(context.to(h.dtype))).chunk(2, dim=-1)
            h = h + self.proj_cross_attn_out(attention(self.to_q_cross(h), k, v, self.heads, p, self.backend))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, *spatial))

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        """x ``(B, C, d, h, w)``, context ``(B, K, E)`` or None (no cross-attention) -> ``(B, C, d, h, w)``."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)


class EmbedSequential(nn.Sequential):
    """Sequential container that hands the time embedding / FiLM input to ResBlocks and the context to transformers."""

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None, context: Tensor | None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, cond)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ConditionEmbedder(nn.Module):
    """One MLP ``Linear(1→E) → SiLU → Linear(E→E)`` per condition; the embeddings of present conditions are summed."""

    def __init__(self, names: tuple[str, ...], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embedders = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim)) for name in names}
        )

    def forward(self, conditions: Mapping[str, Tensor | float] | None, batch: int, like: Tensor) -> Tensor:
        """Return ``(B, E)``; zeros when no condition is given (the official "empty conditions" embedding)."""
        out = torch.zeros(batch, self.dim, device=like.device, dtype=like.dtype)
        if not conditions:
            return out
        unknown = sorted(set(conditions) - set(self.embedders))
        if unknown:
            raise ValueError(
                f"unknown conditions {unknown}; this model was built with {list(self.embedders)}"
            )
        for name, value in conditions.items():
            value = torch.as_tensor(value, device=like.device, dtype=like.dtype).reshape(-1, 1)
            if value.shape[0] == 1:
                value = value.expand(batch, 1)
            if value.shape[0] != batch:
                raise ValueError(f"condition {name!r} has {value.shape[0]} values for a batch of {batch}")
            out = out + self.embedders[name](value)
        return out


class ContextTokens(nn.Module):
    """Turn the condition embedding ``(B, E)`` into K context tokens ``(B, K, E)`` (an improvement, K > 1)."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(dim, num_tokens * dim)
        self.position = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)

    def forward(self, c: Tensor) -> Tensor:
        return self.proj(c).reshape(c.shape[0], self.num_tokens, -1) + self.position


class ConditionalUNet(nn.Module):
    """Conditional 3-D U-Net predicting the flow velocity in Haar space.

    Example:
        >>> cfg = UNetConfig(model_channels=8, norm_num_groups=4, condition_embedding_dim=16, num_heads=2)
        >>> net = ConditionalUNet(cfg).eval()
        >>> v = net(torch.randn(2, 8, 8, 8, 8), torch.rand(2), {"Age": torch.rand(2, 1)})
        >>> tuple(v.shape)
        (2, 8, 8, 8, 8)
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        if config.attention_backend == "xformers" and _xformers_attention() is None:
            raise ImportError(
                "attention_backend='xformers' but xformers is not installed; use 'auto' or 'sdpa'"
            )
        mc, cond_dim = config.model_channels, config.condition_embedding_dim
        context_dim = cond_dim if config.use_cross_attention else None
        self.condition_embedder = ConditionEmbedder(config.condition_names, cond_dim)
        if config.num_context_tokens > 1:
            self.context_tokens = ContextTokens(cond_dim, config.num_context_tokens)
        self.time_embed = nn.Sequential(
            nn.Linear(mc, config.time_embed_dim),
            nn.SiLU(),
            nn.Linear(config.time_embed_dim, config.time_embed_dim),
        )

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv3d(config.in_channels, mc, 3, padding=1))])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, config)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, config, context_dim))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != config.num_levels - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, ch, config, down=True)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(
            ResBlock(ch, ch, config), SpatialTransformer(ch, config, context_dim), ResBlock(ch, ch, config)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * mc, config)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, config, context_dim))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, ch, config, up=True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            group_norm(ch, config.norm_num_groups, config.norm_eps),
            nn.SiLU(),
            _zero(nn.Conv3d(ch, config.out_channels, 3, padding=1)),
        )

    def embed_time(self, t: Tensor) -> Tensor:
        """``(B,)`` flow times -> time embedding ``(B, 4·model_channels)``."""
        dtype = self.time_embed[0].weight.dtype
        sinusoid = timestep_embedding(t * self.config.time_scale, self.config.model_channels)
        return self.time_embed(sinusoid.to(dtype))

    def embed_conditions(self, conditions: Mapping[str, Tensor | float] | None, batch: int) -> Tensor:
        """Summed condition embedding ``(B, condition_embedding_dim)``; zeros for None or ``{}``."""
        like = self.time_embed[0].weight
        return self.condition_embedder(conditions, batch, like)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.config.in_channels}, d, h, w), got {tuple(x.shape)}"
            )
        divisor = self.config.grid_divisor
        bad = [size for size in x.shape[2:] if size % divisor]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {divisor} "
                f"(2**(len(channel_mult)-1) for channel_mult={self.config.channel_mult}); pad the input"
            )

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        conditions: Mapping[str, Tensor | float] | None = None,
        *,
        film: bool = True,
        cross_attention: bool = True,
    ) -> Tensor:
        """Velocity at ``(x, t)``.

        Args:
            x: ``(B, in_channels, d, h, w)`` Haar-band state; d, h, w divisible by ``2**(levels-1)``.
            t: ``(B,)`` raw flow times in [0, 1] (0 = noise), or a scalar broadcast over the batch.
            conditions: ``{"Age": (B, 1)}`` normalised to [0, 1]; None or ``{}`` gives the zero condition vector.
            film: apply the condition FiLM in ResBlocks (the time FiLM always runs).
            cross_attention: apply cross-attention to the condition context.

        Returns:
            ``(B, out_channels, d, h, w)`` velocity.
        """
        self._check_input(x)
        dtype = self.time_embed[0].weight.dtype
        x = x.to(dtype)
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.shape[0] == 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"t has {t.shape[0]} values for a batch of {batch}")
        emb = self.embed_time(t)
        c = self.embed_conditions(conditions, batch)
        context = None
        if cross_attention and self.config.use_cross_attention:
            context = self.context_tokens(c) if self.config.num_context_tokens > 1 else c[:, None, :]
        cond = c if film and self.config.condition_film else None

        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, cond, context)
            skips.append(h)
        h = self.middle_block(h, emb, cond, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond, context)
        return self.out(h)
