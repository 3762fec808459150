"""Device names ('auto', 'cpu', 'cuda', 'cuda:N') -> torch devices, with one-line errors."""

from __future__ import annotations

import torch

from vggfeat.errors import VggfeatError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise VggfeatError(f"Unknown device {name!r}. Valid: auto, cpu, cuda, cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VggfeatError(f"Device {name!r} was asked for but no CUDA GPU is visible; use cpu.")
    return device
