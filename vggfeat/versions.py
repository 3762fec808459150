"""Software versions recorded in every store and model file (read from package metadata)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["software_versions"]

_PACKAGES = ("vggfeat", "torch", "torchvision", "numpy", "h5py", "scikit-learn", "pillow")


def software_versions() -> dict[str, str]:
    """{package: version} of vggfeat and what it computes with, plus Python."""
    out = {}
    for package in _PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out
