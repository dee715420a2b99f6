"""Load and save trained FlowLet networks: the toolkit's own checkpoint and the official slim ``.pth``.

**Our format** is one file written with ``torch.save`` and read with ``torch.load(weights_only=True)``: a dict
``{"format": "flowlet-checkpoint", "format_version": 1, "model_config", "state_dict", "ema_state_dict",
"condition_ranges", "model_input_size", "save_size", "path_name", "num_flow_steps", "affine", "provenance",
"training"}``. Why not safetensors + JSON metadata: safetensors stores one flat ``str -> tensor`` map with string
metadata, whereas a checkpoint has to carry two state dicts (weights and EMA) and an optional resume payload
(optimizer and scheduler state: nested dicts of tensors and numbers) that safetensors cannot represent without an
ad-hoc flattening. The weights-only unpickler gives the same safety guarantee (no code runs on load), and the file
is read by the same code path as the official ``.pth`` files.

**Official checkpoints** need their ``config.json`` and ``condition_ranges.json`` (by default next to the
checkpoint, as in the official scripts; without a ``config.json`` the config a slim ``.pth`` embeds is used). Both formats are detected automatically by :func:`load_bundle`. A file that
does not fit the configured architecture raises :class:`CheckpointError` listing missing/unexpected keys, shape
mismatches and the config fields that probably disagree with the weights.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowlet import __version__
from flowlet.data.io import atomic_path, sha256_file, write_json_atomic
from flowlet.data.state_dict import state_mismatch
from flowlet.models.config import UNetConfig
from flowlet.models.state_dict import config_disagreements
from flowlet.models.unet import ConditionalUNet
from flowlet.official import (
    SLIM_CONFIG_KEYS,
    CheckpointError,
    condition_ranges_to_json,
    extract_state_dict,
    load_weights_only,
    official_config_from_dict,
    official_config_to_dict,
    read_condition_ranges,
    read_official_config,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "FlowLetBundle",
    "export_official",
    "load_bundle",
    "read_checkpoint_payload",
    "save_bundle",
]

log = logging.getLogger(__name__)
FORMAT = "flowlet-checkpoint"
FORMAT_VERSION = 1
# UNetConfig field -> how an official config.json names it (for mismatch messages on official files)
_OFFICIAL_LABELS = {
    "model_channels": "unet_model_channels", "num_res_blocks": "unet_num_res_blocks",
    "channel_mult": "unet_channel_mult", "attention_resolutions": "unet_attention_res (effective)",
    "condition_names": "condition_vars", "condition_embedding_dim": "condition_embedding_dim",
    "use_cross_attention": "cross-attention (condition_vars and not unet_disable_cross_attn)",
}  # fmt: skip


@dataclass
class FlowLetBundle:
    """A network ready for sampling, with everything needed to condition and export it.

    Attributes:
        model: eval mode, on the requested device; EMA weights when the checkpoint has them (and use_ema).
        model_config: the network configuration.
        condition_ranges: ``{"Age": (min, max)}`` used to min-max normalise raw conditions.
        model_input_size: image size ``(D, H, W)`` the network was trained on.
        save_size: default crop for exported volumes, or None.
        path_name: probability path ("rectified" for official checkpoints without ``flow_type``).
        num_flow_steps: default Euler steps (None if unknown).
        source_format: "official" or "flowlet".
        provenance: toolkit version, file sha256, step, data hash, ignored config fields, ...
        affine: ``(4, 4)`` affine for exported volumes, or None (the caller decides).
    """

    model: ConditionalUNet
    model_config: UNetConfig
    condition_ranges: dict[str, tuple[float, float]]
    model_input_size: tuple[int, int, int]
    save_size: tuple[int, int, int] | None
    path_name: str
    num_flow_steps: int | None
    source_format: str
    provenance: dict[str, Any] = field(default_factory=dict)
    affine: np.ndarray | None = None


def _plain(value: Any, where: str) -> Any:
    """Convert metadata to weights-only-loadable plain types (dict/list/str/int/float/bool/None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v, where) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in checkpoint metadata")


