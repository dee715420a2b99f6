"""Why a state dict does not load into a model: its missing, unexpected and mis-shaped keys, listed once.

The generator's checkpoints and the brain-age checkpoints and initial weights explain a mismatch the same way; the
listing lives here, on the floor both may import.

Example:
    >>> import torch
    >>> m = state_mismatch({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 3), "b": torch.zeros(3)})
    >>> m.lines()
    ["1 unexpected keys: ['b']", "1 shape mismatches: ['w: checkpoint (3, 3) vs model (2, 3)']"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StateMismatch", "state_mismatch"]


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(value, "shape", value))


@dataclass(frozen=True)
class StateMismatch:
    """The keys of a state dict that do not fit a model.

    Attributes:
        missing: keys the model has and the state dict lacks (model order).
        unexpected: keys the state dict has and the model lacks (state-dict order).
        shapes: ``(key, found shape, expected shape)`` of keys present in both with different shapes.
        found_label: what the state dict is called in messages (``checkpoint``, ``file``).
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    found_label: str = "checkpoint"

    @property
    def fits(self) -> bool:
        """True when the state dict loads into the model exactly."""
        return not (self.missing or self.unexpected or self.shapes)

    def without_shapes(self, keys: Iterable[str]) -> StateMismatch:
        """The same mismatch with the shape problems of ``keys`` forgiven (e.g. an output layer to re-initialise)."""
        drop = set(keys)
        kept = tuple(s for s in self.shapes if s[0] not in drop)
        return StateMismatch(self.missing, self.unexpected, kept, self.found_label)

    def lines(self, shown: int = 8) -> list[str]:
        """One line per kind of problem: ``"2 missing keys: ['a', 'b']"``, the first ``shown`` keys of each."""
        shapes = [
            f"{k}: {self.found_label} {found} vs model {expected}" for k, found, expected in self.shapes
        ]
        out = []
        for label, items in (
            ("missing keys", list(self.missing)),
            ("unexpected keys", list(self.unexpected)),
            ("shape mismatches", shapes),
        ):
            if items:
                more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
                out.append(f"{len(items)} {label}: {items[:shown]}{more}")
        return out


def state_mismatch(
    expected: Mapping[str, Any], found: Mapping[str, Any], *, found_label: str = "checkpoint"
) -> StateMismatch:
    """Compare a model's state dict (or its key → shape mapping) with a state dict to load.

    Args:
        expected: the model's ``state_dict()``, or key → shape.
        found: the state dict to load (tensors or anything with ``.shape``).
        found_label: what ``found`` is called in messages.
    """
    want = {k: _shape(v) for k, v in expected.items()}
    return StateMismatch(
        missing=tuple(k for k in want if k not in found),
        unexpected=tuple(k for k in found if k not in want),
        shapes=tuple(
            (k, _shape(found[k]), want[k]) for k in want if k in found and _shape(found[k]) != want[k]
        ),
        found_label=found_label,
    )
