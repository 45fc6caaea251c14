"""Fixtures and reporting of the speed suite (`pytest tests/benchmarks -m benchmark_suite`).

- Beauty is loaded once per session, on CUDA when torch sees a GPU (set BENCH_DEVICE=cpu to force the CPU).
- The JSON report (`--benchmark-json=PATH`) carries the machine (CPU model, cores, torch version and
  threads, CUDA device) and the ratios below. A literal `{machine}` in PATH is replaced by a short name of
  the machine (the GPU's name, else the CPU model and core count), and PATH's folder is created if missing,
  so `--benchmark-json=results/benchmarks/bench-{machine}.json` works as is.
- At the end of the session a ratio table is printed after pytest-benchmark's: in each group, the mean of
  the benchmark marked `extra_info["ratio"] = "numerator"` (the published code's way, or the cost ELCRec
  removes) over the one marked "denominator" (ours). Above 1 means ours is faster.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest
import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a container or taskset actually grants
    except AttributeError:
        return os.cpu_count() or 1


def _machine_slug() -> str:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{_cpu_model()} {_usable_cores()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def bench_device() -> torch.device:
    wanted = os.environ.get("BENCH_DEVICE", "auto")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


@pytest.fixture(scope="session")
def beauty_data(device):
    from bench.core.data import SequenceData

    return SequenceData.load("Beauty", device=str(device))


@pytest.fixture(scope="session")
def beauty_seqs(beauty_data) -> list[list[int]]:
    from .reference_impl import user_sequences

    return user_sequences(beauty_data)


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path | None:
    """The published ICLRec Beauty checkpoint (../shared/reference), or None where this checkout lacks it."""
    shared = Path(os.environ.get("BENCH_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    path = shared / "reference" / "ICLRec-Beauty-1.pt"
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------- JSON, ratios
def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    machine_info["bench"] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bench_device": str(bench_device()),
    }


def ratio_rows(benchmarks) -> list[dict]:
    """One row per group that has a numerator and a denominator benchmark, with their means in seconds."""
    by_group: dict[str, dict[str, object]] = {}
    for bench in benchmarks:
        role = (bench.extra_info or {}).get("ratio")
        if role in ("numerator", "denominator") and bench.stats:
            by_group.setdefault(bench.group or "", {})[role] = bench
    rows = []
    for group, pair in sorted(by_group.items()):
        if len(pair) != 2:
            continue
        num, den = pair["numerator"], pair["denominator"]
        rows.append({
            "group": group,
            "numerator": num.name,
            "denominator": den.name,
            "numerator_mean_s": num.stats.mean,
            "denominator_mean_s": den.stats.mean,
            "ratio": num.stats.mean / den.stats.mean,
        })
    return rows


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    output_json["ratios"] = ratio_rows(benchmarks)
    session = getattr(config, "_benchmarksession", None)
    # Older pytest-benchmark versions hand over an already opened file here: nothing to resolve then.
    if session is not None and session.json and not hasattr(session.json, "write"):
        # pytest-benchmark opens this path right after this hook: resolve the placeholder, create the folder.
        path = Path(str(session.json).replace("{machine}", _machine_slug()))
        path.parent.mkdir(parents=True, exist_ok=True)
        session.json = path


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter) -> None:
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    rows = ratio_rows(session.benchmarks) if session is not None else []
    if not rows:
        return
    tr = terminalreporter
    tr.section("speed ratios (numerator mean / denominator mean; > 1: the denominator is faster)")
    width = max(len(r["numerator"]) for r in rows)
    dwidth = max(len(r["denominator"]) for r in rows)
    tr.write_line(f"{'group':<14}{'numerator':<{width + 2}}{'denominator':<{dwidth + 2}}{'num s':>10}{'den s':>10}{'ratio':>9}")
    for r in rows:
        tr.write_line(
            f"{r['group']:<14}{r['numerator']:<{width + 2}}{r['denominator']:<{dwidth + 2}}"
            f"{r['numerator_mean_s']:>10.4f}{r['denominator_mean_s']:>10.4f}{r['ratio']:>8.1f}x"
        )
