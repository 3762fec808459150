"""Device names ('auto', 'cpu', 'cuda', 'cuda:N') -> torch devices; what each one runs natively.

Besides resolving names (with one-line errors), this module answers the questions the engine
asks of the hardware: does it run bf16 natively (so ``--precision auto`` picks it), and what
is it (for benchmarks and logs).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from vggfeat.errors import VggfeatError

__all__ = [
    "PRECISION_CHOICES",
    "PRECISIONS",
    "resolve_device",
    "native_bf16",
    "resolve_precision",
    "describe_device",
]

# 'auto' resolves to one of the others (see resolve_precision); stores record the resolved one.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
# The compute dtype of each resolved precision (autocast's for bf16 and fp16).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def _cpu_has(*features: str) -> bool:
    """Whether the CPU has any of ``features`` (cpuinfo names, e.g. 'avx512_bf16')."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6
    try:
        found = get() if get is not None else {}
    except RuntimeError:
        return False
    return any(bool(found.get(name)) for name in features)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic units (not emulation through fp32).

    GPUs: Ampere (compute capability 8.0) or later. CPUs: AVX512-BF16 or AMX tiles. Elsewhere
    bf16 is converted to fp32 inside every kernel, or falls back to slow reference code (on
    an AVX2-only CPU a bf16 convolution runs about 10x slower than fp32).
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return _cpu_has("avx512_bf16", "amx_bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where ``device`` runs it natively, else 'fp32'; others unchanged."""
    if precision not in PRECISION_CHOICES:
        raise VggfeatError(
            f"Unknown precision {precision!r}. Valid: {', '.join(PRECISION_CHOICES)}."
        )
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> dict[str, Any]:
    """What ``device`` is, for benchmark records and logs: name, memory, native bf16, threads."""
    info: dict[str, Any] = {"device": str(device), "native_bf16": native_bf16(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info.update(
            name=_cpu_model(),
            cores=os.cpu_count(),
            threads=torch.get_num_threads(),
            capability=torch.backends.cpu.get_cpu_capability(),
        )
    return info