def _build_model(
    config: UNetConfig,
    state: Mapping[str, Tensor],
    *,
    source: str,
    config_name: str,
    official: bool,
    device: Any,
) -> ConditionalUNet:
    with torch.device("meta"):  # no random init: every parameter comes from the checkpoint
        model = ConditionalUNet(config)
    mismatch = state_mismatch(model.state_dict(), state)
    if not mismatch.fits:
        labels = _OFFICIAL_LABELS if official else None
        lines = [
            f"{source}: the weights do not fit the architecture described by {config_name}",
            *mismatch.lines(),
            *config_disagreements(state, config, config_name=config_name, field_label=labels),
        ]
        raise CheckpointError("\n  ".join(lines))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def _check_ranges(ranges: Mapping[str, tuple[float, float]], config: UNetConfig, source: str) -> None:
    missing = [n for n in config.condition_names if n not in ranges]
    if missing:
        raise CheckpointError(f"{source}: no condition range for {missing} (the model conditions on them)")
    for name, (lo, hi) in ranges.items():
        # an inverted range maps every value to the same clipped condition: every age would give one brain
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise CheckpointError(
                f"{source}: field 'condition_ranges': condition '{name}' must have finite min <= max, "
                f"got min={lo:g}, max={hi:g}"
            )


# ------------------------------------------------------------------------------------------------ loading
def read_checkpoint_payload(path: str | os.PathLike) -> dict[str, Any]:
    """Load one of our checkpoint files as its raw dict (for resuming training: ``state_dict``, ``training``...).

    Raises:
        CheckpointError: if the file is unsafe/unreadable or not our format.
    """
    return _validated(path, load_weights_only(path))


def _validated(path: str | os.PathLike, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this toolkit reads up to {FORMAT_VERSION})"
        )
    return payload


def _load_ours(path: Path, payload: dict[str, Any], *, device: Any, use_ema: bool) -> FlowLetBundle:
    try:
        config = UNetConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid 'model_config': {err}") from None
    ema = payload.get("ema_state_dict")
    weights = "ema" if use_ema and ema is not None else "model"
    state = ema if weights == "ema" else payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: field 'state_dict' must be a state dict")
    model = _build_model(
        config, state, source=str(path), config_name="model_config", official=False, device=device
    )
    try:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in payload["condition_ranges"].items()}
        input_size = tuple(int(s) for s in payload["model_input_size"])
        save = payload.get("save_size")
        save_size = None if save is None else tuple(int(s) for s in save)
        affine = None if payload.get("affine") is None else np.asarray(payload["affine"], dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path}: invalid metadata field ({err!r})") from None
    _check_ranges(ranges, config, str(path))
    if affine is not None and affine.shape != (4, 4):
        raise CheckpointError(f"{path}: field 'affine' must be 4x4, got shape {affine.shape}")
    provenance = dict(payload.get("provenance") or {}) | {"weights": weights}
    return FlowLetBundle(
        model=model,
        model_config=config,
        condition_ranges=ranges,
        model_input_size=input_size,  # type: ignore[arg-type]
        save_size=save_size,  # type: ignore[arg-type]
        path_name=str(payload.get("path_name", "rectified")),
        num_flow_steps=payload.get("num_flow_steps"),
        source_format="flowlet",
        provenance=provenance,
        affine=affine,
    )


def _official_config(path: Path, payload: Any, config_path: Path | None) -> tuple[Any, str]:
    """The official config: ``config_path``, else ``config.json`` next to the file, else the config a slim
    ``.pth`` embeds (spec §6.1; e.g. a hub folder published without ``config.json``)."""
    if config_path is None and not (path.parent / "config.json").is_file():
        embedded = payload.get("config") if isinstance(payload, dict) else None
        if isinstance(embedded, Mapping):
            name = f"{path} (embedded config)"
            log.info("%s: no config.json next to it; using the config embedded in the checkpoint", path)
            return official_config_from_dict(dict(embedded), source=name), name
    config_path = config_path or path.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path}: official checkpoints need the training config.json (or a slim file's embedded config); "
            f"not found at {config_path} (pass config_path=...)"
        )
    return read_official_config(config_path), str(config_path)


