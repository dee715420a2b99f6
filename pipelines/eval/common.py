"""What the ``flowlet-eval`` sub-commands share: the config, cohort tables, the volumetrics and its two cohorts.

No argparse here (the shared flags are in :mod:`pipelines.eval.flags`): the study calls these in-process. Heavy
imports stay inside the functions, so ``flowlet-eval --help`` only pays for argparse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from analysis.config import EvalConfig
    from analysis.evaluation import CohortMeasures
    from analysis.volumetrics import RegionVolumetrics

__all__ = [
    "COMMAND",
    "REGISTRATIONS",
    "MeasureOptions",
    "MeasuredCohort",
    "MeasuredPair",
    "build_volumetrics",
    "cohort_table",
    "eval_output",
    "load_config",
    "measure_pair",
    "present_regions",
    "regional_fidelity",
    "write_config",
]

logger = logging.getLogger(__name__)

#: The command name written into every output folder's manifest and printed before every error.
COMMAND = "flowlet-eval"

#: How the atlas reaches each image (see :class:`analysis.volumetrics.RegionVolumetrics`).
REGISTRATIONS = ("demons", "none")


@dataclass(frozen=True)
class MeasureOptions:
    """How the images of a cohort are measured (the flags of the sub-commands that segment images).

    Attributes:
        registration: ``demons`` carries the atlas onto each image by registration; ``none`` uses it as is.
        limit: measure only the first ``limit`` images of every cohort (None: all).
        progress: show progress bars.
        jobs: worker processes for the per-image work (results do not depend on it).
    """

    registration: str = "demons"
    limit: int | None = None
    progress: bool = True
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.registration not in REGISTRATIONS:
            raise ValueError(
                f"registration: expected one of {list(REGISTRATIONS)}, got {self.registration!r}"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive number of images, got {self.limit}")
        if self.jobs < 1:
            raise ValueError(f"jobs: expected at least 1 worker process, got {self.jobs}")


@dataclass(frozen=True)
class MeasuredCohort:
    """One cohort as measured: its table (with ``image_id``) and what :func:`measure_cohort` kept of it."""

    table: pd.DataFrame
    measures: CohortMeasures


@dataclass(frozen=True)
class MeasuredPair:
    """A real and a synthetic cohort measured by one fitted volumetrics pipeline."""

    volumetrics: RegionVolumetrics
    real: MeasuredCohort
    synthetic: MeasuredCohort


# ------------------------------------------------------------------------------------------------ configuration
def load_config(
    path: str | Path | None = None,
    *,
    atlas: str | None = None,
    atlas_image: str | Path | None = None,
    atlas_table: str | Path | None = None,
    voxel_size: float | None = None,
) -> EvalConfig:
    """Read the evaluation config (``yaml.safe_load``) and apply the overrides.

    Args:
        path: YAML file (None: the packaged ``configs/eval/default.yaml``).
        atlas: packaged atlas name; replaces the config's atlas, custom image and table included.
        atlas_image: custom atlas label NIfTI, with ``atlas_table`` (TSV with ``index``, ``name``).
        atlas_table: see ``atlas_image``.
        voxel_size: working MNI grid in mm, in [0.5, 8].

    Raises:
        ValueError: an unreadable file, an unknown key, a value out of range (naming the file and the key), or
            only one of ``atlas_image`` and ``atlas_table``.

    Example:
        >>> load_config(voxel_size=4.0).voxel_size
        4.0
    """
    import yaml

    from analysis.config import EvalConfig
    from configs import config_path

    path = Path(path) if path is not None else config_path("eval", "default")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    config = EvalConfig.from_dict(raw, source=str(path))
    chosen = config.atlas
    if atlas:
        chosen = dataclasses.replace(chosen, name=atlas, image=None, table=None)
    if atlas_image or atlas_table:
        if not (atlas_image and atlas_table):
            raise ValueError("--atlas-image and --atlas-table go together")
        chosen = dataclasses.replace(chosen, image=str(atlas_image), table=str(atlas_table))
    if voxel_size is not None:
        # through from_dict, so the override meets the same range check as the file's value
        checked = EvalConfig.from_dict({"voxel_size": voxel_size}, source="voxel_size override")
        config = dataclasses.replace(config, voxel_size=float(checked.voxel_size))
    return dataclasses.replace(config, atlas=chosen)


def write_config(out: Path, config: EvalConfig, **extra: Any) -> None:
    """The resolved config plus the run's inputs (``extra``) as ``out/config.yaml``."""
    import yaml

    from flowlet.data.io import write_text_atomic

    write_text_atomic(out / "config.yaml", yaml.safe_dump({**config.to_dict(), **extra}, sort_keys=False))


@contextlib.contextmanager
def eval_output(out: Path, inputs: Iterable[str | Path | None], *, overwrite: bool = False) -> Iterator[None]:
    """The output-folder contract of :mod:`flowlet.data.outputs` for one evaluation run into ``out``.

    A folder that an older ``flowlet-eval`` wrote (a ``config.yaml`` and tables, no manifest) is accepted.
    """
    from flowlet.data.outputs import output_folder

    with output_folder(
        out,
        command=COMMAND,
        inputs=list(inputs),
        overwrite=overwrite,
        legacy=lambda folder: (folder / "config.yaml").is_file() and any(folder.glob("*.tsv")),
    ):
        yield


