"""Training arms of a brain-age comparison: how the rare ages are given more weight, all at the same step count.

An arm is written ``name`` or ``name:ratio``:

* ``real``: real training scans only, each drawn once per epoch;
* ``oversample``: real scans only, drawn with replacement so that each age bin is drawn equally often (the
  uniform target over the bins the training set occupies); random flips and shifts are on for this arm so that
  repeated draws of a scan differ;
* ``reweight``: real scans only, each drawn once per epoch, with inverse-frequency loss weights per age bin
  (mean weight 1, so the loss keeps its scale);
* ``synthetic:R``: real scans plus ``R`` × as many synthetic scans in the training pool;
* ``synthetic-filtered:R``: the same with synthetic scans from a filtered cohort (e.g. only the samples that
  passed a generator quality gate), given separately.

Every arm draws as many scans per epoch as there are real training scans, so all arms take the same number of
optimiser steps (``train.epoch_size: real`` is applied to every arm of a comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARM_KINDS", "Arm", "parse_arms", "ratios_to_arms"]

#: Arm kinds; the first three use real scans only.
ARM_KINDS = ("real", "oversample", "reweight", "synthetic", "synthetic-filtered")
_WITH_RATIO = ("synthetic", "synthetic-filtered")


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison.

    Attributes:
        kind: one of :data:`ARM_KINDS`.
        ratio: synthetic ÷ real training scans (0 for the real-only kinds).
    """

    kind: str
    ratio: float = 0.0

    @property
    def label(self) -> str:
        """``real``, ``oversample``, ``reweight`` or ``synthetic:0.5``-style."""
        return f"{self.kind}:{self.ratio:g}" if self.kind in _WITH_RATIO else self.kind

    @property
    def synthetic(self) -> bool:
        return self.kind in _WITH_RATIO


def parse_arms(text: str | list[str] | tuple[str, ...]) -> list[Arm]:
    """Parse ``"real,oversample,reweight,synthetic:0.5"`` (or a list of such names).

    Raises:
        ValueError: an unknown arm, a missing or negative ratio, a ratio on a real-only arm, a repeated arm, or no
            arm at all; the message names the offending item and the allowed spellings.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    allowed = "real, oversample, reweight, synthetic:R, synthetic-filtered:R"
    arms: list[Arm] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        kind, sep, value = item.partition(":")
        kind = kind.strip().lower()
        if kind not in ARM_KINDS:
            raise ValueError(f"arm {item!r}: unknown; expected one of {allowed}")
        if kind in _WITH_RATIO:
            try:
                ratio = float(value)
            except ValueError:
                raise ValueError(
                    f"arm {item!r}: expected {kind}:R with a number R > 0, e.g. {kind}:0.5"
                ) from None
            if not ratio > 0:
                raise ValueError(f"arm {item!r}: the ratio must be > 0 (the real-only arm is 'real')")
            arm = Arm(kind, ratio)
        elif sep:
            raise ValueError(f"arm {item!r}: '{kind}' takes no ratio")
        else:
            arm = Arm(kind)
        if arm in arms:
            raise ValueError(f"arm {item!r} is listed twice")
        arms.append(arm)
    if not arms:
        raise ValueError(f"no arms given; expected a comma-separated list of {allowed}")
    return arms


def ratios_to_arms(ratios: list[float] | tuple[float, ...]) -> list[Arm]:
    """The arms of the older ``--compare 0,0.5,1`` spelling: ratio 0 is ``real``, others ``synthetic:R``."""
    return [Arm("real") if float(r) == 0 else Arm("synthetic", float(r)) for r in ratios]
