"""Typed configuration sections: build a frozen dataclass from a YAML mapping, checking every key and type.

One checker for every package's configs (``bap``, ``analysis``, the study), so that a wrong type always gives the
same kind of message: the dotted key, what was expected, and what was found; and one serialiser,
:func:`to_plain`, for the resolved config written next to every artifact.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigTypeError", "build_section", "convert_value", "to_plain"]


class ConfigTypeError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def convert_value(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (int, float, bool, str, Optional, tuple, dict, dataclass).

    Mapping values are checked against their annotation too (``dict[str, float]``), and their keys become strings
    when the annotation says ``str``, so that a YAML key written as a number reads back the same after dumping.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert_value(value, inner[0], where)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigTypeError(f"{where}: expected {len(args)} values, got {len(value)}: {list(value)!r}")
        return tuple(convert_value(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(f"{where}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {
            (str(k) if args[0] is str else k): convert_value(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigTypeError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML reads .nan and .inf as floats
            raise ConfigTypeError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigTypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigTypeError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_section(cls: type, raw: Any, where: str) -> Any:
    """``cls(**raw)`` after refusing unknown keys and checking each value's type.

    Args:
        cls: a dataclass; fields that are dataclasses are built recursively as sub-sections.
        raw: its mapping (None: every default).
        where: the section's dotted name; ``""`` for a top level whose keys are named bare (``data.source``).

    Raises:
        ConfigTypeError: naming ``where.key``, the expected type and the value found; or naming ``where`` with the
            message of a ``ValueError`` that ``cls`` raised on its values.
    """

    def at(text: str) -> str:
        return f"{where}: {text}" if where else text

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigTypeError(at(f"expected a mapping, got {raw!r}"))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names, key=str)
    if unknown:
        raise ConfigTypeError(at(f"unknown key(s) {unknown}; expected some of {sorted(names)}"))
    values = {k: convert_value(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigTypeError:
        raise
    except ValueError as exc:  # the section's own checks (``__post_init__``) name the field, not the section
        raise ConfigTypeError(at(str(exc))) from exc


def to_plain(value: Any) -> Any:
    """A config dataclass (or any value inside one) as plain nested dicts and lists, ready for YAML, JSON or
    ``torch.save(..., weights_only=True)``.

    Dataclasses become dicts in field order, mappings stay mappings (keys kept as they are, so that YAML reads the
    same keys back), tuples and lists become lists; other values are returned unchanged.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Section:
        ...     sizes: tuple[int, ...] = (1, 2)
        >>> to_plain(Section())
        {'sizes': [1, 2]}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
