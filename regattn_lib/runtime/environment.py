"""The device, the backbone's precision and the numbers read from the environment."""

from __future__ import annotations

import os
from typing import Any

import torch

#: Backbone precisions: ``auto`` is fp16 autocast on CUDA and fp32 on the CPU.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (or ``None``): CUDA when available, else the CPU; else ``torch.device(device)``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``'fp32'``, ``'fp16'`` or ``'bf16'``: what ``precision`` means on ``device``.

    ``"auto"`` is fp16 on CUDA and fp32 on the CPU (CPU fp16 kernels are emulated and slow);
    ``"fp16"`` and ``"bf16"`` force autocast on any device, so the GPU's numerics can be
    checked on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def env_number(name: str, default: int | float, kind: type = int) -> Any:
    """``kind($name)`` when the variable is set (must be > 0 for int, >= 0 for float), else
    ``default``; a bad value raises ``ValueError`` naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number, got {raw!r}") from None
    if value < (1 if kind is int else 0):
        raise ValueError(f"${name} must be {'> 0' if kind is int else '>= 0'}, got {raw!r}")
    return value
