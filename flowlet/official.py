"""Readers and writers for the official FlowLet files: ``config.json``, ``condition_ranges.json`` and slim ``.pth``.

The official generator rebuilds its network from the flat training ``config.json`` (spec §7): U-Net fields carry a
``unet_`` prefix and the lists ``unet_channel_mult`` / ``unet_attention_res`` are comma strings such as
``"1, 2, 3, 4"``. This module translates that file into a :class:`~flowlet.models.config.UNetConfig` plus the
sampling settings, and back. Only the fields the official generation scripts read matter; every other field is
kept in ``OfficialConfig.raw`` and listed in ``ignored_fields`` so that provenance records what was skipped.

Every ``torch.load`` here uses ``weights_only=True``: a checkpoint that needs arbitrary unpickling is refused
before any of its code can run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowlet.models.config import UNetConfig

__all__ = [
    "OFFICIAL_FIELD_NAMES",
    "REQUIRED_FIELDS",
    "SLIM_CONFIG_KEYS",
    "CheckpointError",
    "OfficialConfig",
    "condition_ranges_to_json",
    "extract_state_dict",
    "load_weights_only",
    "official_config_from_dict",
    "official_config_to_dict",
    "read_condition_ranges",
    "read_official_config",
]


class CheckpointError(ValueError):
    """A checkpoint, config or condition-ranges file is unreadable, unsafe or does not fit the model."""


REQUIRED_FIELDS = ("model_input_size", "unet_attention_res", "unet_channel_mult")
# official name -> (UNetConfig field, default used by the official generation scripts when the key is absent)
OFFICIAL_FIELD_NAMES: dict[str, tuple[str, Any]] = {
    "unet_model_channels": ("model_channels", 128),
    "unet_num_res_blocks": ("num_res_blocks", 2),
    "unet_channel_mult": ("channel_mult", None),
    "unet_attention_res": ("attention_resolutions", None),
    "unet_dropout": ("dropout", 0.1),
    "unet_num_heads": ("num_heads", 8),
    "unet_num_head_channels": ("num_head_channels", -1),
    "condition_embedding_dim": ("condition_embedding_dim", 512),
    "unet_norm_num_groups": ("norm_num_groups", 32),
    "use_checkpointing": ("use_checkpoint", False),
}
_OTHER_READ_FIELDS = (
    "condition_vars", "model_input_size", "use_xformers", "unet_disable_cross_attn",
    "num_flow_steps", "save_size", "flow_type",
)  # fmt: skip
# keys of the "config" entry that the official slimming tool embeds in a slim .pth (spec §6.1)
SLIM_CONFIG_KEYS = (
    "condition_vars", "model_input_size", "num_flow_steps", "unet_model_channels", "unet_num_res_blocks",
    "unet_channel_mult", "unet_attention_res", "unet_dropout", "condition_embedding_dim", "unet_num_heads",
    "unet_num_head_channels", "unet_norm_num_groups", "use_checkpointing", "use_xformers", "unet_disable_cross_attn",
)  # fmt: skip
# official flow_type -> toolkit path name ("cfm" is the rectified path written differently, spec §3)
FLOW_TYPES = {
    "rectified": "rectified",
    "cfm": "rectified",
    "trigonometric": "trigonometric",
    "vp_diffusion": "vp",
}
_PATH_TO_FLOW_TYPE = {"rectified": "rectified", "trigonometric": "trigonometric", "vp": "vp_diffusion"}
_STATE_DICT_KEYS = ("flow_net_state_dict", "model_state_dict")
_PREFIXES = ("_orig_mod.", "module.")


@dataclass(frozen=True)
class OfficialConfig:
    """What an official ``config.json`` says about the network and sampling.

    Attributes:
        unet: the network configuration.
        model_input_size: image size ``(D, H, W)`` the network was trained on.
        save_size: crop size for export, if the file has one.
        num_flow_steps: Euler steps, if the file has them.
        path_name: toolkit probability-path name (from ``flow_type``; "rectified" when absent).
        raw: the whole parsed JSON object.
        ignored_fields: keys present in the file that generation does not use.
    """

    unet: UNetConfig
    model_input_size: tuple[int, int, int]
    save_size: tuple[int, int, int] | None
    num_flow_steps: int | None
    path_name: str
    raw: dict[str, Any] = field(default_factory=dict)
    ignored_fields: tuple[str, ...] = ()


def _bad(source: str, name: str, expected: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{source}: field '{name}' must be {expected}, got {value!r}")


def _int_list(value: Any, *, source: str, name: str) -> tuple[int, ...]:
    """Parse ``"1, 2, 3, 4"`` / ``[1, 2, 3, 4]`` / ``8`` into a tuple of ints."""
    expected = 'a comma string of integers such as "1,2,3,4" or a list of integers'
    if isinstance(value, bool):
        raise _bad(source, name, expected, value)
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise _bad(source, name, expected, value)
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise _bad(source, name, expected, value) from None
    if any(isinstance(p, float) and p != int(p) for p in parts):
        raise _bad(source, name, expected, value)
    return out


def _size3(value: Any, *, source: str, name: str) -> tuple[int, int, int]:
    sizes = _int_list(value, source=source, name=name)
    if len(sizes) == 1:
        sizes = sizes * 3
    if len(sizes) != 3 or any(s < 1 for s in sizes):
        raise _bad(source, name, "three positive integers [D, H, W]", value)
    return sizes  # type: ignore[return-value]


def _typed(raw: Mapping[str, Any], name: str, default: Any, kind: type, *, source: str) -> Any:
    value = raw.get(name, default)
    if value is None:
        value = default
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise _bad(source, name, f"a {kind.__name__}", value)
    return kind(value)


def _condition_vars(raw: Mapping[str, Any], *, source: str) -> tuple[str, ...]:
    value = raw.get("condition_vars") or []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise _bad(source, "condition_vars", 'a list of condition names such as ["Age"]', value)
    return tuple(value)


def official_config_from_dict(raw: Mapping[str, Any], *, source: str = "config.json") -> OfficialConfig:
    """Translate a parsed official ``config.json`` into an :class:`OfficialConfig`.

    Args:
        raw: the JSON object.
        source: file name used in error messages.

    Raises:
        CheckpointError: a required field is missing or a field has the wrong type (the message names both).
    """
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    missing = [name for name in REQUIRED_FIELDS if raw.get(name) in (None, "")]
    if missing:
        raise CheckpointError(
            f"{source}: required field(s) {missing} missing; the official generator needs them"
        )
    kinds = {"unet_dropout": float}
    unet_kwargs: dict[str, Any] = {}
    for name, (ours, default) in OFFICIAL_FIELD_NAMES.items():
        if name in ("unet_channel_mult", "unet_attention_res"):
            unet_kwargs[ours] = _int_list(raw[name], source=source, name=name)
        else:
            kind = kinds.get(name, bool if isinstance(default, bool) else int)
            unet_kwargs[ours] = _typed(raw, name, default, kind, source=source)
    names = _condition_vars(raw, source=source)
    disable_cross = _typed(raw, "unet_disable_cross_attn", False, bool, source=source)
    use_xformers = _typed(raw, "use_xformers", True, bool, source=source)
    cross = bool(names) and not disable_cross
    try:
        unet = UNetConfig(
            **unet_kwargs,
            condition_names=names,
            use_cross_attention=cross,
            condition_film=cross,  # the official FiLM input is the cross-attention context (spec §11.1)
            attention_backend="auto" if use_xformers else "sdpa",
        )
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    input_size = _size3(raw["model_input_size"], source=source, name="model_input_size")
    if any(s % 2 for s in input_size):
        raise _bad(
            source, "model_input_size", "even sizes (the Haar transform halves them)", raw["model_input_size"]
        )
    save = raw.get("save_size")
    steps = raw.get("num_flow_steps")
    if steps is not None:
        steps = _typed(raw, "num_flow_steps", None, int, source=source)
        if steps < 1:
            raise _bad(source, "num_flow_steps", "a positive integer", steps)
    flow_type = raw.get("flow_type") or "rectified"
    if flow_type not in FLOW_TYPES:
        raise _bad(source, "flow_type", f"one of {sorted(FLOW_TYPES)}", flow_type)
    read = set(OFFICIAL_FIELD_NAMES) | set(_OTHER_READ_FIELDS)
    return OfficialConfig(
        unet=unet,
        model_input_size=input_size,
        save_size=None if save is None else _size3(save, source=source, name="save_size"),
        num_flow_steps=steps,
        path_name=FLOW_TYPES[flow_type],
        raw=dict(raw),
        ignored_fields=tuple(sorted(set(raw) - read)),
    )


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON {what} file ({err})") from None


def read_official_config(path: str | os.PathLike) -> OfficialConfig:
    """Read an official training ``config.json``. Raises :class:`CheckpointError` naming the file and field."""
    return official_config_from_dict(_read_json(path, "config"), source=str(path))


def official_config_to_dict(
    unet: UNetConfig,
    *,
    model_input_size: tuple[int, int, int],
    save_size: tuple[int, int, int] | None = None,
    num_flow_steps: int | None = None,
    path_name: str | None = None,
) -> dict[str, Any]:
    """The official ``config.json`` fields describing ``unet`` (lists as comma strings, as the official CLI writes)."""
    out: dict[str, Any] = {
        "condition_vars": list(unet.condition_names),
        "model_input_size": list(model_input_size),
        "unet_disable_cross_attn": bool(unet.condition_names) and not unet.use_cross_attention,
        "use_xformers": unet.attention_backend != "sdpa",
    }
    for name, (ours, _) in OFFICIAL_FIELD_NAMES.items():
        value = getattr(unet, ours)
        out[name] = ",".join(str(v) for v in value) if isinstance(value, tuple) else value
    if num_flow_steps is not None:
        out["num_flow_steps"] = int(num_flow_steps)
    if save_size is not None:
        out["save_size"] = list(save_size)
    if path_name in _PATH_TO_FLOW_TYPE:
        out["flow_type"] = _PATH_TO_FLOW_TYPE[path_name]
    return dict(sorted(out.items()))


def read_condition_ranges(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Read ``{"Age": {"min": 5.9, "max": 95.46}}`` into ``{"Age": (5.9, 95.46)}``.

    Raises:
        CheckpointError: unreadable file, wrong structure, non-finite numbers or ``max < min``.
    """
    raw = _read_json(path, "condition ranges")
    expected = 'an object {"min": number, "max": number}'
    if not isinstance(raw, dict):
        raise CheckpointError(
            f'{path}: expected a JSON object such as {{"Age": {{"min": 5.9, "max": 95.46}}}}'
        )
    ranges: dict[str, tuple[float, float]] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "min" not in entry or "max" not in entry:
            raise CheckpointError(f"{path}: condition '{name}' must be {expected}, got {entry!r}")
        lo, hi = entry["min"], entry["max"]
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)
        )
        if not numbers or hi < lo:
            raise CheckpointError(f"{path}: condition '{name}' must have finite min <= max, got {entry!r}")
        ranges[name] = (float(lo), float(hi))
    return ranges


