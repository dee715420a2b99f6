"""A small staged runner: each stage is skipped on rerun when its configuration and its inputs are unchanged.

A stage's *key* is the SHA-256 of its name, its own configuration section, the toolkit version and the keys of the
stages it depends on. Because every stage is deterministic given its key, chaining keys is enough: when an upstream
configuration changes, its key changes, and so does the key of everything downstream. A stage records its key in
``<study>/<stage>/stage.json`` only after it finished, so a stage killed half-way reruns on the next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlet import __version__
from flowlet.data.io import folder_lock, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["Stage", "StageContext", "StageResult", "run_stages", "stage_key"]


@dataclass(frozen=True)
class StageContext:
    """What a stage function receives: its folder, its configuration and the results of earlier stages."""

    study_dir: Path
    stage_dir: Path
    config: Mapping[str, Any]
    full_config: Mapping[str, Any]
    results: Mapping[str, StageResult]


@dataclass(frozen=True)
class Stage:
    """One step of a study.

    Attributes:
        name: folder name and identifier (``cohort``, ``augment``...).
        run: ``run(context) -> dict`` with JSON-serialisable outputs (paths relative to the study folder).
        depends: names of the stages whose results it reads.
        config_sections: configuration sections hashed into its key.
        fingerprint: optional ``() -> str`` hashed into its key too, for inputs that live outside the
            configuration (e.g. the files of a user's cohort).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    depends: tuple[str, ...] = ()
    config_sections: tuple[str, ...] = ()
    fingerprint: Callable[[], str] | None = None


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False


def stage_key(stage: Stage, config: Mapping[str, Any], upstream_keys: Sequence[str]) -> str:
    """The content hash that decides whether ``stage`` must rerun."""
    payload = {
        "stage": stage.name,
        "config": {section: config.get(section) for section in stage.config_sections},
        "upstream": list(upstream_keys),
        "version": __version__,
        "inputs": stage.fingerprint() if stage.fingerprint is not None else None,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _record(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_stages(
    study_dir: str | Path,
    stages: Sequence[Stage],
    config: Mapping[str, Any],
    *,
    force_from: str | None = None,
    stop_after: str | None = None,
    lock: bool = True,
) -> dict[str, StageResult]:
    """Run ``stages`` in order, skipping those whose key matches their finished record.

    Args:
        study_dir: the study folder (created; locked against a concurrent run).
        stages: in dependency order.
        config: the full resolved configuration.
        force_from: rerun this stage and every later one regardless of their records.
        stop_after: stop after this stage.
        lock: take the study folder's lock (false when the caller holds it, as ``flowlet-study`` does).

    Returns:
        The result of every stage that ran or was reused.
    """
    names = [s.name for s in stages]
    for option, value in (("--from", force_from), ("--until", stop_after)):
        if value is not None and value not in names:
            raise ValueError(f"{option} {value!r}: unknown stage; choose from {names}")
    study_dir = Path(study_dir)
    results: dict[str, StageResult] = {}
    forcing = False
    with folder_lock(study_dir) if lock else contextlib.nullcontext():
        for index, stage in enumerate(stages, start=1):
            forcing = forcing or stage.name == force_from
            key = stage_key(stage, config, [results[d].key for d in stage.depends])
            stage_dir = study_dir / stage.name
            record = _record(stage_dir)
            if not forcing and record is not None and record.get("key") == key:
                results[stage.name] = StageResult(
                    stage.name, key, record.get("outputs", {}), 0.0, cached=True
                )
                logger.info("[%d/%d] %s: unchanged, reused", index, len(stages), stage.name)
            else:
                results[stage.name] = _run_one(
                    stage, key, study_dir, stage_dir, config, results, index, len(stages)
                )
            if stage.name == stop_after:
                break
    return results


def _run_one(stage, key, study_dir, stage_dir, config, results, index, total) -> StageResult:
    logger.info("[%d/%d] %s: running", index, total, stage.name)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "stage.json").unlink(missing_ok=True)
    context = StageContext(
        study_dir=study_dir,
        stage_dir=stage_dir,
        config=config.get(stage.config_sections[0], {}) if stage.config_sections else {},
        full_config=config,
        results=dict(results),
    )
    start = time.perf_counter()
    outputs = stage.run(context) or {}
    seconds = time.perf_counter() - start
    write_json_atomic(
        stage_dir / "stage.json", {"key": key, "outputs": outputs, "seconds": round(seconds, 3)}
    )
    logger.info("[%d/%d] %s: done in %.1f s", index, total, stage.name, seconds)
    return StageResult(stage.name, key, outputs, seconds, cached=False)
