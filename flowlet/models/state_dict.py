"""What a :class:`~flowlet.models.unet.ConditionalUNet` state dict reveals about its architecture.

Used to explain checkpoint/config mismatches in terms of config fields ("config.json says
unet_model_channels=128 but the checkpoint has 8") instead of a bare list of key errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from flowlet.models.config import UNetConfig

__all__ = ["config_disagreements", "effective_attention", "infer_architecture"]


def _block_count(state: Mapping[str, Tensor], prefix: str) -> int:
    indices = {int(k.split(".")[1]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _topology(state: Mapping[str, Tensor], mc: int) -> dict[str, Any]:
    """num_res_blocks, channel_mult and attention ds values from the block layout.

    Decoder levels have ``num_res_blocks + 1`` blocks and every level but the top one ends with an up-sampling
    ResBlock at sub-index 1 or 2; the first such block therefore marks the level length.
    """
    n_out = _block_count(state, "output_blocks.")
    ups = sorted(
        int(k.split(".")[1])
        for k in state
        if k.startswith("output_blocks.") and k.endswith(".in_layers.0.weight") and k.split(".")[2] != "0"
    )
    per_level = ups[0] + 1 if ups else n_out
    if not n_out or n_out % per_level:
        return {}
    levels = n_out // per_level
    out: dict[str, Any] = {"num_res_blocks": per_level - 1}
    widths = [state.get(f"output_blocks.{i * per_level}.0.out_layers.0.weight") for i in range(levels)]
    if all(w is not None for w in widths):
        out["channel_mult"] = tuple(int(w.shape[0]) // mc for w in reversed(widths))
    attention = set()
    for level in range(levels):  # encoder level ℓ (ds = 2**ℓ) owns blocks 1 + ℓ·(nrb+1) + j, j < nrb
        for j in range(per_level - 1):
            if f"input_blocks.{1 + level * per_level + j}.1.proj_in.weight" in state:
                attention.add(2**level)
    out["attention_resolutions"] = tuple(sorted(attention))
    return out


def infer_architecture(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The :class:`UNetConfig` fields that the keys and shapes of a U-Net state dict determine.

    ``attention_resolutions`` is returned in its effective form (the ds values that really have a transformer).
    Fields the weights do not reveal (heads, groups, time scale, dropout) are absent.
    """
    first = state.get("input_blocks.0.0.weight")
    if first is None or first.dim() != 5:
        return {}
    mc = int(first.shape[0])
    out: dict[str, Any] = {"model_channels": mc, "in_channels": int(first.shape[1])}
    if "out.2.weight" in state:
        out["out_channels"] = int(state["out.2.weight"].shape[0])
    prefix = "condition_embedder.embedders."
    out["condition_names"] = tuple(
        k.split(".")[2] for k in state if k.startswith(prefix) and k.endswith(".0.weight")
    )
    film = state.get("input_blocks.1.0.cond_emb_layers.1.weight")
    if film is not None:
        out["condition_embedding_dim"] = int(film.shape[1])
        tokens = state.get("context_tokens.proj.weight")
        out["num_context_tokens"] = 1 if tokens is None else int(tokens.shape[0]) // int(film.shape[1])
    out["use_cross_attention"] = any(k.endswith(".to_kv_cross.weight") for k in state)
    skips = [v for k, v in state.items() if k.endswith(".skip_connection.weight")]
    if skips:
        out["skip_kernel_size"] = int(skips[0].shape[-1])
    return out | _topology(state, mc)


def effective_attention(config: UNetConfig) -> tuple[int, ...]:
    """The ds values of ``config.attention_resolutions`` that can occur (1, 2, ..., 2**(levels-1))."""
    possible = {2**i for i in range(config.num_levels)}
    return tuple(sorted(set(config.attention_resolutions) & possible))


def config_disagreements(
    state: Mapping[str, Tensor],
    config: UNetConfig,
    *,
    config_name: str,
    field_label: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per :class:`UNetConfig` field that disagrees with what the weights reveal.

    Args:
        state: the checkpoint's state dict.
        config: the configuration the network was built from.
        config_name: where the config came from ("config.json", "model_config").
        field_label: how to name each UNetConfig field in the message (default: the field name).

    Returns:
        Lines such as ``config.json says unet_model_channels=128 but the checkpoint has 8``; empty when they agree.
    """
    wanted = config.to_dict() | {"attention_resolutions": effective_attention(config)}
    lines = []
    for name, found in infer_architecture(state).items():
        mine = wanted.get(name)
        mine = tuple(mine) if isinstance(mine, list) else mine
        if mine != found:
            label = (field_label or {}).get(name, name)
            lines.append(f"{config_name} says {label}={_show(mine)} but the checkpoint has {_show(found)}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return '"' + ",".join(str(v) for v in value) + '"'
    return repr(value)
