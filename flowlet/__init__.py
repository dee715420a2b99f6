"""FlowLet: age-conditioned 3D brain MRI synthesis with flow matching in a 3D Haar wavelet domain."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowlet-toolkit")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