def _load_official(
    path: Path, payload: Any, *, config_path: Path | None, ranges_path: Path | None, device: Any
) -> FlowLetBundle:
    state, where = extract_state_dict(payload, source=str(path))
    official, config_name = _official_config(path, payload, config_path)
    config = official.unet
    model = _build_model(
        config, state, source=str(path), config_name=config_name, official=True, device=device
    )
    ranges_path = ranges_path or path.parent / "condition_ranges.json"
    if ranges_path.is_file():
        ranges = read_condition_ranges(ranges_path)
    elif config.condition_names:
        raise CheckpointError(
            f"{path}: the model conditions on {list(config.condition_names)} but condition_ranges.json was not "
            f"found at {ranges_path} (pass condition_ranges_path=...)"
        )
    else:
        ranges = {}
    _check_ranges(ranges, config, str(ranges_path))
    provenance = {
        "source_format": "official",
        "state_dict_key": where,
        "config_file": config_name,
        "condition_ranges_file": str(ranges_path),
        "official_config": official.raw,
        "ignored_config_fields": list(official.ignored_fields),
        "weights": "model",
    }
    return FlowLetBundle(
        model=model,
        model_config=config,
        condition_ranges=ranges,
        model_input_size=official.model_input_size,
        save_size=official.save_size,
        path_name=official.path_name,
        num_flow_steps=official.num_flow_steps,
        source_format="official",
        provenance=provenance,
        affine=None,
    )


