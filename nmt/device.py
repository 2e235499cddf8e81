"""Choosing the device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """The device ``name`` names; a ValueError (the CLI's ``error: ...``) for one that is unknown or absent."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(name)!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(name)!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available")
    return device
