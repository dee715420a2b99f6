"""Run preprocessing over a BIDS data set: discovery, parallel and resumable processing, the derivatives layout."""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from flowlet.data import keys
from flowlet.data.cohort_sources import normalize_session_id, normalize_subject_id, read_table
from flowlet.data.io import folder_lock, write_bytes_atomic, write_json_atomic, write_table_atomic
from flowlet.data.prep import ants_backend
from flowlet.data.prep.config import PrepConfig
from flowlet.data.prep.montage import write_contact_sheet
from flowlet.data.prep.qc import qc_table
from flowlet.data.prep.subject import REJECTED_DIR, ScanJob, ScanResult, prepare_scan, verify_scan

logger = logging.getLogger(__name__)


__all__ = ["PrepReport", "find_scans", "run_prep"]

_T1W_SUFFIXES = ("_T1w.nii.gz", "_T1w.nii")
QC_DIR = "qc"
QC_TABLE = "prep_qc.tsv"
CONTACT_SHEET = "prep_contact_sheet.png"


def _version() -> str:
    """The installed toolkit's version, read from package metadata (no import of the top-level package)."""

    try:
        return metadata.version("flowlet-toolkit")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class PrepReport:
    """What a run did.

    Attributes:
        out_dir: the derivatives folder.
        qc: the QC table (also written to ``qc/prep_qc.tsv``).
        qc_path: path of the QC table.
        montages: the contact sheet (first) and one QC montage per processed scan.
        failures: ``(source, reason)`` of every scan that failed or was rejected by QC.
    """

    out_dir: Path
    qc: pd.DataFrame
    qc_path: Path
    montages: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        return int((self.qc["status"] == "ok").sum()) if len(self.qc) else 0

    @property
    def n_resumed(self) -> int:
        return int(self.qc["resumed"].sum()) if len(self.qc) else 0

    @property
    def n_rejected(self) -> int:
        return int((self.qc["status"] == "rejected").sum()) if len(self.qc) else 0

    def summary(self) -> str:
        """One paragraph for the console: counts, then each failed or rejected scan with its reason."""
        text = (
            f"{self.n_ok} of {len(self.qc)} scans preprocessed and passed QC ({self.n_resumed} already done)"
        )
        if self.failures:
            n_failed = len(self.failures) - self.n_rejected
            parts = [f"{n_failed} failed"] if n_failed else []
            if self.n_rejected:
                parts.insert(
                    0, f"{self.n_rejected} rejected by QC (outputs in {REJECTED_DIR}/, not in the cohort)"
                )
            text += "; " + ", ".join(parts) + ":\n" + "\n".join(f"  {s}: {r}" for s, r in self.failures)
        return text


