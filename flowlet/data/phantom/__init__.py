"""The ageing phantom: a deterministic synthetic brain-ageing cohort with known ground truth (DATA.md).

``make_phantom`` builds one subject; ``write_phantom_cohort`` writes a BIDS-style folder of them.
"""

from __future__ import annotations

from flowlet.data.phantom.cohort import AgeHistogram, age_histogram, subject_label, write_phantom_cohort
from flowlet.data.phantom.config import STRUCTURES, LifespanCurve, PhantomConfig, SiteContrast
from flowlet.data.phantom.subject import INTRACRANIAL, PhantomSubject, make_phantom

__all__ = [
    "INTRACRANIAL",
    "STRUCTURES",
    "AgeHistogram",
    "LifespanCurve",
    "PhantomConfig",
    "PhantomSubject",
    "SiteContrast",
    "age_histogram",
    "make_phantom",
    "subject_label",
    "write_phantom_cohort",
]
