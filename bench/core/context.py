"""Execution context of a run: what else the machine was doing and what it was, recorded beside the timings.

A second per epoch means little without its context: on a shared virtual machine the same epoch can take
twice as long an hour later, and two runs sharing two cores with one thread each are not comparable with
one run alone. `start()` is called where a run begins (after its thread count is set), `finish()`
where it ends; the record keeps the result under "context" (docs/records.md). The cost tables compare two
methods only where `comparable_key` of their records is equal.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CONTEXT_SCHEMA = 1


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not every platform has it
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _faiss_version() -> str | None:
    try:
        import faiss

        return faiss.__version__
    except ImportError:
        return None


def start(spec, device: torch.device) -> dict:
    """The context at the start of a run: call after the run's thread count has been set."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "schema": CONTEXT_SCHEMA,
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu_name": gpu,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        # Runs in flight on this machine during the run, this one included: the grid sets it on the spec.
        "concurrency": int(getattr(spec, "concurrency", 1) or 1),
        "loadavg_start": _loadavg(),
        "loadavg_end": None,
        "torch": torch.__version__,
        "faiss": _faiss_version(),
    }


def finish(context: dict) -> dict:
    """The context with the load average at the end of the run."""
    return {**context, "loadavg_end": _loadavg()}


def machine(context: dict | None) -> str | None:
    """What the timings ran on: the GPU's name for a CUDA run, the CPU model otherwise."""
    if not context:
        return None
    return context.get("gpu_name") or context.get("cpu_model")


def comparable_key(context: dict | None) -> tuple | None:
    """(device, machine, threads, concurrency): two runs' costs are compared only where these are equal.

    None for a record without context (written before it was recorded): its key is unknown, so it is
    comparable with nothing.
    """
    if not context:
        return None
    return (context.get("device"), machine(context), context.get("threads"), context.get("concurrency"))


def describe(context: dict | None) -> str:
    """One short cell: `2 threads, 1 in flight, load 0.5→1.9` or `context unknown`."""
    if not context:
        return "context unknown"
    text = f"{context.get('threads')} thr, {context.get('concurrency')} in flight"
    start_load, end_load = context.get("loadavg_start"), context.get("loadavg_end")
    if start_load and end_load:
        text += f", load {start_load[0]:.1f}→{end_load[0]:.1f}"
    return text
