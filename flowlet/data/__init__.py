"""The shared data layer: cohorts, NIfTI I/O, preprocessing, MNI grids, templates and atlases, the phantom cohort.

``bap`` and ``analysis`` import from here and from nothing else in ``flowlet``.
"""

from flowlet.data.cohort import (
    MAX_AGE_YEARS,
    Cohort,
    CohortError,
    load_cohort,
    mni_affine_for_shape,
    normalize_sex,
    normalize_subject_id,
    read_image,
    save_cohort_table,
)
from flowlet.data.nifti import NiftiError, Volume, load_volume, save_volume
from flowlet.data.preprocessing import (
    PadResult,
    centre_crop,
    centre_pad,
    crop_start,
    minmax_to_unit,
    reorient_to_ras,
    resample_like,
    robust_normalize,
    zscore,
)
from flowlet.data.splits import DEFAULT_FRACTIONS, split_subjects, train_val_split

__all__ = [
    "DEFAULT_FRACTIONS",
    "MAX_AGE_YEARS",
    "Cohort",
    "CohortError",
    "NiftiError",
    "PadResult",
    "Volume",
    "centre_crop",
    "centre_pad",
    "crop_start",
    "load_cohort",
    "load_volume",
    "minmax_to_unit",
    "mni_affine_for_shape",
    "normalize_sex",
    "normalize_subject_id",
    "read_image",
    "reorient_to_ras",
    "resample_like",
    "robust_normalize",
    "save_cohort_table",
    "save_volume",
    "split_subjects",
    "train_val_split",
    "zscore",
]
