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

Using a cluster (README, "On a Ray cluster"):

    # on the head machine (and `ray start --address=<head>:6379` on every other machine)
    ray start --head --port 6379
    # the driver runs on a node of the cluster (a Ray driver attaches to one)
    python -m bench run --all --address <head>:6379          # or: export RAY_ADDRESS=<head>:6379

The workers import this repository and read the dataset cache from the paths the driver has (sent as
PYTHONPATH and BENCH_DATA_DIR), so every machine needs the repository and the data at the same absolute
paths (a shared filesystem, or the same checkout and `python -m bench data download --all` on each).
Records are written by the driver, so only the driver's machine needs the results directory; mid-run
checkpoints are written by the workers, so a run resumes on another machine only from a shared folder.
Without an address (and no RAY_ADDRESS) a new local Ray is started for the grid and shut down after it.

Faults. Before joining, the address is probed (`_probe`): where no Ray head answers, one line says so within
seconds instead of Ray's minutes of retries. While runs are in flight the head is probed every
PROBE_EVERY_S; a head that stops answering, or a cluster left without a node that can take a run, ends the
grid after LOST_AFTER_S with the runs in flight recorded interrupted. A task whose worker or node dies is run
again once by Ray. After a SIGTERM the tasks are cancelled as Ctrl-C would, so that each writes its last
epoch boundary as its checkpoint, and are recorded interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray

from bench.campaign import reaper
from bench.core import termination
from bench.core.data import REPO_ROOT
from bench.core.errors import BenchError


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


def _fit_runs(resources: dict, cpus_per_run: float | None, gpus_per_run: float | None) -> tuple[float, float, int]:
    """Each run's CPUs and GPUs, defaults filled in (one CPU, and one GPU on a cluster with GPUs), and how many
    runs fit at once; a request no machine can ever satisfy is an error, not an endless wait."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    gpus_per_run = (1.0 if gpus > 0 else 0.0) if gpus_per_run is None else gpus_per_run
    cpus_per_run = 1.0 if cpus_per_run is None else cpus_per_run
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
    return cpus_per_run, gpus_per_run, max(1, slots)


# ------------------------------------------------------------------------------------------ the cluster
NICENESS_VAR = "RAY_worker_niceness"  # Ray's setting of its workers' nice value (default 15)
PROBE_S = 5.0  # how long a probe of the head waits for its answer
PROBE_EVERY_S = 2.0  # while runs are in flight, how often the head is probed
LOST_AFTER_S = 10.0  # how long the head may not answer (or the cluster not fit a run) before the driver gives up
# The start of an HTTP/2 connection: a gRPC server (a Ray head's GCS) answers with its SETTINGS frame.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port)) if sep and port.isdigit() else None


def _probe(host: str, port: int, timeout: float = PROBE_S) -> str | None:
    """None when a gRPC server answers at host:port, as a Ray head does; else why not, in a few words.

    Ray's own connection retries for minutes when nothing answers; this answers in at most 2 x `timeout`.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_HELLO)
            reply = b""
            while len(reply) < 9 and (chunk := sock.recv(9 - len(reply))):
                reply += chunk
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    return None if len(reply) == 9 and reply[3] == 4 else "something that is not a Ray head listens there"


