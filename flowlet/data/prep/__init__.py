"""Bring-your-own-data preprocessing: raw T1w scans into the model's space (``flowlet-prep``).

Reorientation to RAS, N4 bias correction and affine registration to a packaged MNI template (ANTs, the ``prep``
extra), resampling onto the MNI grid, brain extraction and QC. The output is a BIDS-derivatives cohort that
:func:`flowlet.data.cohort.load_cohort` reads.
"""

from flowlet.data.prep.ants_backend import ANTS_MISSING, ants_affine_to_ras, require_ants
from flowlet.data.prep.qc import QC_MEASURES, qc_table, write_montage
from flowlet.data.prep.run import PrepReport, find_scans, run_prep
from flowlet.data.prep.subject import (
    SPACE_LABELS,
    PrepConfig,
    RegisteredScan,
    ScanJob,
    ScanResult,
    output_names,
    prepare_scan,
    register_scan,
    verify_scan,
)

__all__ = [
    "ANTS_MISSING",
    "QC_MEASURES",
    "SPACE_LABELS",
    "PrepConfig",
    "PrepReport",
    "RegisteredScan",
    "ScanJob",
    "ScanResult",
    "ants_affine_to_ras",
    "find_scans",
    "output_names",
    "prepare_scan",
    "qc_table",
    "register_scan",
    "require_ants",
    "run_prep",
    "verify_scan",
    "write_montage",
]
