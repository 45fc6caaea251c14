"""Execution context of a run: what else the machine was doing and what it was, recorded beside the timings.

A second per epoch means little without its context: on a shared virtual machine the same epoch can take
twice as long an hour later, and two runs sharing two cores with one thread each are not comparable with
one run alone. `start()` is called where a run begins (after its thread count is set), `finish()`
where it ends; the record keeps the result under "context" (docs/records.md). The cost tables compare two
methods only where `comparable_key` of their records is equal.

A run made before the context existed has one that `python -m bench records migrate` filled from the record's
own `env` (`not_recorded`): device, GPU name, torch threads, CPU count and versions, every other key null and
`recorded` false. `recorded(context)` is the one test the readers make of it.

A run continued from checkpoints across invocations (a campaign) may have run its epochs on several machines:
`segments` lists each invocation's first epoch and context, and the cost tables compare epochs by the segment
they ran in (`epoch_keys`).

Runs in flight are counted on the host: every training run holds a lock file in a folder of the user's cache
for as long as it trains (`in_flight_here`), and `runs_in_flight` counts the live ones, so that two grids, two
campaign lanes or a tuning study beside a grid see each other. A run counts them when it starts and every
second while it trains (`HostRuns`); each epoch keeps the most it saw (`in_flight`). A context written before
the host count existed counted only its own grid's runs (`in_flight_counted` "grid"): a lower bound, kept
apart from host counts by `comparable_key`.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import platform
import socket
import subprocess
import threading
from pathlib import Path

import torch

from bench.core.files import check_writable, lock_holder
from bench.core.paths import cache_folder

# 2: "recorded" says whether the run took it; 3: "segments" (bench/core/migrate.py upgrades); 4: runs in flight
# counted on the host ("in_flight_counted"), not only in the run's grid (a schema-3 context reads as "grid")
CONTEXT_SCHEMA = 4
# What a segment keeps of the context its invocation started in: enough for `comparable_key` and `machine`.
SEGMENT_KEYS = ("recorded", "device", "cpu_model", "cpu_count", "gpu_name", "threads", "interop_threads",
                "concurrency", "in_flight_counted", "loadavg_start", "speed_probe_s")


# ------------------------------------------------------------------------------------------------ speed probe
# Machines that report the same model name (a cloud VM's "AMD EPYC", say) can differ in speed by half or more,
# by generation or by what their neighbours run, and a campaign continues a run on whichever machine it gets.
# The probe times one fixed CPU workload at the start of every invocation, in the run's own thread setting,
# so that a comparison of epochs run on different machines can say how fast each side's machines were. Its
# shapes are those of a SASRec training step on Beauty (64 sequences x 50 positions x 64 dimensions, attention
# over 50 positions, scores against 12,000 items). Changing the workload changes what the number means:
# give the key another name then.
PROBE_REPEATS = 5


def _probe_workload(x: torch.Tensor, w: torch.Tensor, items: torch.Tensor) -> None:
    h = torch.relu(x @ w) @ w.T  # position-wise feed-forward, 64 -> 256 -> 64
    q = h.view(64, 50, 64)
    attention = torch.softmax(q @ q.transpose(1, 2) / 8.0, dim=-1) @ q
    _ = attention[:, -1] @ items.T  # last positions against every item


def speed_probe() -> float | None:
    """Seconds the fixed probe workload takes on the CPU in this process's thread setting: the fastest of
    PROBE_REPEATS timings (the least disturbed by other work), about 15 ms each on one core. None where it
    cannot run."""
    import time

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64 * 50, 64, generator=generator)
    w = torch.randn(64, 256, generator=generator)
    items = torch.randn(12_000, 64, generator=generator)
    try:
        with torch.no_grad():
            _probe_workload(x, w, items)  # warm-up: first-call allocations and kernel selection
            timings = []
            for _ in range(PROBE_REPEATS):
                t0 = time.perf_counter()
                _probe_workload(x, w, items)
                timings.append(time.perf_counter() - t0)
    except RuntimeError:
        return None
    return round(min(timings), 5)


# ------------------------------------------------------------------------------------- runs in flight on the host
def in_flight_folder() -> Path:
    """Where training runs hold their lock files: `$BENCH_IN_FLIGHT`, else the user's cache."""
    return cache_folder("BENCH_IN_FLIGHT", "in-flight")


