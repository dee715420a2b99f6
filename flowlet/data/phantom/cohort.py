"""Write a deterministic ageing-phantom cohort as a BIDS-style folder.

Subject ``i`` (0-based) draws its demographics and anatomy from ``SeedSequence(seed, spawn_key=(i,))`` (the
``i``-th child of ``SeedSequence(seed).spawn``), so a subject does not depend on ``n`` or on the order of
generation, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data import keys
from flowlet.data.io import write_json_atomic, write_table_atomic
from flowlet.data.nifti import save_volume
from flowlet.data.phantom.config import PhantomConfig
from flowlet.data.phantom.subject import make_phantom

logger = logging.getLogger(__name__)

__all__ = ["AgeHistogram", "age_histogram", "subject_label", "write_phantom_cohort"]

#: Default histogram: dense 20–40, sparse under 20 and over 70, like typical studies (ages 8–90).
_SKEWED_EDGES = (8.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
_SKEWED_WEIGHTS = (0.07, 0.30, 0.26, 0.12, 0.09, 0.07, 0.05, 0.04)
_UNIFORM_RANGE = (8.0, 90.0)
_AGE_DECIMALS = 2


@dataclass(frozen=True)
class AgeHistogram:
    """Piecewise-uniform age distribution.

    Attributes:
        edges: ``(K + 1,)`` increasing bin edges in years.
        weights: ``(K,)`` non-negative bin probabilities (sum to 1).
        name: where it came from (``skewed``, ``uniform`` or a file path).
    """

    edges: tuple[float, ...]
    weights: tuple[float, ...]
    name: str

    def sample(self, rng: np.random.Generator) -> float:
        """One age in years, rounded to 0.01."""
        k = int(rng.choice(len(self.weights), p=np.asarray(self.weights)))
        return round(float(rng.uniform(self.edges[k], self.edges[k + 1])), _AGE_DECIMALS)


def age_histogram(spec: str | os.PathLike = "skewed") -> AgeHistogram:
    """``"skewed"`` (default), ``"uniform"`` (8–90) or a TSV file with bins.

    The file has columns ``age_min``, ``age_max`` and either ``count`` or ``proportion`` (one row per bin,
    non-overlapping; weights are normalised).

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    if str(spec) == "skewed":
        return AgeHistogram(_SKEWED_EDGES, _SKEWED_WEIGHTS, "skewed")
    if str(spec) == "uniform":
        return AgeHistogram(_UNIFORM_RANGE, (1.0,), "uniform")
    return _histogram_from_file(Path(spec))


def _histogram_from_file(path: Path) -> AgeHistogram:
    expected = "expected a TSV with columns age_min, age_max and count or proportion"
    if not path.is_file():
        raise ValueError(f"age histogram '{path}': not 'skewed', 'uniform' or an existing file ({expected})")
    try:
        frame = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the age histogram ({exc}); {expected}") from exc
    weight_col = next((c for c in ("count", "proportion") if c in frame.columns), None)
    if weight_col is None or not {"age_min", "age_max"} <= set(frame.columns):
        raise ValueError(f"{path}: columns {list(frame.columns)}; {expected}")
    values = frame[["age_min", "age_max", weight_col]].apply(pd.to_numeric, errors="coerce")
    if len(values) == 0 or values.isna().any().any():
        raise ValueError(f"{path}: every row needs numeric age_min, age_max and {weight_col}")
    lo, hi, w = (values[c].to_numpy(float) for c in ("age_min", "age_max", weight_col))
    order = np.argsort(lo)
    lo, hi, w = lo[order], hi[order], w[order]
    if np.any(hi <= lo) or np.any(lo[1:] < hi[:-1]) or lo[0] < 0 or hi[-1] > 120:
        raise ValueError(f"{path}: bins must satisfy 0 <= age_min < age_max <= 120 and must not overlap")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{path}: column '{weight_col}' must be non-negative with a positive total")
    # Gaps between bins become zero-weight bins so that edges stay one increasing sequence.
    edges, weights = [lo[0]], []
    for a, b, weight in zip(lo, hi, w):
        if a > edges[-1]:
            edges.append(a)
            weights.append(0.0)
        edges.append(b)
        weights.append(weight)
    weights_arr = np.asarray(weights) / np.sum(weights)
    return AgeHistogram(tuple(float(e) for e in edges), tuple(float(x) for x in weights_arr), str(path))


def subject_label(index: int, n: int) -> str:
    """``0001``-style label of subject ``index`` (0-based) in a cohort of ``n`` (at least 4 digits)."""
    return f"{index + 1:0{max(4, len(str(n)))}d}"


def _demographics(
    index: int, seed: int, hist: AgeHistogram, sites: int, age: float | None = None
) -> tuple[float, str, int, np.random.SeedSequence]:
    subject_seq = np.random.SeedSequence(seed, spawn_key=(index,))
    demo_seq, anatomy_seq = subject_seq.spawn(2)
    rng = np.random.default_rng(demo_seq)
    drawn = hist.sample(rng)  # drawn even when the age is given, so sex and site come from the same stream
    age = drawn if age is None else round(float(age), _AGE_DECIMALS)
    sex = "M" if rng.random() < 0.5 else "F"
    site = int(rng.integers(sites))
    return age, sex, site, anatomy_seq