# ---------------------------------------------------------------------------------------- cohorts and measures
def cohort_table(source: str | Path, limit: int | None = None) -> pd.DataFrame:
    """The cohort at ``source`` (folder or table) as a table with an ``image_id`` column, first ``limit`` rows.

    ``image_id`` is the subject id, followed by ``_ses-<session>`` when the cohort names sessions.

    Raises:
        ValueError: ``limit`` below 1, or a cohort that :func:`flowlet.data.cohort.load_cohort` refuses.
    """
    from flowlet.data.cohort import load_cohort
    from flowlet.data.keys import SESSION_ID, SUBJECT_ID, UNKNOWN

    if limit is not None and limit < 1:  # head(-1) would silently drop the last image
        raise ValueError(f"--limit: expected a positive number of images, got {limit}")
    cohort = load_cohort(source)
    table = cohort.table if limit is None else cohort.table.head(limit)
    table = table.reset_index(drop=True).copy()
    subject, session = table[SUBJECT_ID].astype(str), table[SESSION_ID].astype(str)
    table["image_id"] = subject.where(session == UNKNOWN, subject + "_ses-" + session)
    return table


def build_volumetrics(
    config: EvalConfig, registration: str = "demons", progress: bool = True
) -> RegionVolumetrics:
    """The fitted :class:`RegionVolumetrics` of ``config`` (grid, tissue segmenter, atlas) on its MNI grid."""
    from analysis.segmentation import TissueSegmenter
    from analysis.volumetrics import RegionVolumetrics
    from flowlet.data.grid import mni_grid
    from flowlet.data.templates import load_custom_atlas

    grid = mni_grid(config.voxel_size)
    s = config.segmentation
    segmenter = TissueSegmenter(
        grid=grid,
        prior_weight=s.prior_weight,
        n_iter=s.n_iter,
        prior_floor=s.prior_floor,
        margin_mm=s.margin_mm,
        method=s.method,
        random_state=config.seed,
    )
    atlas = config.atlas.name
    if config.atlas.image:
        atlas = load_custom_atlas(config.atlas.image, config.atlas.table, grid)
    return RegionVolumetrics(
        atlas,
        grid=grid,
        segmenter=segmenter,
        threshold=config.atlas.threshold,
        registration=registration,
        volumes=s.volumes,
        progress=progress,
    ).fit()


def measure_pair(
    real: str | Path,
    synthetic: str | Path,
    config: EvalConfig,
    measure: MeasureOptions,
    *,
    keep_images: bool = False,
    features: bool = True,
) -> MeasuredPair:
    """Fit the volumetrics once, then measure the real cohort and the synthetic one with it (in that order).

    Args:
        real: real cohort (folder or table).
        synthetic: synthetic cohort (folder or table).
        config: the evaluation config.
        measure: registration, image limit, progress bars, worker processes.
        keep_images: keep ROI label maps and normalised images (ROI metrics, texture noise).
        features: compute the fixed image features (MMD, Fréchet distance).
    """
    from analysis.evaluation import measure_cohort

    vol = build_volumetrics(config, measure.registration, measure.progress)
    measured = []
    for source in (real, synthetic):
        table = cohort_table(source, measure.limit)
        measures = measure_cohort(
            table,
            vol,
            combined_regions=config.combined_regions,
            keep_images=keep_images,
            features=features,
            progress=measure.progress,
            jobs=measure.jobs,
        )
        measured.append(MeasuredCohort(table, measures))
    return MeasuredPair(vol, *measured)


def present_regions(volumes: pd.DataFrame, key_regions: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(region, tissue)`` pairs of ``key_regions`` that ``volumes`` has, in their order."""
    have = set(zip(volumes["region"], volumes["tissue"]))
    return [pair for pair in key_regions if tuple(pair) in have]


def regional_fidelity(
    real_volumes: pd.DataFrame, syn_volumes: pd.DataFrame, config: EvalConfig, out: Path, name: str
) -> pd.DataFrame:
    """Volumes of both sets, per-region trajectory fidelity and age-matched distances, key-region table and plot.

    Writes ``volumes_real.tsv``, ``volumes_synthetic.tsv``, ``trajectory.csv``, ``distances.csv``,
    ``key_regions.{csv,md,tex}`` and ``volume_vs_age.png`` into ``out``.

    Returns:
        The trajectory table merged with the distances (one row per region and tissue, with ``flagged``).
    """
    from analysis import metrics, tables
    from analysis.figures import plot_trajectories
    from analysis.quality import key_region_rows
    from flowlet.data.io import write_table_atomic

    write_table_atomic(out / "volumes_real.tsv", real_volumes)
    write_table_atomic(out / "volumes_synthetic.tsv", syn_volumes)
    traj = metrics.trajectory_fidelity(real_volumes, syn_volumes, alpha=config.quality.alpha)
    dist = metrics.age_matched_distances(real_volumes, syn_volumes, age_bins=config.age_bins)
    write_table_atomic(out / "trajectory.csv", traj)
    write_table_atomic(out / "distances.csv", dist)
    tables.write_table(
        key_region_rows(traj.merge(dist, on=["region", "tissue"]), config.key_regions),
        out,
        "key_regions",
        caption=f"Age trajectories and age-matched distances: real vs {name}",
    )
    plot_trajectories(
        {"real": real_volumes, name: syn_volumes},
        present_regions(real_volumes, config.key_regions),
        out / "volume_vs_age.png",
    )
    return traj.merge(dist, on=["region", "tissue"], how="left")
