"""Quality gate of an augmentation: reject synthetic brains that do not look their requested age, and resample.

A gate is a check ``(volumes (B, X, Y, Z), ages (B,)) -> [reason or None]`` built by the caller (e.g. from a brain-age
model trained on real data, or from region volumes against a real cohort's age trend; ``pipelines/augment.py``).
A rejected sample is generated again from a new seed, :func:`retry_seed` of its recorded seed and the try number,
at most ``max_tries`` times in all. Retries of a batch are generated together, in sample order, so a rerun, a resumed
run or another shard makes exactly the same brains.

Every sample's outcome is kept next to its image (``sub-*/anat/sub-*_gate.json``, written before the image, so a
complete image always has its record) and gathered into ``gate.tsv`` (one row per sample: the seed of the accepted
try, the number of tries, the status) and ``rejections.tsv`` (one row per rejected try with its reason).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data.io import write_json_atomic, write_table_atomic

logger = logging.getLogger(__name__)

__all__ = ["Gate", "GateError", "GateOutcome", "gather_records", "record_path", "retry_seed", "run_gate"]

#: A check: ``(volumes, requested ages) -> one reason per volume`` (None = accepted).
Check = Callable[[np.ndarray, np.ndarray], Sequence[str | None]]


class GateError(ValueError):
    """The gate rejected more than it may (too many rejections, or a sample rejected at every try)."""


@dataclass(frozen=True)
class Gate:
    """A quality gate.

    Attributes:
        check: the test of one batch of exported volumes (see :data:`Check`).
        max_tries: generations per sample at most (the first one included).
        max_reject_fraction: largest accepted share of rejected tries among all tries of a run (checked once
            at least ``min_tries_checked`` tries were made, and at the end).
        min_tries_checked: tries before the share is checked.
    """

    check: Check
    max_tries: int = 3
    max_reject_fraction: float = 0.5
    min_tries_checked: int = 8

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError(f"gate max_tries must be >= 1, got {self.max_tries}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError(f"gate max_reject_fraction must be in [0, 1], got {self.max_reject_fraction}")


@dataclass
class GateOutcome:
    """What the gate decided for one sample."""

    participant_id: str
    age: float
    seed: int
    accepted_seed: int | None
    tries: int
    rejections: list[dict]

    @property
    def status(self) -> str:
        return "accepted" if self.accepted_seed is not None else "exhausted"

    def to_dict(self) -> dict:
        return {
            "participant_id": self.participant_id,
            "age": self.age,
            "seed": self.seed,
            "accepted_seed": self.accepted_seed,
            "tries": self.tries,
            "status": self.status,
            "rejections": self.rejections,
        }


def retry_seed(seed: int, attempt: int) -> int:
    """Seed of try ``attempt`` (0-based) of a sample whose recorded seed is ``seed``; try 0 keeps ``seed``."""
    if attempt == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(attempt), 0x6A7E]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


def run_gate(
    gate: Gate,
    generate: Callable[[list[int], list[int]], np.ndarray],
    batch: list[int],
    ages: np.ndarray,
    seeds: np.ndarray,
    ids: Sequence[str],
) -> tuple[dict[int, np.ndarray], list[GateOutcome]]:
    """Generate and check one batch, regenerating the rejected samples until accepted or out of tries.

    Args:
        gate: the gate.
        generate: ``(sample indices, seeds) -> (len, X, Y, Z)`` exported volumes.
        batch: sample indices of the batch.
        ages, seeds, ids: requested age, recorded seed and participant id of every sample (indexed by sample).

    Returns:
        ``(volumes, outcomes)``: the accepted volume of each accepted sample, and one outcome per sample of the
        batch, in batch order.
    """
    outcomes = {i: GateOutcome(str(ids[i]), float(ages[i]), int(seeds[i]), None, 0, []) for i in batch}
    accepted: dict[int, np.ndarray] = {}
    pending = list(batch)
    for attempt in range(gate.max_tries):
        if not pending:
            break
        try_seeds = [retry_seed(seeds[i], attempt) for i in pending]
        volumes = generate(pending, try_seeds)
        reasons = list(gate.check(volumes, ages[pending]))
        if len(reasons) != len(pending):
            raise ValueError(f"the gate's check returned {len(reasons)} decisions for {len(pending)} volumes")
        still = []
        for j, (i, seed, reason) in enumerate(zip(pending, try_seeds, reasons)):
            outcomes[i].tries = attempt + 1
            if reason is None:
                outcomes[i].accepted_seed = seed
                accepted[i] = volumes[j]
            else:
                outcomes[i].rejections.append({"try": attempt, "seed": seed, "reason": str(reason)})
                still.append(i)
        pending = still
    return accepted, [outcomes[i] for i in batch]


def record_path(image: Path) -> Path:
    """``sub-X_gate.json`` next to ``sub-X_T1w.nii.gz``."""
    return image.with_name(image.name.replace("_T1w.nii.gz", "_gate.json"))


def write_record(image: Path, outcome: GateOutcome) -> None:
    write_json_atomic(record_path(image), outcome.to_dict())


def gather_records(out_dir: Path, images: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Collect the per-sample records into ``gate.tsv`` and ``rejections.tsv``; returns both tables."""
    rows, rejected = [], []
    for image in images:
        path = record_path(image)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable gate record ({exc})") from exc
        rows.append(
            {k: record[k] for k in ("participant_id", "age", "seed", "accepted_seed", "tries", "status")}
        )
        for r in record["rejections"]:
            rejected.append({"participant_id": record["participant_id"], "age": record["age"], **r})
    samples = pd.DataFrame(
        rows, columns=["participant_id", "age", "seed", "accepted_seed", "tries", "status"]
    )
    reasons = pd.DataFrame(rejected, columns=["participant_id", "age", "try", "seed", "reason"])
    if len(samples):
        samples["accepted_seed"] = samples["accepted_seed"].astype("Int64")
    write_table_atomic(out_dir / "gate.tsv", samples)
    write_table_atomic(out_dir / "rejections.tsv", reasons)
    return samples, reasons


def check_rates(gate: Gate, outcomes: Sequence[GateOutcome], *, final: bool) -> None:
    """Raise :class:`GateError` when too many tries were rejected, or (at the end) a sample was never accepted."""
    tries = sum(o.tries for o in outcomes)
    rejections = sum(len(o.rejections) for o in outcomes)
    if tries and (final or tries >= gate.min_tries_checked) and rejections / tries > gate.max_reject_fraction:
        reasons = pd.Series([r["reason"] for o in outcomes for r in o.rejections]).value_counts().head(3)
        raise GateError(
            f"the quality gate rejected {rejections} of {tries} generated brains "
            f"({100 * rejections / tries:.0f} % > {100 * gate.max_reject_fraction:.0f} % allowed); most common "
            f"reasons: {'; '.join(f'{n}x {r}' for r, n in reasons.items())}. The generator does not produce "
            "brains of the requested ages within the tolerance: check the checkpoint, or widen the tolerance"
        )
    exhausted = [o.participant_id for o in outcomes if o.status == "exhausted"]
    if final and exhausted:
        raise GateError(
            f"{len(exhausted)} synthetic brains were rejected at all {gate.max_tries} tries and were not written "
            f"({', '.join(exhausted[:5])}{' ...' if len(exhausted) > 5 else ''}); see rejections.tsv"
        )
