"""Cost accounting: phase timers that are right on a GPU, and a run's peak memory.

Timers synchronise the device at phase boundaries only (never inside a training step), so a phase's
seconds include the kernels it queued. Peak memory is the run's own: on CUDA, torch's peak allocated and
reserved bytes plus the process's NVML reading (faiss allocates outside torch's allocator); on CPU, the
peak resident set size since the run started, which stays correct when Ray reuses a worker process
(the kernel's high-water mark is reset at the start of the run; where that is not allowed, a sampling
thread measures it).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

PHASES = ("estep", "train", "eval")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The phases whose seconds are the training cost (what the paper's Table 2 counts): evaluation is not.
TRAINING_PHASES = ("estep", "train")


class PhaseTimer:
    """Accumulates wall-clock seconds per phase, and the process's CPU seconds of the training phases;
    `lap()` returns and clears the current epoch's.

    The CPU seconds (time.process_time: every thread of the process) sit beside the wall seconds because on
    shared cores the wall seconds also count the time a run waited for a core that other work held."""

    def __init__(self, device: torch.device):
        self.device = device
        self.current: dict[str, float] = defaultdict(float)
        self.current_cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        synchronize(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            synchronize(self.device)
            self.current[name] += time.perf_counter() - start
            self.current_cpu[name] += time.process_time() - cpu_start

    def lap(self) -> dict[str, float]:
        out = {f"{p}_s": round(self.current.get(p, 0.0), 6) for p in PHASES}
        out["training_cpu_s"] = round(sum(self.current_cpu.get(p, 0.0) for p in TRAINING_PHASES), 6)
        self.current, self.current_cpu = defaultdict(float), defaultdict(float)
        return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    """The kernel's peak RSS (VmHWM) of this process, or None where /proc has no such field."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs). False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Measures the peak memory of the code between `start()` and `stop()`."""

    def __init__(self, device: torch.device, sample_every_s: float = 0.05):
        self.device = device
        self.sample_every_s = sample_every_s
        self._sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_handle = None
        self._nvml_peak = 0
        self._result: dict | None = None
        self._rss_start = 0
        self._utilisation: list[int] = []  # NVML GPU utilisation samples, percent

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # an earlier run in this process must not count in this run's peak
            torch.cuda.reset_peak_memory_stats(self.device)
            self._nvml_handle = _nvml_handle(self.device)
            self.sample()
            if self._nvml_handle is not None:  # GPU utilisation, sampled while the run lasts
                self._thread = threading.Thread(target=self._utilisation_loop, daemon=True)
                self._thread.start()
            return
        self._rss_start = _rss_bytes()  # in-process runs after others start from their retained heap
        self._hwm_ok = _reset_hwm()
        if not self._hwm_ok:
            self._sampled_peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample_loop, daemon=True)
            self._thread.start()

    def _utilisation_loop(self) -> None:
        import pynvml

        while not self._stop.wait(self.sample_every_s):
            try:
                self._utilisation.append(pynvml.nvmlDeviceGetUtilizationRates(self._nvml_handle).gpu)
            except Exception:  # a driver that stops answering ends sampling, not the run
                return

    def current(self) -> int:
        """Memory held now: bytes allocated by torch on CUDA, the process's RSS on CPU."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _rss_bytes()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.sample_every_s):
            self._sampled_peak = max(self._sampled_peak, _rss_bytes())

    def sample(self) -> None:
        """Take an NVML reading now (called at phase boundaries, where faiss may have allocated)."""
        if self._nvml_handle is not None:
            self._nvml_peak = max(self._nvml_peak, _nvml_process_bytes(self._nvml_handle) or 0)

    def stop(self) -> dict:
        """The peak since start(); later calls return the same reading."""
        if self._result is None:
            self._result = self._read_peak()
        return self._result

    def _read_peak(self) -> dict:
        self._stop.set()  # ends the sampling thread: GPU utilisation on CUDA, RSS where VmHWM is unavailable
        if self._thread is not None:
            self._thread.join()
        if self.device.type == "cuda":
            self.sample()
            util = self._utilisation
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            nvml = self._nvml_peak or None
            return {
                "kind": "cuda",
                "peak_memory_bytes": max(reserved, nvml or 0),
                "torch_allocated_peak_bytes": allocated,
                "torch_reserved_peak_bytes": reserved,
                "nvml_peak_bytes": nvml,
                "rss_peak_bytes": None,
                # Device-wide (NVML cannot split it by process): the share of time a kernel was running.
                "gpu_utilisation_mean_percent": round(sum(util) / len(util), 1) if util else None,
                "gpu_utilisation_samples": len(util),
            }
        if self._thread is not None:
            peak = max(self._sampled_peak, _rss_bytes())
            how = "sampled"
        else:
            peak = _hwm_bytes() or _rss_bytes()
            how = "vmhwm"
        return {
            "kind": "rss",
            "rss_method": how,
            "peak_memory_bytes": peak,
            "rss_peak_bytes": peak,
            "rss_start_bytes": self._rss_start,
            "torch_allocated_peak_bytes": None,
            "torch_reserved_peak_bytes": None,
            "nvml_peak_bytes": None,
        }


def _nvml_handle(device: torch.device):
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # NVML is optional: no library, no driver support, or no permission
        return None


def _nvml_process_bytes(handle) -> int | None:
    try:
        import pynvml

        pid = os.getpid()
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid:
                return int(proc.usedGpuMemory or 0)
    except Exception:
        return None
    return None
