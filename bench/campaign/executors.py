"""Runs of the grid (and a study's workers) as Ray tasks: the only module of the project that imports ray.

One Ray task per run spec. Each task trains in a Ray worker process and returns the run record (or a failed
record with its traceback): tasks never raise, so one broken run cannot stop the grid. The driver collects
records with `ray.wait` as they finish and hands each to `on_done`, which writes it; workers write nothing.

Resources. Every task reserves `cpus_per_run` CPUs and `gpus_per_run` GPUs, and Ray starts as many tasks at
once as the cluster's resources allow. Defaults: on a cluster with GPUs one GPU and one CPU per run (or the
packing `bench packing` measured on that GPU model: bench/campaign/grid.py decides), else one CPU per run (a machine
with 2 cores trains 2 runs at once). A run's torch uses `int(cpus_per_run)` threads so
that concurrent runs do not oversubscribe the cores. Fractional GPUs share a device:
`--gpus-per-run 0.25` packs 4 runs onto each GPU (small models leave a GPU mostly idle; each run must fit in
a quarter of the device's memory, which Ray does not enforce).

Using a cluster:

    # on the head machine (and `ray start --address=<head>:6379` on every other machine)
    ray start --head
    # on the driver, anywhere that can reach the head
    python -m bench run --all --address <head>:6379          # or: export RAY_ADDRESS=<head>:6379

The workers import this repository and read the dataset cache from the paths the driver has (sent as
PYTHONPATH and BENCH_DATA_DIR), so every machine needs the repository and the data at the same absolute
paths (a shared filesystem, or the same checkout and `python -m bench data download --all` on each).
Records are written by the driver, so only the driver's machine needs the results directory.
Without an address (and no RAY_ADDRESS) a local Ray is started for the grid and shut down after it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray

from bench.core import termination
from bench.core.errors import BenchError
from bench.core.spec import REPO_ROOT


def _worker_env() -> dict[str, str]:
    """Environment variables every worker needs, with paths made absolute (workers may run elsewhere)."""
    from bench.core.data import cache_dir

    pythonpath = [str(REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    from bench.core.configs import tuned_dir

    env = {"PYTHONPATH": os.pathsep.join(pythonpath), "BENCH_DATA_DIR": str(cache_dir()),
           "BENCH_TUNED_DIR": str(tuned_dir().resolve())}
    mirror = os.environ.get("BENCH_DATA_MIRROR")
    if mirror:
        # A URL prefix is passed as is; a directory is made absolute against the driver's cwd.
        env["BENCH_DATA_MIRROR"] = mirror if "://" in mirror else str(Path(mirror).expanduser().resolve())
    return env


def _run_one(spec, cpus_per_run: float, gpus_per_run: float, slots: int, device: str | None = None) -> dict:
    """Body of a task: one run, its record returned whatever happens."""
    from bench.core import outcomes, train

    device = device or ("cuda" if gpus_per_run > 0 else "cpu")
    spec = replace(spec, num_threads=max(1, int(cpus_per_run)), device=device, concurrency=slots)
    try:
        return train.run(spec, progress=False)
    except Exception as exc:  # reported in the record: the grid goes on
        return outcomes.failure_record(spec, exc)


# max_calls=1: every run gets a fresh worker process. A reused worker keeps the previous run's heap (the
# allocator does not return it to the OS), which would inflate the next run's peak RSS (seen: +70% on
# Beauty ELCRec after an ICLRec run) and carry over torch's global state; a process start costs seconds.
_run_task = ray.remote(max_calls=1)(_run_one)


def _check_fits(resources: dict, cpus_per_run: float, gpus_per_run: float) -> int:
    """How many runs fit at once; a request no machine can ever satisfy is an error, not an endless wait."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise BenchError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    if cpus_per_run > cpus:
        raise BenchError(f"--cpus-per-run {cpus_per_run:g} exceeds the {cpus:g} CPUs of the Ray cluster")
    if gpus_per_run > 0 and gpus_per_run > gpus:
        raise BenchError(
            f"--gpus-per-run {gpus_per_run:g} but the Ray cluster has {gpus:g} GPUs; "
            "use --gpus-per-run 0 on a CPU-only cluster"
        )
    slots = math.floor(cpus / cpus_per_run + 1e-9)
    if gpus_per_run > 0:
        slots = min(slots, math.floor(gpus / gpus_per_run + 1e-9))
    return max(1, slots)


def _connect(address: str | None, log_to_driver: bool = False) -> bool:
    """Connect to the cluster at `address` / $RAY_ADDRESS, or start a local Ray; True if started here."""
    if ray.is_initialized():
        return False
    # Ray's default (token authentication on for a local cluster) is kept; only its notice saying so, printed
    # on every start, is kept off the terminal.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict = {"runtime_env": {"env_vars": _worker_env()}, "logging_level": logging.WARNING}
    if address is None:
        # Nobody looks at a dashboard of a one-off local Ray; worker output would interleave with the bar.
        options.update(include_dashboard=False, log_to_driver=log_to_driver)
    ray.init(address=address, **options)
    return True


