"""The one place that names the keys of a subject record and of a cohort table.

Every package (``flowlet``, ``bap``, ``analysis``, ``pipelines``) refers to these constants instead of
spelling the strings, so that a cohort read by :mod:`flowlet.data.cohort` means the same thing everywhere.
"""

from __future__ import annotations

SUBJECT_ID = "subject_id"
SESSION_ID = "session_id"
PATH = "path"
IMAGE = "image"
AGE = "age"
SEX = "sex"
SITE = "site"
SPLIT = "split"

#: Columns every validated cohort table has, in this order.
COHORT_COLUMNS: tuple[str, ...] = (SUBJECT_ID, SESSION_ID, PATH, AGE, SEX, SITE)
#: Columns that identify one scan; two rows never share them.
SCAN_KEYS: tuple[str, ...] = (SUBJECT_ID, SESSION_ID)
#: Value used where sex, site or session is not known.
UNKNOWN = "n/a"