_registrations = itertools.count()
IN_FLIGHT_SAMPLE_S = 1.0  # how often a training run counts the host's runs: a run of a second or more is seen


class HostRuns:
    """The most runs in flight on this host since the last `take()`, counted every IN_FLIGHT_SAMPLE_S by a
    daemon thread (an epoch keeps what it shared the machine with, not only what ran at its ends)."""

    def __init__(self) -> None:
        self._most = runs_in_flight()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count_until_stopped, name="runs-in-flight", daemon=True)
        self._thread.start()

    def _count_until_stopped(self) -> None:
        while not self._stop.wait(IN_FLIGHT_SAMPLE_S):
            self._seen(runs_in_flight())

    def _seen(self, count: int) -> int:
        with self._lock:
            self._most = max(self._most, count)
            return self._most

    def take(self) -> int:
        """The most seen since the last take (a count now included); the next period starts from now's."""
        now = runs_in_flight()
        most = self._seen(now)
        with self._lock:
            self._most = now
        return most

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def in_flight_here():
    """Count this run among the host's runs in flight for the block: a file named after the host and process,
    locked (flock) while the run trains. The lock goes with the process, so a run killed outright stops
    counting at once; its file is removed by the next count. Yields the run's `HostRuns`."""
    # One line (BenchError) where the folder cannot be written, before any work is spent.
    folder = check_writable(in_flight_folder(), "runs-in-flight folder ($BENCH_IN_FLIGHT)")
    name = f"{socket.gethostname()}.{os.getpid()}.{next(_registrations)}"
    # Locked under a name the counter skips, then renamed: the counter never sees an unlocked live file.
    pending = folder / f".{name}"
    fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(pending, folder / name)
        host_runs = HostRuns()
        try:
            yield host_runs
        finally:
            host_runs.stop()
            (folder / name).unlink(missing_ok=True)
    finally:
        os.close(fd)


def runs_in_flight() -> int:
    """How many runs train on this host now (those in `in_flight_here` blocks), removing dead runs' files."""
    folder = in_flight_folder()
    host = socket.gethostname()
    try:  # <host>.<pid>.<n>: a host name may hold dots, so it is what precedes the last two
        names = [n for n in os.listdir(folder) if not n.startswith(".") and n.rsplit(".", 2)[0] == host]
    except FileNotFoundError:
        return 0
    live = 0
    for name in names:
        if lock_holder(folder / name) is not None:
            live += 1
        else:  # its run just ended, or nobody holds it: its process died
            (folder / name).unlink(missing_ok=True)
    return live


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the platform has none."""
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


def _gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """The software and machine a run used, as its record's "env" keeps them (the method adds its own facts)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": _faiss_version(),
        "device_name": _gpu_name(device) or platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "git_commit": _git_commit(),
    }


def start(spec, device: torch.device) -> dict:
    """The context at the start of a run: call after the run's thread count has been set."""
    gpu = _gpu_name(device)
    return {
        "schema": CONTEXT_SCHEMA,
        "recorded": True,
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu_name": gpu,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        # Runs in flight on this machine during the run, this one included: the host's count (the run is in
        # an `in_flight_here` block), or the grid's where that is larger (a grid's runs on other hosts).
        "concurrency": max(int(getattr(spec, "concurrency", 1) or 1), runs_in_flight()),
        "in_flight_counted": "host",
        "loadavg_start": load_average(),
        "loadavg_end": None,
        "niceness": niceness(),
        "speed_probe_s": speed_probe(),
        "torch": torch.__version__,
        "faiss": _faiss_version(),
    }


def niceness() -> int | None:
    """The nice value of this process (0 normal, 19 lowest priority), or None where the platform has none.

    On a machine shared with other work it decides how much of the CPU a run gets."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return None


def finish(context: dict, segments: list[dict], epochs: list[dict] = ()) -> dict:
    """The context with the load average at the end of the run and the run's `segments`; its runs in flight
    the most it saw, at its start or at any of this invocation's `epochs` (their `in_flight`)."""
    seen = [e["in_flight"] for e in epochs if e.get("in_flight")]
    return {**context, "concurrency": max([context["concurrency"], *seen]), "loadavg_end": load_average(),
            "segments": segments}


