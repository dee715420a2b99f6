"""The study configuration: frozen dataclasses read from ``configs/study/<name>.yaml`` with ``yaml.safe_load``.

Sections: ``cohort`` (phantoms or a path), ``test`` (optional external test cohort: balanced phantoms or a path),
``split``, ``generator`` (checkpoint or training config), ``augment``, ``bap``, ``eval``, ``report``. Unknown keys and wrong types are refused with the file, section and key named.
The ``augment`` and ``bap`` settings are checked at load by the functions that their stages run, so that a bad
value stops the study before its first stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowlet.data.config import ConfigTypeError, build_section, to_plain
from flowlet.data.templates import list_atlases
from pipelines.augment import GenerationSettings

__all__ = ["StudyConfig", "StudyConfigError", "load_study_config", "study_config_from_dict"]


class StudyConfigError(ValueError):
    """The study configuration is invalid; the message names the file, section and key."""


@dataclass(frozen=True)
class PhantomSection:
    n: int = 200
    voxel_size: int = 4
    age_hist: str = "skewed"
    sites: int = 3
    seed: int = 0


@dataclass(frozen=True)
class CohortSection:
    """Either ``path`` (anything ``flowlet.data.load_cohort`` reads) or ``phantoms`` (generated)."""

    path: str | None = None
    phantoms: PhantomSection | None = None


@dataclass(frozen=True)
class TestPhantomSection:
    """A balanced phantom test cohort: ``per_bin`` subjects in every ``bin_width``-year bin that the training
    cohort's ages span (ages uniform inside each bin, clipped to the training cohort's age range).

    ``voxel_size`` and ``sites`` default to the training cohort's (for a cohort path: its image voxel size and 3
    sites); ``label_prefix`` keeps subject ids apart.
    """

    per_bin: int = 20
    bin_width: float = 10.0
    seed: int = 1001
    voxel_size: int | None = None
    sites: int | None = None
    label_prefix: str = "test"


@dataclass(frozen=True)
class TestSection:
    """An external test cohort: ``path`` (anything ``flowlet.data.load_cohort`` reads) or ``phantoms``.

    When given, the training cohort is split into train/val only (``split.fractions`` train and val, rescaled)
    and every test scan comes from this cohort. Its subject ids must differ from the training cohort's.
    """

    path: str | None = None
    phantoms: TestPhantomSection | None = None


@dataclass(frozen=True)
class SplitSection:
    """Subject-level split shared by every stage (FlowLet and augmentation see only ``train``).

    With an external ``test`` cohort only the first two fractions (train, val) are used, rescaled to sum to 1.
    """

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    age_bin_width: float = 10.0
    stratify_site: bool = True


@dataclass(frozen=True)
class GeneratorSection:
    """A checkpoint (``demo`` = the shipped 4 mm model, or a file) or a training config to run on the train split."""

    checkpoint: str | None = "demo"
    train_config: str | None = None
    train_overrides: tuple[str, ...] = ()
    config_path: str | None = None
    condition_ranges_path: str | None = None


@dataclass(frozen=True)
class AugmentSection(GenerationSettings):
    """:class:`pipelines.augment.GenerationSettings` with the study's defaults (10-year bins, ratio 1)."""

    bin_width: float = 10.0
    synthetic_ratio: float | None = 1.0
    batch_size: int = 8


@dataclass(frozen=True)
class BapSection:
    """Brain-age comparison: a packaged ``configs/bap`` name or a YAML path, arms and seeds.

    ``arms`` (``real``, ``oversample``, ``reweight``, ``synthetic:R``, ``synthetic-filtered:R``; see
    :mod:`bap.arms`) replaces the older ``ratios`` (0 = ``real``, R = ``synthetic:R``), which is used when
    ``arms`` is empty. ``filtered_synthetic`` is the cohort of the ``synthetic-filtered:R`` arms.
    """

    config: str = "demo"
    arms: tuple[str, ...] = ()
    ratios: tuple[float, ...] = (0.0, 0.5, 1.0)
    seeds: int = 3
    filtered_synthetic: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def arm_list(self):
        """The parsed arms (:class:`bap.arms.Arm`)."""
        from bap.arms import parse_arms, ratios_to_arms

        return parse_arms(list(self.arms)) if self.arms else ratios_to_arms(list(self.ratios))


@dataclass(frozen=True)
class EvalSection:
    atlas: str = "harvard-oxford"
    registration: str = "demons"
    key_regions: tuple[str, ...] = ("lateral ventricles", "hippocampus", "total grey matter")
    quality: bool = True
    privacy: bool = True
    max_images: int = 400
    jobs: int = 1

    def measure_options(self):
        """How ``flowlet-eval quality`` measures the images (:class:`pipelines.eval.common.MeasureOptions`, which
        refuses a registration, limit or worker count out of range)."""
        from pipelines.eval.common import MeasureOptions

        return MeasureOptions(
            registration=self.registration, limit=self.max_images, progress=False, jobs=self.jobs
        )