class _Ray:
    """The Ray this driver uses: a cluster it joins (`address`, else $RAY_ADDRESS) or a local Ray started
    here, which is shut down at the end and whose processes end with the driver (bench/campaign/reaper.py)."""

    def __init__(self, address: str | None, log_to_driver: bool = False) -> None:
        self.started_here, self.watchdog = False, None
        if not ray.is_initialized():
            address, source = (address, "--address") if address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
            if address:
                self._join(address, source)
            else:
                self._start(log_to_driver)
        self.address = ray.get_runtime_context().gcs_address
        self.head = _host_port(self.address)
        self.bad_since: float | None = None
        self.next_probe = 0.0

    @staticmethod
    def _init(**options) -> None:
        # Ray's default (token authentication on for a local cluster) is kept; only its notice saying so,
        # printed on every start, is kept off the terminal.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(runtime_env={"env_vars": _worker_env()}, logging_level=logging.WARNING, **options)
        finally:
            if main and previous is not None:  # ray.init makes SIGTERM a plain exit; the driver's own stop comes back
                signal.signal(signal.SIGTERM, previous)

    def _join(self, address: str, source: str) -> None:
        target = _host_port(address) if "://" not in address and address != "auto" else None
        if "://" not in address and address != "auto" and target is None:
            raise BenchError(f"{source} {address!r} is not a Ray address: give <host>:<port> of the head")
        if target is not None and (why := _probe(*target)) is not None:
            raise BenchError(
                f"no Ray cluster answers at {address} ({source}): {why}; start its head there "
                f"(ray start --head --port {target[1]}), or leave out --address and RAY_ADDRESS for a local Ray"
            )
        try:
            self._init(address=address)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise BenchError(f"cannot join the Ray cluster at {address} ({source}): {_first_line(exc)}") from None

    def _start(self, log_to_driver: bool) -> None:
        reaper.sweep_orphans()  # a local Ray of an earlier driver killed together with its watchdog
        token = reaper.new_token()
        self.watchdog = reaper.start_watchdog(token)
        os.environ[reaper.TOKEN_VAR] = token  # inherited by every process of this Ray, and by nothing else
        # Ray runs its workers at nice 15 unless told otherwise: the runs, which are the work, would yield to
        # anything else on the machine and their timings would depend on it. They run at the driver's own
        # priority instead, as with --executor local (`nice python -m bench ...` still lowers them all).
        own_niceness = NICENESS_VAR not in os.environ
        if own_niceness:
            os.environ[NICENESS_VAR] = "0"
        try:
            # address="local": a new Ray, never one a `ray start` left running on this machine. Nobody looks at
            # a dashboard of a one-off local Ray; worker output would interleave with the bar.
            self._init(address="local", include_dashboard=False, log_to_driver=log_to_driver)
        except BaseException:
            reaper.stop_watchdog(self.watchdog)  # which ends what a failed start left running
            raise
        finally:
            del os.environ[reaper.TOKEN_VAR]
            if own_niceness:
                del os.environ[NICENESS_VAR]
        self.started_here = True

    def close(self) -> None:
        if self.started_here:
            ray.shutdown()
            reaper.stop_watchdog(self.watchdog)

    def trouble(self, cpus: float, gpus: float) -> str | None:
        """Why the cluster cannot go on, once that has lasted LOST_AFTER_S: its head does not answer, or no
        node left can hold a task of `cpus` CPUs and `gpus` GPUs (nodes lost). None while all is well."""
        now = time.monotonic()
        if now < self.next_probe:
            return None
        self.next_probe = now + PROBE_EVERY_S
        why = _probe(*self.head, timeout=PROBE_EVERY_S) if self.head else None
        if why is not None:
            why = f"the Ray cluster at {self.address} stopped answering ({why})"
        else:
            have = ray.cluster_resources()
            if have.get("CPU", 0.0) < cpus or have.get("GPU", 0.0) < gpus:
                why = (f"no node left in the Ray cluster can take a run of {cpus:g} CPU and {gpus:g} GPU "
                       f"(it has {have.get('CPU', 0.0):g} CPU and {have.get('GPU', 0.0):g} GPU: nodes were lost)")
        self.bad_since = None if why is None else (self.bad_since or now)
        return why if why is not None and now - self.bad_since >= LOST_AFTER_S else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


STOP_WAIT_S = 60.0  # after a SIGTERM, how long cancelled tasks get to write their last epoch boundary


def _end_tasks(refs: list, grace_s: float = STOP_WAIT_S) -> None:
    """Cancel tasks, with `grace_s` > 0 first as Ctrl-C would (a KeyboardInterrupt in each worker, which the
    training loop answers by writing its last epoch boundary, bench/core/train.py) and waiting up to `grace_s`
    for them to end; then end the ones still running."""
    if not refs:
        return
    if grace_s > 0:
        for ref in refs:
            ray.cancel(ref, force=False)
    _, running = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
    for ref in running:  # never a task that has ended: Ray 2.60's driver aborts on a forced cancel of one
        ray.cancel(ref, force=True)


def run_workers_on_ray(
    fn: Callable, worker_args: list[tuple], *, address: str | None, cpus_per_worker: float, use_gpus: bool
) -> list[str]:
    """Run `fn(*args)` once per tuple as Ray tasks (the tuning study's workers); returns problems found.

    With GPUs in the cluster and `use_gpus`, the workers share them (fractional GPUs when there are fewer
    GPUs than workers). After a SIGTERM (bench/core/termination.py) the workers are cancelled, which stops
    their trials as interrupted, and this returns once they ended (at most STOP_WAIT_S).
    """
    cluster = _Ray(address, log_to_driver=True)
    pending: dict = {}
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0) if use_gpus else 0.0
        per_worker_gpu = min(1.0, gpus / len(worker_args)) if gpus else 0.0
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=per_worker_gpu, max_retries=0)(fn)
        pending = {task.remote(*args): i for i, args in enumerate(worker_args)}
        problems, stopped = [], False
        while pending:
            if termination.requested() and not stopped:
                _end_tasks(list(pending))
                stopped = True
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    problems.append(f"worker {i} stopped: {termination.reason()}")
                except ray.exceptions.RayError as exc:
                    problems.append(f"worker {i} failed: {str(exc).strip().splitlines()[-1][:300]}")
            if pending and (why := cluster.trouble(cpus_per_worker, per_worker_gpu)) is not None:
                raise BenchError(f"{why}; the study's running trials are run again when it is next opened")
        return problems
    finally:
        _end_tasks(list(pending), 0.0)
        cluster.close()