def write_phantom_cohort(
    out_dir: str | os.PathLike,
    n: int,
    *,
    age_hist: str | os.PathLike = "skewed",
    voxel_size: int = 2,
    sites: int = 3,
    seed: int = 0,
    progress: bool = True,
    config: PhantomConfig | None = None,
    tissue_maps: bool = False,
    ages: Sequence[float] | None = None,
    label_prefix: str = "",
) -> Path:
    """Generate ``n`` phantom subjects and write them as a BIDS-style data set.

    Layout: ``dataset_description.json``, ``participants.tsv`` (participant_id, age, sex, site), ``dseg.tsv``
    (index, name of the label map), ``code/phantom_config.json`` (the resolved configuration) and per subject
    ``sub-XXXX/anat/sub-XXXX_{T1w,dseg}.nii.gz`` plus ``sub-XXXX_volumes.tsv`` (region, tissue, volume_mm3).

    Args:
        out_dir: output folder (created; existing files with the same names are replaced atomically).
        n: number of subjects.
        age_hist: ``"skewed"``, ``"uniform"`` or a histogram TSV (see :func:`age_histogram`).
        voxel_size: 2 or 4 mm.
        sites: number of sites (at most the number in the config).
        seed: cohort seed.
        progress: show a progress bar.
        config: phantom configuration (default: packaged YAML); its ``voxel_size`` is replaced by ``voxel_size``.
        tissue_maps: also write the true tissue probabilities ``sub-XXXX_label-{CSF,GM,WM}_probseg.nii.gz`` (for
            validating segmentations; ``flowlet-eval regions`` reports Dice against them).
        ages: the age of every subject (``n`` values), e.g. an exact number per age bin for a balanced test
            cohort; ``age_hist`` is then not used for ages (sex, site and anatomy still come from the seed).
        label_prefix: letters or digits put before every subject number (``sub-<prefix>0001``), so that two
            cohorts can be told apart and their subject ids never collide.

    Returns:
        ``out_dir`` as a Path.

    Example:
        >>> write_phantom_cohort("ph", 20, voxel_size=4, seed=0)  # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if ages is not None and len(ages) != n:
        raise ValueError(f"ages lists {len(ages)} values for n = {n} subjects; expected one age per subject")
    if label_prefix and not label_prefix.isalnum():
        raise ValueError(f"label_prefix {label_prefix!r}: expected letters and digits only (a BIDS label)")
    config = dataclasses.replace(config or PhantomConfig.from_yaml(), voxel_size=voxel_size)
    if not 1 <= sites <= len(config.sites):
        raise ValueError(
            f"sites must be between 1 and {len(config.sites)} (sites in the config), got {sites}"
        )
    hist = age_histogram(age_hist)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in _progress(range(n), progress):
        age = None if ages is None else ages[i]
        rows.append(_write_subject(out, i, n, seed, hist, sites, config, tissue_maps, age, label_prefix))
    participants = pd.DataFrame(rows, columns=["participant_id", keys.AGE, keys.SEX, keys.SITE])
    write_table_atomic(out / "participants.tsv", participants)
    _write_dataset_files(out, config, hist, n=n, seed=seed, sites=sites, ages=ages, label_prefix=label_prefix)
    logger.info("wrote %d phantom subjects to %s", n, out)
    return out


def _progress(items: range, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="phantom subjects", unit="subject")


def _write_subject(
    out: Path,
    i: int,
    n: int,
    seed: int,
    hist: AgeHistogram,
    sites: int,
    config: PhantomConfig,
    tissue_maps: bool = False,
    given_age: float | None = None,
    label_prefix: str = "",
) -> tuple[str, float, str, str]:
    age, sex, site, anatomy_seq = _demographics(i, seed, hist, sites, given_age)
    subject = make_phantom(age, sex=sex, site=site, seed=anatomy_seq, config=config)
    participant = f"sub-{label_prefix}{subject_label(i, n)}"
    anat = out / participant / "anat"
    save_volume(anat / f"{participant}_T1w.nii.gz", subject.image, subject.affine, dtype=np.float32)
    save_volume(anat / f"{participant}_dseg.nii.gz", subject.labels, subject.affine, dtype=np.int16)
    write_table_atomic(anat / f"{participant}_volumes.tsv", subject.volumes)
    if tissue_maps:
        for tissue, array in subject.tissue.items():
            name = f"{participant}_label-{tissue.upper()}_probseg.nii.gz"
            save_volume(anat / name, array, subject.affine, dtype=np.float32)
    return participant, age, sex, subject.site


def _write_dataset_files(
    out: Path,
    config: PhantomConfig,
    hist: AgeHistogram,
    *,
    n: int,
    seed: int,
    sites: int,
    ages: Sequence[float] | None = None,
    label_prefix: str = "",
) -> None:
    from flowlet.data.grid import mni_grid
    from flowlet.data.phantom.anatomy import phantom_anatomy

    table = phantom_anatomy(mni_grid(config.voxel_size)).table
    write_table_atomic(out / "dseg.tsv", table[["index", "name"]])
    write_json_atomic(
        out / "dataset_description.json",
        {
            "Name": "FlowLet ageing phantom",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "GeneratedBy": [
                {"Name": "flowlet-phantoms", "Description": "deterministic synthetic brain-ageing cohort"}
            ],
            "License": "Derived from ICBM152 2009a and Harvard-Oxford (FSL licence) templates",
        },
    )
    write_json_atomic(
        out / "code" / "phantom_config.json",
        {
            "n": n,
            "seed": seed,
            "sites": sites,
            "age_histogram": dataclasses.asdict(hist),
            "ages": None if ages is None else [round(float(a), _AGE_DECIMALS) for a in ages],
            "label_prefix": label_prefix,
            "config": config.to_dict(),
        },
    )