@dataclass(frozen=True)
class ReportSection:
    title: str = "FlowLet augmentation study"
    montage_ages: tuple[float, ...] = (20.0, 40.0, 60.0, 80.0)


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    cohort: CohortSection = field(default_factory=CohortSection)
    test: TestSection | None = None
    split: SplitSection = field(default_factory=SplitSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    bap: BapSection = field(default_factory=BapSection)
    eval: EvalSection = field(default_factory=EvalSection)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def study_config_from_dict(raw: dict[str, Any], *, source: str = "<config>") -> StudyConfig:
    try:
        config = build_section(StudyConfig, raw, source)
    except ConfigTypeError as exc:
        raise StudyConfigError(str(exc)) from exc
    if (config.cohort.path is None) == (config.cohort.phantoms is None):
        raise StudyConfigError(f"{source}: cohort needs exactly one of 'path' or 'phantoms'")
    if config.test is not None:
        t = config.test
        if (t.path is None) == (t.phantoms is None):
            raise StudyConfigError(f"{source}: test needs exactly one of 'path' or 'phantoms'")
        if t.phantoms is not None:
            if t.phantoms.per_bin < 1 or t.phantoms.bin_width <= 0:
                raise StudyConfigError(f"{source}: test.phantoms needs per_bin >= 1 and bin_width > 0")
            if t.phantoms.label_prefix and not t.phantoms.label_prefix.isalnum():
                raise StudyConfigError(f"{source}: test.phantoms.label_prefix must be letters and digits")
        if config.split.fractions[0] <= 0 or config.split.fractions[1] <= 0:
            raise StudyConfigError(f"{source}: split.fractions needs train and val > 0 with a test cohort")
    if (config.generator.checkpoint is None) == (config.generator.train_config is None):
        raise StudyConfigError(f"{source}: generator needs exactly one of 'checkpoint' or 'train_config'")
    if abs(sum(config.split.fractions) - 1.0) > 1e-6 or len(config.split.fractions) != 3:
        raise StudyConfigError(f"{source}: split.fractions must be three numbers summing to 1")
    if not config.bap.arms and not config.bap.ratios:
        raise StudyConfigError(f"{source}: bap.arms must list at least one arm")
    try:
        arms = config.bap.arm_list()
    except ValueError as exc:
        raise StudyConfigError(f"{source}: bap.arms: {exc}") from exc
    if config.bap.seeds < 1:
        raise StudyConfigError(f"{source}: bap.seeds must be >= 1")
    e = config.eval
    if e.atlas not in list_atlases():
        raise StudyConfigError(f"{source}: eval.atlas = {e.atlas!r}; expected one of {list_atlases()}")
    try:
        e.measure_options()
    except ValueError as exc:
        raise StudyConfigError(
            f"{source}: eval needs registration 'demons' or 'none', max_images >= 1 and jobs >= 1; got "
            f"{e.registration!r}, {e.max_images}, {e.jobs}"
        ) from exc
    _check_augment(config.augment, source)
    _check_bap(config.bap, source)
    largest = max((a.ratio for a in arms if a.kind == "synthetic"), default=0.0)
    ratio = config.augment.synthetic_ratio
    if ratio is not None and largest > ratio + 1e-9:
        raise StudyConfigError(
            f"{source}: bap arms use synthetic ratios up to {largest:g} but augment.synthetic_ratio is {ratio:g}; "
            "the augmentation must make at least as many synthetic brains as the largest BAP ratio uses"
        )
    if any(a.kind == "synthetic-filtered" for a in arms) and config.bap.filtered_synthetic is None:
        raise StudyConfigError(
            f"{source}: bap.arms has a synthetic-filtered arm but bap.filtered_synthetic (the filtered synthetic "
            "cohort's folder) is not set"
        )
    return config


def load_bap_config(name: str, overrides: dict[str, Any]):
    """A packaged ``configs/bap`` name or a YAML path, with section overrides applied."""
    from bap.config import load_config, replace
    from configs import config_path

    path = Path(name)
    config = load_config(path if path.suffix in {".yaml", ".yml"} else config_path("bap", name))
    return replace(config, **overrides) if overrides else config


def _check_augment(section: AugmentSection, source: str) -> None:
    """Apply at load the augmentation rules that hold whatever the cohort (planning, target, sampler, seed), with
    the functions that the augment stage runs, so that a bad value stops the study before its first stage."""
    import numpy as np

    from flowlet.augment.plan import check_bin_width, check_budget
    from flowlet.augment.targets import parse_target
    from flowlet.data.cohort_sources import MAX_AGE_YEARS
    from flowlet.sampling import sample_seed

    try:
        check_bin_width(section.bin_width)  # messages start with the field's name
        check_budget(section.synthetic_ratio, section.max_synthetic, section.min_per_bin)
    except ValueError as exc:
        raise StudyConfigError(f"{source}: augment.{exc}") from exc
    try:  # the form of the target and its file; which bins the ages need is known only at the stage
        parse_target(section.target_hist, np.array([0.0, MAX_AGE_YEARS]))
    except ValueError as exc:  # "target_hist 'x': expected ..." or "FILE: ..." (the target's file)
        where = "augment." if str(exc).startswith("target_hist") else "augment.target_hist: "
        raise StudyConfigError(f"{source}: {where}{exc}") from exc
    try:
        section.sampling_config()
    except ValueError as exc:
        message = re.sub(r"SamplingConfig\.(\w+)", lambda m: {"num_steps": "steps"}.get(m[1], m[1]), str(exc))
        raise StudyConfigError(f"{source}: augment.{message}") from exc
    try:
        sample_seed(section.seed, 0)
    except ValueError as exc:
        raise StudyConfigError(f"{source}: augment.seed: {exc}") from exc


def _check_bap(section: BapSection, source: str) -> None:
    """Load the brain-age config and apply its overrides now, as the bap stage will (it runs after augmentation)."""
    try:
        load_bap_config(section.config, {})
    except (OSError, ValueError) as exc:
        raise StudyConfigError(f"{source}: bap.config: {exc}") from exc
    try:
        load_bap_config(section.config, section.overrides)
    except ValueError as exc:
        raise StudyConfigError(f"{source}: bap.overrides: {exc}") from exc


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"{path}: study config not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"{path}: not valid YAML ({exc})") from exc
    return study_config_from_dict(raw or {}, source=str(path))
