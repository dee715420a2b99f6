"""Process-level settings for CPU work: keep large tensor buffers inside the process instead of re-mapping them.

With glibc's default settings every allocation above a (dynamic, at most 32 MiB) threshold is a fresh ``mmap`` that is
unmapped again when the tensor is freed, so the next tensor of that size touches brand-new pages and takes one page
fault per 4 KiB. A 112³ batch of 4 volumes is 22 MiB: on the 2-core reference machine its page faults alone cost
more than the Haar transform that fills it (``benchmarks/haar.py`` measures both allocator settings), and a full-size
U-Net forward takes about 3.5 million faults and 8 % of its time (``docs/benchmarks.md``, "allocator").

:func:`tune_cpu_allocator` raises the ``mmap`` threshold to 1 GiB and switches off heap trimming, which is what the
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` environment variables do, but applied at run time so that a
plain ``flowlet-…`` command gets it. Freed buffers are reused by the next tensor of that size; the cost is that the
process keeps its peak heap until it exits (its resident size does not shrink after a large step). The command-line
tools call it once at start-up; a library import never changes the allocator.

Opt out with ``FLOWLET_TUNE_MALLOC=0``. It is also skipped where it does not apply: not glibc (macOS, Windows,
musl), or when the user has configured glibc's allocator already (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``GLIBC_TUNABLES`` set).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD", "allocator_tuned", "tune_cpu_allocator"]

logger = logging.getLogger(__name__)

#: Allocations up to this size come from the reusable heap instead of a fresh ``mmap`` (1 GiB).
MMAP_THRESHOLD = 1 << 30
_INT_MAX = 2**31 - 1
# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_state: dict[str, str] = {}


def _skip_reason() -> str | None:
    if os.environ.get("FLOWLET_TUNE_MALLOC", "1").strip().lower() in {"0", "false", "no", "off"}:
        return "FLOWLET_TUNE_MALLOC is off"
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if user:
        return f"glibc's allocator is configured by the environment ({', '.join(user)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"the C library is not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    return None


def tune_cpu_allocator() -> bool:
    """Make glibc reuse large freed buffers (see the module docstring); idempotent.

    Returns:
        True when the settings are in effect (now or from an earlier call), False when skipped or refused.
    """
    if "result" in _state:
        return _state["result"] == "tuned"
    reason = _skip_reason()
    if reason is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
        except (OSError, AttributeError) as err:
            ok, reason = False, f"mallopt is unavailable ({err})"
        if not ok and reason is None:
            reason = "glibc refused the mallopt settings"
    if reason is None:
        _state["result"] = "tuned"
        logger.debug("allocator: mmap threshold %d bytes, heap trimming off", MMAP_THRESHOLD)
        return True
    _state["result"] = reason
    logger.debug("allocator left at its defaults: %s", reason)
    return False


def allocator_tuned() -> str:
    """``"tuned"``, ``"default"`` (never asked) or why :func:`tune_cpu_allocator` left it alone; for benchmark logs."""
    return _state.get("result", "default")
