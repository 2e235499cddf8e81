"""Choosing the device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; what the CPU is."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# The vector extensions that decide which kernels run (fp32 AVX2 / AVX-512, int8 VNNI, bf16 AMX)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.cache
def cpu_bf16_problem() -> str | None:
    """Why bf16 autocast cannot train here (oneDNN's bf16 LSTM needs AVX-512 bf16 or AMX), or None."""
    lstm = torch.nn.LSTM(8, 8, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 8))
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:80]
    return None


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


def cpu_description() -> str:
    """The CPU's model name, its logical CPUs and which of ``CPU_FLAGS`` it has: printed with every
    benchmark figure, since the kind of CPU changes them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU (no /proc/cpuinfo)"
    lines = info.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    count = sum(line.startswith("processor") for line in lines)
    return f"{model}, {count} logical CPUs, {' '.join(f for f in CPU_FLAGS if f in flags) or 'no AVX2'}"
