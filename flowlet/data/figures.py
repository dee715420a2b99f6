"""The one way library code gets ``matplotlib.pyplot``: a file-writing backend unless the user chose one.

Figures here are written to files (PNG in reports, QC montages), never shown, so an interactive backend is not
needed and may fail (no display on a cluster node, a GUI toolkit in a worker thread). But a backend the user
already chose (``MPLBACKEND``, a ``matplotlibrc``, ``matplotlib.use`` or an imported ``pyplot``, as in a notebook)
is left alone: switching it would close their open figures.
"""

from __future__ import annotations

import sys
from types import ModuleType

__all__ = ["pyplot"]

#: Backend selected when nothing else was chosen: renders to files, needs no display.
FILE_BACKEND = "Agg"


def _chosen_backend() -> str | None:
    import matplotlib

    try:
        return matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10 has no auto_select
        return matplotlib.rcParams._get_backend_or_none()


def pyplot() -> ModuleType:
    """``matplotlib.pyplot``, selecting the non-interactive ``Agg`` backend only when none was chosen.

    Example:
        >>> plt = pyplot()
        >>> fig, ax = plt.subplots()
        >>> plt.close(fig)
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and _chosen_backend() is None:
        matplotlib.use(FILE_BACKEND)
    import matplotlib.pyplot as plt

    return plt