def load_bundle(
    path: str | os.PathLike,
    *,
    config_path: str | os.PathLike | None = None,
    condition_ranges_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> FlowLetBundle:
    """Load a network for sampling from our checkpoint or an official slim/training ``.pth`` (auto-detected).

    Args:
        path: checkpoint file.
        config_path: official ``config.json`` (default: next to the checkpoint). Ignored for our format.
        condition_ranges_path: official ``condition_ranges.json`` (default: next to the checkpoint). Ignored for
            our format, which embeds the ranges.
        device: where to put the model.
        use_ema: take the EMA weights when the checkpoint has them.

    Raises:
        CheckpointError: unsafe or unreadable file, missing config/ranges, or weights that do not fit the config.

    Example:
        >>> bundle = load_bundle("runs/base/fmw_best_slim.pth")  # doctest: +SKIP
        >>> bundle.model(x_t, t, {"Age": age_norm})  # doctest: +SKIP
    """
    path = Path(path)
    payload = load_weights_only(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if config_path is not None or condition_ranges_path is not None:
            log.warning("%s is a %s file; config_path/condition_ranges_path are ignored", path, FORMAT)
        bundle = _load_ours(path, _validated(path, payload), device=device, use_ema=use_ema)
    else:
        bundle = _load_official(
            path,
            payload,
            config_path=None if config_path is None else Path(config_path),
            ranges_path=None if condition_ranges_path is None else Path(condition_ranges_path),
            device=device,
        )
    bundle.provenance |= {"checkpoint_file": str(path), "checkpoint_sha256": sha256_file(path)}
    return bundle


# ------------------------------------------------------------------------------------------------ saving
def _clean_state(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out, _ = extract_state_dict(dict(state), source="state dict")
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: UNetConfig,
    *,
    condition_ranges: Mapping[str, tuple[float, float]],
    model_input_size: tuple[int, int, int],
    save_size: tuple[int, int, int] | None,
    path_name: str,
    provenance: Mapping[str, Any],
    ema_state_dict: Mapping[str, Tensor] | None = None,
    affine: np.ndarray | None = None,
    num_flow_steps: int | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write one self-contained checkpoint file atomically (see the module docstring for the layout).

    Args:
        path: destination file (``.pt`` by convention).
        model: the network (a ``torch.compile``/DataParallel wrapper is fine: prefixes are stripped).
        model_config: its configuration.
        condition_ranges: ``{"Age": (min, max)}`` used to normalise the conditions in training.
        model_input_size: training image size ``(D, H, W)``.
        save_size: default export crop, or None.
        path_name: probability path used in training.
        provenance: step, data hash, ... (plain values; toolkit version and creation time are added).
        ema_state_dict: EMA weights, if kept.
        affine: ``(4, 4)`` affine of the training images (written on generated volumes).
        num_flow_steps: default sampling steps.
        training: opaque resume payload (optimizer/scheduler state...), stored as given.

    Returns:
        The written path.
    """
    _check_ranges(condition_ranges, model_config, "save_bundle")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "state_dict": _clean_state(model),
        "ema_state_dict": None if ema_state_dict is None else _clean_state(ema_state_dict),
        "condition_ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in condition_ranges.items()},
        "model_input_size": [int(s) for s in model_input_size],
        "save_size": None if save_size is None else [int(s) for s in save_size],
        "path_name": str(path_name),
        "num_flow_steps": None if num_flow_steps is None else int(num_flow_steps),
        "affine": None if affine is None else np.asarray(affine, dtype=np.float64).tolist(),
        "provenance": _plain(dict(provenance), "provenance")
        | {"toolkit_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()},
        "training": None if training is None else dict(training),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _export_problems(config: UNetConfig) -> list[str]:
    problems = []
    if not config.is_official:
        problems.append(
            f"improvement switches are not official (time_scale={config.time_scale}, skip_kernel_size="
            f"{config.skip_kernel_size}, num_context_tokens={config.num_context_tokens}; need 1.0, 3, 1)"
        )
    if (config.in_channels, config.out_channels, config.norm_eps) != (8, 8, 1e-6):
        problems.append("the official net hard-wires in/out channels 8 and norm_eps 1e-6")
    cross_possible = bool(config.condition_names)
    if config.use_cross_attention and not cross_possible:
        problems.append("the official net has no cross-attention without conditions")
    if config.condition_film != (config.use_cross_attention and cross_possible):
        problems.append(
            "the official net applies condition FiLM exactly when it has cross-attention (spec §11.1)"
        )
    return problems


def export_official(bundle: FlowLetBundle, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the official trio: slim ``model.pth``, ``config.json`` (comma strings) and ``condition_ranges.json``.

    The slim file holds ``{"model_state_dict": ..., "config": <the §6.1 subset>}``, i.e. what the official slimming
    tool writes, so the official ``generate.py`` loads it with strict key matching.

    Raises:
        CheckpointError: the network uses features the official code cannot express.
    """
    problems = _export_problems(bundle.model_config)
    if problems:
        raise CheckpointError("cannot export to the official format: " + "; ".join(problems))
    out_dir = Path(out_dir)
    config = official_config_to_dict(
        bundle.model_config,
        model_input_size=bundle.model_input_size,
        save_size=bundle.save_size,
        num_flow_steps=bundle.num_flow_steps,
        path_name=bundle.path_name,
    )
    paths = {
        "checkpoint": out_dir / "model.pth",
        "config": out_dir / "config.json",
        "condition_ranges": out_dir / "condition_ranges.json",
    }
    slim = {
        "model_state_dict": _clean_state(bundle.model),
        "config": {k: config[k] for k in SLIM_CONFIG_KEYS if k in config},
    }
    with atomic_path(paths["checkpoint"]) as tmp:
        torch.save(slim, tmp)
    write_json_atomic(paths["config"], config)
    write_json_atomic(paths["condition_ranges"], condition_ranges_to_json(bundle.condition_ranges))
    return paths
