"""Writing an augmentation: the synthetic brains of a plan as a BIDS derivatives folder.

Layout of ``OUT/``::

    dataset_description.json      DatasetType "derivative", GeneratedBy (toolkit, version, checkpoint hash, config)
    participants.tsv              participant_id, age, sex, site (= synthetic), seed, solver, steps, bin
    plan.tsv                      bin, real_count, target_proportion, synthetic_count, combined_count
    sub-syn00001/anat/sub-syn00001_T1w.nii.gz

Resumable and shardable. Sample ``i`` starts from the noise of ``sample_seed(seed, i)``. Samples are grouped into
fixed batches by index (batch ``k`` holds samples ``k·B … k·B + B − 1``) and a shard owns whole batches, so every
network call sees the same batch whichever shard or rerun makes it: float results can depend on the batch a sample
is computed in, and this keeps the union of shards equal to one unsharded run byte for byte (for the same batch size
and thread count). The metadata files depend only on the plan, so every shard writes the same bytes. Volumes are
written atomically: a file under its final name is complete. On a rerun, finished files are verified (readable,
right shape) and skipped; a batch with any missing file is recomputed and only its missing files are written.

A rerun only resumes a folder made with the same settings: the checkpoint's SHA-256, the plan and sampling
configuration in ``dataset_description.json`` and the sample table (ids, ages, seeds) must match (the batch size
may differ; it only changes float rounding). Otherwise :func:`write_augmentation` refuses and names what differs,
or, with ``replace=True``, replaces the previous brains (parked under hidden names until the new metadata is
written, so a failed or killed replacement never leaves old brains under a new description).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlet import __version__
from flowlet.augment.gate import Gate, check_rates, gather_records, run_gate, write_record
from flowlet.augment.plan import AugmentationPlan
from flowlet.data import keys
from flowlet.data.io import folder_lock, write_json_atomic, write_table_atomic
from flowlet.data.nifti import NiftiError, load_volume

logger = logging.getLogger(__name__)

__all__ = ["AugmentResult", "Shard", "parse_shard", "sample_table", "write_augmentation"]

SYNTHETIC_SITE = "synthetic"


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count``: the batches ``k`` with ``k % count == index``."""

    index: int = 0
    count: int = 1

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``"I/N"`` → :class:`Shard`; a clear error otherwise."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4") from exc
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: expected 0 <= I < N")
    return Shard(index, count)


@dataclass(frozen=True)
class AugmentResult:
    out_dir: Path
    generated: int
    skipped: int
    total: int


def sample_table(
    plan: AugmentationPlan, ages: np.ndarray, *, seed: int, solver: str, steps: int
) -> pd.DataFrame:
    """One row per synthetic brain, in plan order, with its id, age, per-sample seed and bin."""
    from flowlet.sampling import sample_seed

    bins = np.repeat(plan.table["bin"].to_numpy(), plan.table["synthetic_count"].to_numpy())
    n = len(ages)
    if len(bins) != n:
        raise ValueError(f"{n} ages for a plan of {len(bins)} synthetic brains")
    width = max(5, len(str(n)))
    return pd.DataFrame(
        {
            "participant_id": [f"sub-syn{i + 1:0{width}d}" for i in range(n)],
            keys.AGE: np.round(ages, 4),
            keys.SEX: keys.UNKNOWN,
            keys.SITE: SYNTHETIC_SITE,
            "seed": [sample_seed(seed, i) for i in range(n)],
            "solver": solver,
            "steps": steps,
            "bin": bins,
        }
    )


def image_path(out_dir: Path, participant_id: str) -> Path:
    return out_dir / participant_id / "anat" / f"{participant_id}_T1w.nii.gz"


def write_metadata(
    out_dir: Path, plan: AugmentationPlan, samples: pd.DataFrame, generated_by: Mapping[str, Any]
) -> None:
    """The folder's description, participants and plan (identical bytes from every shard)."""
    write_json_atomic(
        out_dir / "dataset_description.json",
        {
            "Name": "FlowLet synthetic brains",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "flowlet-toolkit", "Version": __version__, **generated_by}],
        },
    )
    write_table_atomic(out_dir / "participants.tsv", samples)
    write_table_atomic(out_dir / "plan.tsv", plan.table)


