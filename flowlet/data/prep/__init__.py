"""Bring-your-own-data preprocessing: raw T1w scans into the model's space (``flowlet-prep``).

Reorientation to RAS, N4 bias correction, brain extraction by registration of a packaged MNI brain template and
the brain-to-brain affine (ANTs, the ``prep`` extra), resampling onto the MNI grid, and QC with pass/fail limits. The output is a BIDS-derivatives cohort that
:func:`flowlet.data.cohort.load_cohort` reads.
"""

from flowlet.data.prep.ants_backend import ANTS_MISSING, ants_affine_to_ras, require_ants
from flowlet.data.prep.config import SPACE_LABELS, PrepConfig
from flowlet.data.prep.measures import QcLimits, qc_problems
from flowlet.data.prep.montage import write_contact_sheet, write_scan_montage
from flowlet.data.prep.qc import QC_COLUMNS, QC_MEASURES, qc_table
from flowlet.data.prep.register import (
    RegisteredScan,
    register_scan,
    scan_measures,
    template_mask_in_native,
)
from flowlet.data.prep.run import PrepReport, find_scans, run_prep
from flowlet.data.prep.subject import (
    REJECTED_DIR,
    ScanJob,
    ScanResult,
    output_names,
    prepare_scan,
    read_prep_record,
    verify_scan,
)

__all__ = [
    "ANTS_MISSING",
    "QC_COLUMNS",
    "QC_MEASURES",
    "REJECTED_DIR",
    "SPACE_LABELS",
    "PrepConfig",
    "PrepReport",
    "QcLimits",
    "RegisteredScan",
    "ScanJob",
    "ScanResult",
    "ants_affine_to_ras",
    "find_scans",
    "output_names",
    "prepare_scan",
    "qc_problems",
    "qc_table",
    "read_prep_record",
    "register_scan",
    "require_ants",
    "run_prep",
    "scan_measures",
    "template_mask_in_native",
    "verify_scan",
    "write_contact_sheet",
    "write_scan_montage",
]