def run_workers_on_ray(
    fn: Callable, worker_args: list[tuple], *, address: str | None, cpus_per_worker: float, use_gpus: bool
) -> list[str]:
    """Run `fn(*args)` once per tuple as Ray tasks (the tuning study's workers); returns problems found.

    With GPUs in the cluster and `use_gpus`, the workers share them (fractional GPUs when there are fewer
    GPUs than workers).
    """
    started_here = _connect(address, log_to_driver=True)
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0) if use_gpus else 0.0
        per_worker_gpu = min(1.0, gpus / len(worker_args)) if gpus else 0.0
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=per_worker_gpu, max_retries=0)(fn)
        refs = [task.remote(*args) for args in worker_args]
        problems = []
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                problems.append(f"worker {i} failed: {str(exc).strip().splitlines()[-1][:300]}")
        return problems
    finally:
        if started_here:
            ray.shutdown()


STOP_WAIT_S = 60.0  # after a SIGTERM, how long cancelled tasks get to write their last epoch boundary


def _stop_tasks(pending: dict, on_done: Callable[[dict], None], reason: str) -> None:
    """Cancel every running task (a KeyboardInterrupt in its worker: the training loop writes the last epoch
    boundary as its checkpoint, bench/core/train.py) and record each run interrupted with what its checkpoint holds."""
    from bench.core.outcomes import interrupted_record

    for ref in pending:
        ray.cancel(ref, force=False)
    ray.wait(list(pending), num_returns=len(pending), timeout=STOP_WAIT_S)
    for ref, spec in list(pending.items()):
        ray.cancel(ref, force=True)  # no-op for a task that has ended
        pending.pop(ref)
        on_done(interrupted_record(spec, reason))


def run_specs_on_ray(
    take: Callable[[], object | None],
    *,
    address: str | None,
    cpus_per_run: float | None,
    gpus_per_run: float | None,
    on_done: Callable[[dict], None],
    on_start: Callable[[int], None] | None = None,
    deadline: float | None = None,
    task_device: str | None = None,
) -> None:
    """Run specs as Ray tasks, pulling the next one from `take()` whenever a slot is free, and call
    `on_done(record)` in the driver as each finishes.

    `take()` returns None when nothing (more) can start now; the loop then waits for a running task and asks
    again, and ends when nothing runs and nothing can start. Pulling rather than submitting everything at
    once lets the grid's scheduler pick each run when a slot frees (bench/campaign/schedule.py) and claim it only
    then (bench/campaign/claims.py). After `deadline` (epoch seconds) plus `GRACE_S`, tasks still running are
    cancelled and recorded interrupted; runs stop by themselves at the deadline after their current epoch.
    `on_start(slots)`, if given, is called once Ray is up with the number of runs that fit at once.
    `task_device` forces the device of every task (tests: "cpu" under logical GPUs). A local Ray started
    here is shut down at the end; a cluster (address or RAY_ADDRESS) is left running.
    """
    import time

    from bench.campaign.schedule import GRACE_S
    from bench.core.outcomes import failure_record, interrupted_record

    started_here = _connect(address)
    pending: dict = {}
    try:
        resources = ray.cluster_resources()
        if gpus_per_run is None:
            gpus_per_run = 1.0 if resources.get("GPU", 0.0) > 0 else 0.0
        if cpus_per_run is None:
            cpus_per_run = 1.0
        slots = _check_fits(resources, cpus_per_run, gpus_per_run)
        if on_start is not None:
            on_start(slots)
        task = _run_task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
        while True:
            while len(pending) < slots and (spec := take()) is not None:
                pending[task.remote(spec, cpus_per_run, gpus_per_run, slots, task_device)] = spec
            if not pending:
                return
            # Short waits, so that a SIGTERM to the driver (bench/core/termination.py) is seen within a second.
            left = math.inf if deadline is None else deadline + GRACE_S - time.time()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(left, 1.0)))
            if termination.requested():
                _stop_tasks(pending, on_done, termination.reason())
                return
            if not ready and left <= 0:  # past the deadline and its grace: stop what is left, record it interrupted
                for ref, spec in list(pending.items()):
                    ray.cancel(ref, force=True)
                    pending.pop(ref)
                    on_done(interrupted_record(spec, f"cancelled {GRACE_S:.0f} s after the time budget"))
                return
            if not ready:
                continue
            ref = ready[0]
            spec = pending.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as exc:  # tasks never raise: the worker died (killed for memory, node lost)
                record = failure_record(spec, exc)
            on_done(record)
    finally:
        for ref in pending:  # interrupted: do not leave runs training for nobody
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