def _is_complete(path: Path, shape: tuple[int, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        volume = load_volume(path)
    except NiftiError as exc:
        logger.warning("%s is unreadable (%s); regenerating it", path, exc)
        return False
    if volume.shape != tuple(shape):
        logger.warning("%s has shape %s, expected %s; regenerating it", path, volume.shape, tuple(shape))
        return False
    return True


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _settings(generated_by: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance fields that decide the brains (version, names and the batch size do not)."""
    settings = _flatten(
        {"CheckpointSHA256": generated_by.get("CheckpointSHA256"), "Config": generated_by.get("Config")}
    )
    settings.pop("Config.sampling.batch_size", None)
    return settings


def _sample_ids(samples: pd.DataFrame) -> list[tuple[str, float, int]]:
    return [
        (str(pid), round(float(age), 6), int(seed))
        for pid, age, seed in zip(samples["participant_id"], samples[keys.AGE], samples["seed"])
    ]


def _previous_record(out_dir: Path) -> tuple[Mapping[str, Any], pd.DataFrame] | None:
    """The ``GeneratedBy`` entry and the sample table of an earlier augmentation in ``out_dir`` (None: new folder)."""
    description = out_dir / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        generated_by = json.loads(description.read_text(encoding="utf-8"))["GeneratedBy"][0]
        samples = pd.read_csv(out_dir / "participants.tsv", sep="\t")
        _sample_ids(samples)  # the columns a comparison needs
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(
            f"{out_dir}: not a folder written by flowlet-augment ({description.name} or participants.tsv: {exc}); "
            "choose a new output folder"
        ) from exc
    return generated_by, samples


def _settings_differences(
    previous: tuple[Mapping[str, Any], pd.DataFrame] | None,
    generated_by: Mapping[str, Any],
    samples: pd.DataFrame,
) -> list[str]:
    """What differs between the folder's recorded settings and these (empty: same settings, or a new folder)."""
    if previous is None:
        return []
    old, old_samples = previous
    # compare what was written with what would be written (JSON turns tuples into lists)
    before, now = _settings(old), _settings(json.loads(json.dumps(dict(generated_by), default=str)))
    diffs = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    if _sample_ids(old_samples) != _sample_ids(samples):
        diffs.append(
            f"participants.tsv: {len(old_samples)} -> {len(samples)} samples, or other ids, ages or seeds"
        )
    return diffs


def _subject_folders(out_dir: Path, samples: pd.DataFrame) -> list[Path]:
    """The existing subject folders of ``samples`` in ``out_dir`` (nothing else)."""
    pids = [str(pid) for pid in samples["participant_id"]]
    return [out_dir / p for p in pids if p.startswith("sub-") and "/" not in p and (out_dir / p).is_dir()]


def write_augmentation(
    out_dir: str | Path,
    bundle: Any,
    plan: AugmentationPlan,
    samples: pd.DataFrame,
    sampling_config: Any,
    *,
    save_size: tuple[int, int, int],
    affine: np.ndarray,
    generated_by: Mapping[str, Any],
    shard: Shard = Shard(),
    progress: bool = True,
    replace: bool = False,
    lock: bool = True,
    gate: Gate | None = None,
) -> AugmentResult:
    """Generate the brains of ``samples`` that this shard owns and that are not already complete.

    Args:
        out_dir: the derivatives folder.
        bundle: a loaded ``FlowLetBundle``.
        plan: the plan (written as ``plan.tsv``).
        samples: from :func:`sample_table`.
        sampling_config: a ``flowlet.sampling.SamplingConfig``.
        save_size: exported volume shape.
        affine: affine written on every volume.
        generated_by: provenance merged into ``dataset_description.json`` (checkpoint hash, config...).
        shard: which part of the samples to generate.
        progress: show a progress bar.
        replace: when ``out_dir`` holds brains made with other settings, delete them and start again instead of
            raising. Refused together with a shard count above 1 (shards run concurrently).
        lock: take this shard's lock on ``out_dir`` (:func:`shard_lock_name`); false when the caller holds it.
        gate: a quality gate (:mod:`flowlet.augment.gate`): rejected brains are generated again from new seeds, and
            ``gate.tsv``/``rejections.tsv`` record every decision.

    Raises:
        flowlet.augment.gate.GateError: the gate rejected too much (the records are written first).
        ValueError: ``out_dir`` holds an augmentation made with other settings (the message lists them) and
            ``replace`` is false, or it is not an augmentation folder.
    """
    from flowlet.export import decode_and_export, write_volumes
    from flowlet.sampling import iter_generate

    out_dir = Path(out_dir)
    if replace and shard.count > 1:
        raise ValueError(
            "replacing a previous augmentation cannot be combined with shards; empty the folder first"
        )
    with folder_lock(out_dir, name=shard_lock_name(shard)) if lock else contextlib.nullcontext():
        previous = _previous_record(out_dir)
        diffs = _settings_differences(previous, generated_by, samples)
        if diffs and not replace:
            raise ValueError(
                f"{out_dir} holds synthetic brains generated with other settings ({'; '.join(diffs)}); "
                "use a new output folder, or --overwrite to delete them and generate again"
            )
        for leftover in out_dir.glob(".stale-sub-*"):  # parked by a replacing run that was killed
            shutil.rmtree(leftover)
        # Replacing: park the old brains under hidden names, write the new metadata (atomic), then delete them. If
        # the metadata cannot be written they are put back, so the folder always describes the brains it holds.
        stale = _subject_folders(out_dir, previous[1]) if diffs else []
        parked = [folder.with_name(f".stale-{folder.name}") for folder in stale]
        for folder, hidden in zip(stale, parked):
            folder.rename(hidden)
        try:
            write_metadata(out_dir, plan, samples, generated_by)
        except BaseException:
            for folder, hidden in zip(stale, parked):
                hidden.rename(folder)
            raise
        if diffs:
            logger.warning(
                "%s: replaced the brains generated with other settings (%s)", out_dir, "; ".join(diffs)
            )
        for hidden in parked:
            shutil.rmtree(hidden)
        size = sampling_config.batch_size
        batches = [list(range(k, min(k + size, len(samples)))) for k in range(0, len(samples), size)]
        owned = [b for k, b in enumerate(batches) if shard.owns(k)]
        paths = {i: image_path(out_dir, samples["participant_id"].iloc[i]) for b in owned for i in b}
        _remove_stale_temporaries(paths.values())
        missing = {i for i in paths if not _is_complete(paths[i], save_size)}
        todo = [b for b in owned if missing.intersection(b)]
        logger.info("%d of %d brains of this shard to generate", len(missing), len(paths))
        # The table's columns as arrays, once for the whole run (not once per batch).
        ages = samples[keys.AGE].to_numpy(dtype=np.float64)
        seeds = samples["seed"].to_numpy()
        ids = samples["participant_id"].tolist()
        bar = _progress_bar(sum(len(b) for b in todo), enabled=progress)

        def generate(indices: list[int], batch_seeds: list[int]) -> np.ndarray:
            wavelets = next(
                iter_generate(bundle, ages[indices].tolist(), batch_seeds, sampling_config, progress=False)
            )
            return decode_and_export(wavelets.wavelets, save_size)

        outcomes = []
        try:
            for batch in todo:
                keep = [i for i in batch if i in missing]
                if gate is None:
                    volumes = generate(batch, seeds[batch].tolist())
                    write_volumes(volumes[[batch.index(i) for i in keep]], [paths[i] for i in keep], affine)
                else:
                    outcomes += _gated_batch(gate, generate, batch, keep, (ages, seeds, ids), paths, affine)
                    check_rates(gate, outcomes, final=False)
                bar.update(len(batch))
        finally:
            bar.close()
            if gate is not None:
                gather_records(out_dir, [image_path(out_dir, p) for p in ids])
        if gate is not None:
            check_rates(gate, outcomes, final=True)
    return AugmentResult(
        out_dir, generated=len(missing), skipped=len(paths) - len(missing), total=len(samples)
    )


def shard_lock_name(shard: Shard) -> str:
    """The lock file of one shard (shards of one augmentation write into one folder concurrently)."""
    return f".lock-shard-{shard.index}-of-{shard.count}"


def _gated_batch(gate: Gate, generate, batch: list[int], keep: list[int], columns, paths, affine) -> list:
    """Generate one batch through the gate; write the records, then the accepted volumes, of the ``keep`` samples.

    ``columns``: ``(ages, seeds, ids)`` of every sample, converted from the sample table once per run.
    """
    from flowlet.export import write_volumes

    accepted, outcomes = run_gate(gate, generate, batch, *columns)
    for i, outcome in zip(batch, outcomes):
        if i in keep:
            write_record(paths[i], outcome)  # before the image: a complete image always has its record
            if i in accepted:
                write_volumes(accepted[i][None], [paths[i]], affine)
            else:
                logger.warning("%s rejected at all %d tries", outcome.participant_id, gate.max_tries)
    return outcomes


def _remove_stale_temporaries(paths) -> None:
    """Delete temporary files that a killed run left next to this shard's volumes (``.<name>.*.tmp*``)."""
    for path in paths:
        for stale in path.parent.glob(f".{path.name}.*.tmp*"):
            logger.info("removing %s left by an interrupted run", stale)
            stale.unlink(missing_ok=True)


def _progress_bar(total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="brain", disable=not enabled)