def _stop_tasks(pending: dict, on_done: Callable[[dict], None], reason: str, grace_s: float = STOP_WAIT_S) -> None:
    """Cancel every running task (see `_end_tasks`) and record each run interrupted with what its checkpoint
    holds; a task that finished meanwhile keeps its own record."""
    from bench.core.outcomes import interrupted_record

    _end_tasks(list(pending), grace_s)
    for ref, spec in list(pending.items()):
        pending.pop(ref)
        try:
            record = ray.get(ref, timeout=0)
        except Exception:  # cancelled (or lost): the driver records it from its checkpoint
            record = interrupted_record(spec, reason)
        on_done(record)


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
    After a SIGTERM (bench/core/termination.py) no run starts and the running ones are cancelled and recorded
    interrupted at their last epoch boundary. A task whose worker or node dies is run again once (Ray's
    `max_retries`; from its checkpoint when it has one the driver can read); a second loss records it failed
    with that reason. When the cluster's head stops answering, or no node left can take a run, for
    LOST_AFTER_S, the runs in flight are recorded interrupted and BenchError says why.
    `on_start(slots)`, if given, is called once Ray is up with the number of runs that fit at once.
    `task_device` forces the device of every task (tests: "cpu" under logical GPUs). A local Ray started
    here is shut down at the end; a cluster (address or RAY_ADDRESS) is left running.
    """
    cluster = _Ray(address)
    pending: dict = {}
    try:
        cpus_per_run, gpus_per_run, slots = _fit_runs(ray.cluster_resources(), cpus_per_run, gpus_per_run)
        if on_start is not None:
            on_start(slots)
        task = _run_task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=1)
        while True:
            while len(pending) < slots and not termination.requested() and (spec := take()) is not None:
                pending[task.remote(spec, cpus_per_run, gpus_per_run, slots, task_device)] = spec
            if not pending:
                return
            if (ready := _next_finished(pending, on_done, deadline)) is None:
                return
            if ready:
                _record_finished(ready[0], pending, on_done)
            else:
                _give_up_if_cluster_lost(cluster, pending, on_done, cpus_per_run, gpus_per_run)
    finally:
        _end_tasks(list(pending), 0.0)  # interrupted: do not leave runs training for nobody
        cluster.close()


def _next_finished(pending: dict, on_done: Callable[[dict], None], deadline: float | None) -> list | None:
    """Wait at most a second for a task to finish; returns the finished ones (at most one), or None once a
    SIGTERM, or the deadline and its grace, stopped every task and recorded it interrupted."""
    from bench.campaign.schedule import GRACE_S

    # Short waits, so that a SIGTERM to the driver (bench/core/termination.py) is seen within a second.
    left = math.inf if deadline is None else deadline + GRACE_S - time.time()
    ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(left, 1.0)))
    if termination.requested():
        _stop_tasks(pending, on_done, termination.reason())
        return None
    if not ready and left <= 0:  # past the deadline and its grace: stop what is left, record it interrupted
        _stop_tasks(pending, on_done, f"cancelled {GRACE_S:.0f} s after the time budget", grace_s=0.0)
        return None
    return ready


def _record_finished(ref, pending: dict, on_done: Callable[[dict], None]) -> None:
    """Hand a finished task's record to `on_done`; a task that raised lost its worker or node twice."""
    from bench.core.outcomes import failure_record

    spec = pending.pop(ref)
    try:
        record = ray.get(ref)
    except Exception as exc:  # tasks never raise: its worker or node died, and again on the retry
        lost = f"the Ray worker or node running it was lost, also on its retry: {_first_line(exc)}"
        record = failure_record(spec, RuntimeError(lost))
    on_done(record)


def _give_up_if_cluster_lost(
    cluster: _Ray, pending: dict, on_done: Callable[[dict], None], cpus_per_run: float, gpus_per_run: float
) -> None:
    """Once the cluster has been in trouble for LOST_AFTER_S, record the runs in flight interrupted and
    raise BenchError saying why."""
    from bench.core.outcomes import interrupted_record

    if (why := cluster.trouble(cpus_per_run, gpus_per_run)) is not None:
        for spec in pending.values():
            on_done(interrupted_record(spec, why))
        raise BenchError(f"{why}; {len(pending)} run(s) in flight recorded interrupted; "
                         "run the same command again once the cluster is back")