def segment(context: dict, first_epoch: int) -> dict:
    """One invocation's part of a run: the epoch it started at and the context it started in. A run that a
    campaign continues from checkpoints has one per invocation, each possibly on another machine; its
    checkpoint carries the segments so far, and the record keeps them all under "segments"."""
    return {"first_epoch": first_epoch, **{k: context.get(k) for k in SEGMENT_KEYS}}


def unknown_segment(device: str, first_epoch: int = 0) -> dict:
    """Epochs whose context is not known: those a checkpoint written before segments existed holds."""
    return {"first_epoch": first_epoch, **{k: None for k in SEGMENT_KEYS}, "recorded": False, "device": device}


def _segment_of_each_epoch(context: dict, epochs: list[dict]) -> list[dict | None]:
    """The segment each epoch ran in (None for epochs before the first segment)."""
    starts = sorted(context["segments"], key=lambda s: s["first_epoch"])
    out, segment_now = [], None
    for epoch in range(len(epochs)):
        while starts and starts[0]["first_epoch"] <= epoch:
            segment_now = starts.pop(0)
        out.append(segment_now)
    return out


def epoch_keys(context: dict, epochs: list[dict]) -> list[tuple | None]:
    """The `comparable_key` of each epoch: that of the segment it ran in, with the runs in flight the epoch
    saw (its `in_flight`) where its segment counted them on the host."""
    keys = []
    for row, segment_now in zip(epochs, _segment_of_each_epoch(context, epochs)):
        if segment_now is None:  # epochs before the first segment: none are recorded so
            keys.append(None)
            continue
        seen = row.get("in_flight") if segment_now.get("in_flight_counted") == "host" else None
        keys.append(comparable_key({**segment_now, "concurrency": max(segment_now["concurrency"] or 0, seen)}
                                   if seen else segment_now))
    return keys


def epoch_speed_probes(context: dict, epochs: list[dict]) -> list[float | None]:
    """The speed probe of the segment each epoch ran in (None where the segment has none: runs made before the
    probe, and epochs before the first segment)."""
    return [s.get("speed_probe_s") if s else None for s in _segment_of_each_epoch(context, epochs)]


def not_recorded(device: str, env: dict) -> dict:
    """The context of a run that recorded none (made before contexts existed), from what its record's `env`
    says: device, GPU name, torch threads (taken during the run), CPU count, torch and faiss. The CPU model,
    interop threads, runs in flight and load were never recorded: null. `recorded` false says so."""
    context = {
        "schema": CONTEXT_SCHEMA,
        "recorded": False,
        "device": device,
        "cpu_model": None,
        "cpu_count": env.get("cpu_count"),
        "gpu_name": env.get("device_name") if device == "cuda" else None,
        "threads": env.get("torch_threads"),
        "interop_threads": None,
        "concurrency": None,
        "loadavg_start": None,
        "loadavg_end": None,
        "torch": env.get("torch"),
        "faiss": env.get("faiss"),
    }
    return {**context, "segments": [segment(context, 0)]}


def recorded(context: dict) -> bool:
    """Whether the run took its context itself; false for one `not_recorded` filled in, whose runs in flight
    are unknown."""
    return context["recorded"]


def machine(context: dict) -> str:
    """What the timings ran on: the GPU's name for a CUDA run, the CPU model otherwise."""
    return context["gpu_name"] or context["cpu_model"] or f"{context['device']} (model not recorded)"


def comparable_key(context: dict) -> tuple | None:
    """(device, machine, threads, runs in flight, how they were counted: "host" or "grid"): two runs' costs
    are compared only where these are equal.

    None for a context the run did not record: its runs in flight are unknown, so it is comparable with nothing.
    """
    if not recorded(context):
        return None
    counted = context.get("in_flight_counted") or "grid"  # a schema-3 context counted its grid's runs only
    return (context["device"], machine(context), context["threads"], context["concurrency"], counted)