def condition_ranges_to_json(ranges: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """``{"Age": (lo, hi)}`` -> the official JSON layout ``{"Age": {"min": lo, "max": hi}}``."""
    return {name: {"min": float(lo), "max": float(hi)} for name, (lo, hi) in ranges.items()}


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors turned into :class:`CheckpointError`.

    A file whose unpickling would call anything outside torch's allow-list (for example ``os.system``) is refused
    by the weights-only unpickler before any such call runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: refused to load: not a weights-only PyTorch checkpoint (tensors, dicts, lists, numbers and "
            f"strings only). It may be corrupt or contain executable pickle code; nothing from it was run. "
            f"Reason: {_load_failure_reason(err)}"
        ) from None


def _load_failure_reason(err: Exception) -> str:
    """The informative line of a torch.load error (torch wraps it in advice to disable weights_only: not ours)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return useful[0] if useful else (lines[0] if lines else type(err).__name__)


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def extract_state_dict(obj: Any, *, source: str) -> tuple[dict[str, Tensor], str]:
    """Find the U-Net weights in a loaded official checkpoint, as the official loaders do.

    Takes ``flow_net_state_dict``, else ``model_state_dict``, else the whole dict; strips leading ``_orig_mod.``
    (torch.compile) and ``module.`` (DataParallel) prefixes.

    Returns:
        ``(state_dict, where)`` where ``where`` is the container key or ``"<root>"``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")
    where = next((k for k in _STATE_DICT_KEYS if k in obj), "<root>")
    state = obj if where == "<root>" else obj[where]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: '{where}' is not a state dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: no state dict found (looked for {list(_STATE_DICT_KEYS)} or a bare state dict); "
            f"entries that are not tensors: {not_tensors[:5]}"
        )
    out = {_strip_prefixes(k): v for k, v in state.items()}
    if len(out) != len(state):
        raise CheckpointError(f"{source}: keys collide after stripping prefixes {list(_PREFIXES)}")
    return out, where
