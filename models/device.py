"""Choosing the torch device (``auto`` is CUDA when present, else the CPU) and counting the CPUs
this process may use."""
from __future__ import annotations

import os

import torch


class DeviceUnavailable(RuntimeError):
    """The requested device is not present on this machine."""


def resolve_device(requested: str) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` to a device; ``cuda`` without CUDA is a ``DeviceUnavailable``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device cuda was requested but CUDA is not available on this machine")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0))
