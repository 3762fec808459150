"""The one exception family for user errors: the CLI prints these as one line, no traceback."""

__all__ = [
    "VggfeatError",
    "ImageError",
    "WeightsError",
    "StoreError",
    "SettingsMismatch",
    "OutputError",
    "DatasetError",
]


class VggfeatError(Exception):
    """A user-facing error: says what is wrong and what to do, in one line."""


class ImageError(VggfeatError):
    """An image could not be decoded or is unusable; recorded per image, the run goes on."""


class WeightsError(VggfeatError):
    """Weights are missing, unreadable, or do not fit the requested net."""


class StoreError(VggfeatError):
    """A feature store is unreadable or malformed; names the HDF5 key."""


class SettingsMismatch(VggfeatError):
    """Two sets of settings (a store and a command, or two stores) disagree."""


class OutputError(VggfeatError):
    """An output file could not be written (disk full, read-only, permission, I/O error)."""


class DatasetError(VggfeatError):
    """A dataset root does not hold what its protocol needs; says what was expected where."""