def find_scans(bids_dir: str | os.PathLike) -> list[ScanJob]:
    """Every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` below ``bids_dir``, sorted.

    Raises:
        FileNotFoundError: the folder does not exist. ValueError: it holds no T1w scan.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BIDS folder not found")
    jobs = []
    for anat in sorted(root.glob("sub-*/anat")) + sorted(root.glob("sub-*/ses-*/anat")):
        session = anat.parent.name if anat.parent.name.startswith("ses-") else keys.UNKNOWN
        subject = anat.parents[1].name if session != keys.UNKNOWN else anat.parent.name
        for image in sorted(anat.iterdir()):
            suffix = next((s for s in _T1W_SUFFIXES if image.name.endswith(s)), None)
            if suffix is None or image.name.startswith("."):
                continue
            jobs.append(
                ScanJob(
                    subject_id=normalize_subject_id(subject),
                    session_id=normalize_session_id(session),
                    source=image,
                    relative_dir=anat.relative_to(root).as_posix(),
                    stem=image.name[: -len(suffix)],
                )
            )
    if not jobs:
        raise ValueError(f"{root}: no T1w scans found; expected sub-*/[ses-*/]anat/*_T1w.nii[.gz]")
    return jobs


def _init_worker(threads: int) -> None:
    ants_backend.require_ants(threads)


def _process(job: ScanJob, out_dir: Path, config: PrepConfig, resume: bool, keep: bool) -> ScanResult:
    if resume:
        done = verify_scan(job, out_dir, config, keep_rejected=keep)
        if done is not None:
            return done
    return prepare_scan(job, out_dir, config, keep_rejected=keep)


def _run_all(
    jobs: Sequence[ScanJob],
    out_dir: Path,
    config: PrepConfig,
    resume: bool,
    keep: bool,
    n_jobs: int,
    threads: int,
    progress: bool,
) -> list[ScanResult]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="flowlet-prep", unit="scan", disable=not progress)
    results: dict[int, ScanResult] = {}
    if n_jobs <= 1:
        _init_worker(threads)
        for i, job in enumerate(jobs):
            results[i] = _process(job, out_dir, config, resume, keep)
            bar.update()
    else:
        # Fresh (spawned) workers, so that ITK reads the thread setting before any ANTs call in them.
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(
            n_jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            pending = {
                pool.submit(_process, job, out_dir, config, resume, keep): i for i, job in enumerate(jobs)
            }
            for future in futures.as_completed(pending):
                i = pending[future]
                try:
                    results[i] = future.result()
                except Exception as exc:  # a crashed worker (BrokenProcessPool) must not end the whole run
                    results[i] = ScanResult(jobs[i], "failed", reason=f"{type(exc).__name__}: {exc}")
                bar.update()
    bar.close()
    return [results[i] for i in range(len(jobs))]


def _carry_participants(
    bids_dir: Path, out_dir: Path, participants: Path | None, jobs: Sequence[ScanJob]
) -> None:
    source = participants or bids_dir / "participants.tsv"
    if source.is_file() and source.suffix.lower() == ".tsv":
        write_bytes_atomic(out_dir / "participants.tsv", source.read_bytes())
    elif source.is_file():  # a CSV (or other comma table) becomes the BIDS TSV, every cell kept as text
        write_table_atomic(out_dir / "participants.tsv", read_table(source))
    if source.is_file():
        sidecar = source.with_suffix(".json")
        if sidecar.is_file():
            write_bytes_atomic(out_dir / "participants.json", sidecar.read_bytes())
    else:
        logger.warning("%s: not found; writing participant ids only (add ages before training)", source)
        ids = sorted({f"sub-{j.subject_id}" for j in jobs})
        write_table_atomic(out_dir / "participants.tsv", pd.DataFrame({"participant_id": ids}))
    # Per-session ages live in sub-*/sub-*_sessions.tsv; load_cohort reads them from there.
    for sessions in sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        write_bytes_atomic(out_dir / sessions.relative_to(bids_dir), sessions.read_bytes())


def _write_description(out_dir: Path, config: PrepConfig) -> None:
    write_json_atomic(
        out_dir / "dataset_description.json",
        {
            "Name": "FlowLet preprocessed T1w",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "flowlet-prep",
                    "Version": _version(),
                    "Description": "RAS reorientation, N4, brain extraction by registration of the "
                    f"{config.template} brain, affine to it, {config.voxel_size:g} mm MNI grid",
                }
            ],
        },
    )
    write_json_atomic(out_dir / "code" / "prep_config.json", config.to_dict())


def run_prep(
    bids_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: PrepConfig | None = None,
    participants: str | os.PathLike | None = None,
    jobs: int = 1,
    threads_per_job: int = 1,
    resume: bool = True,
    progress: bool = True,
    keep_rejected: bool = False,
) -> PrepReport:
    """Preprocess every T1w scan of a BIDS data set into a BIDS-derivatives cohort on the MNI grid.

    Args:
        bids_dir: raw BIDS folder.
        out_dir: derivatives folder (created; readable by :func:`flowlet.data.cohort.load_cohort`).
        config: settings (default :class:`PrepConfig`).
        participants: participants table to carry over (default ``bids_dir/participants.tsv``).
        jobs: worker processes.
        threads_per_job: ITK threads per worker.
        resume: skip scans whose outputs verify (same input checksum and settings).
        progress: show a progress bar.
        keep_rejected: write scans that fail QC into the cohort (still reported as rejected) instead of
            ``qc/rejected/``.

    Returns:
        :class:`PrepReport`; scans that fail or are rejected are listed there and in the QC table, not raised.

    Raises:
        ImportError: antspyx is missing (the message names the ``prep`` extra).
        FileNotFoundError, ValueError: no BIDS folder or no scans in it.

    Example:
        >>> report = run_prep("raw_bids", "derivatives/flowlet-prep", jobs=2)  # doctest: +SKIP
    """
    config = config or PrepConfig()
    # In-process runs set the ITK thread count now, before ANTs does any work in this process.
    ants_backend.require_ants(threads_per_job if jobs <= 1 else None)
    bids, out = Path(bids_dir), Path(out_dir)
    participants_path = Path(participants) if participants else None
    if participants_path is not None and not participants_path.is_file():
        raise FileNotFoundError(f"{participants_path}: participants table not found")
    scans = find_scans(bids)
    with folder_lock(out):
        _write_description(out, config)
        _carry_participants(bids, out, participants_path, scans)
        results = _run_all(
            scans, out, config, resume, keep_rejected, max(1, int(jobs)), threads_per_job, progress
        )
        table = qc_table(results)
        qc_path = write_table_atomic(out / QC_DIR / QC_TABLE, table)
        drawn = [r for r in results if r.outputs.get("montage") and (out / r.outputs["montage"]).is_file()]
        montages = [out / r.outputs["montage"] for r in drawn]
        sheet = write_contact_sheet(
            out / QC_DIR / CONTACT_SHEET,
            montages,
            [f"{r.job.stem}: {'REJECTED' if r.status == 'rejected' else 'ok'}" for r in drawn],
        )
    failures = [(str(r.job.source), r.reason) for r in results if r.status != "ok"]
    montages = ([sheet] if sheet else []) + montages
    return PrepReport(out_dir=out, qc=table, qc_path=qc_path, montages=montages, failures=failures)
