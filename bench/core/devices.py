"""Device names as users give them (`auto`, `cpu`, `cuda`, `cuda:N`) and the torch device each one means."""

from __future__ import annotations

import torch

from bench.core.errors import BenchError


def check_device(name: str) -> str:
    if name != "auto" and name != "cpu" and not name.startswith("cuda"):
        raise BenchError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return name


def device_kind(name: str) -> str:
    """"cuda" or "cpu": what `resolve_device(name)` gives, without failing on a device that is missing."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def resolve_device(name: str) -> torch.device:
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)
