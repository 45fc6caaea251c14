"""Where a study's workers run: in the driver's process, as local processes, or as Ray tasks.

Every worker runs `optimize` (bench/tuning/trials.py) against the shared storage. Local workers die with
the driver (Linux: PR_SET_PDEATHSIG; elsewhere a thread watching the parent), so a killed `tune` leaves no
orphan training for nobody; the trials they held are failed and re-run the next time the study is opened
(bench/tuning/studies.py).

A SIGTERM to the driver (bench/core/termination.py) reaches every worker: local workers catch it themselves
(a batch scheduler signals the whole process group) and the driver passes it on to them (a `kill` of the
driver alone); Ray workers are cancelled (bench/campaign/executors.py). Each stops its trial at the last
epoch boundary, marked to run again, and takes no further trial.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

from bench.core import termination
from bench.core.errors import BenchError
from bench.tuning.studies import StudySetup
from bench.tuning.trials import StudyStopped, optimize

STOP_WAIT_S = 60.0  # after a SIGTERM, how long local workers get to record their trial before they are ended


def _die_with(parent: int) -> None:
    """Make this process end when `parent` does, so that a killed driver leaves no orphan worker."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            pr_set_pdeathsig = 1
            if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the driver died before the prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _local_worker(setup: StudySetup, n_trials: int, worker: int, trials_before: int, parent: int) -> None:
    # Entry point of a spawned process: a user error is one line, as on the command line.
    _die_with(parent)
    termination.install(second_ends=False)
    try:
        optimize(setup, n_trials, worker, trials_before)
    except StudyStopped:  # SIGTERM: its trial is recorded (interrupted); the driver says the one line
        raise SystemExit(termination.EXIT_CODE) from None
    except BenchError as exc:
        print(f"error: worker {worker}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: its trial is recorded (interrupted); the driver says the one line
        raise SystemExit(130) from None


def split_trials(trials: int, parallel: int) -> list[int]:
    """`trials` shared among at most `parallel` workers: exactly `trials` in total, none left empty."""
    shares = [trials // parallel + (1 if i < trials % parallel else 0) for i in range(parallel)]
    return [s for s in shares if s > 0]


def run_local(setup: StudySetup, shares: list[int], trials_before: int) -> list[str]:
    """The workers as local processes; returns a line per worker that did not finish cleanly."""
    # spawn, not fork: the parent has torch (OpenMP pools, maybe CUDA) and Optuna's threads initialised,
    # which a forked child inherits in a broken state.
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_local_worker, args=(setup, n, i, trials_before, os.getpid()), name=f"tune-worker-{i}")
        for i, n in enumerate(shares)
    ]
    for p in procs:
        p.start()
    try:
        _join(procs)
    except KeyboardInterrupt:
        for p in procs:  # the children got the same SIGINT; give them a moment to record their trial
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()  # its trial stays RUNNING until the study is next opened: then FAIL and re-run
        raise
    return [f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0]


def _join(procs: list) -> None:
    """Wait for the workers; after a SIGTERM, pass it on to them and give them STOP_WAIT_S to stop."""
    while not termination.requested() and (alive := [p for p in procs if p.is_alive()]):
        alive[0].join(timeout=0.5)
    if not termination.requested():
        return
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)  # the workers take a second one (the group's and this) as one
    until = time.monotonic() + STOP_WAIT_S
    for p in procs:
        p.join(timeout=max(0.0, until - time.monotonic()))
        if p.is_alive():
            p.terminate()


def _ray_worker(setup: StudySetup, n_trials: int, worker: int, trials_before: int) -> int:
    optimize(setup, n_trials, worker, trials_before)
    return n_trials


def run_ray(setup: StudySetup, shares: list[int], trials_before: int, address: str | None) -> list[str]:
    """The same workers as Ray tasks, on a local Ray or the cluster at `address` / $RAY_ADDRESS."""
    # Imported here, not at the top: the GPU machine of this project has no Ray, and `bench.tuning.tune` must
    # import (and `--executor local` work) there. bench/campaign/executors.py is the one module that imports ray.
    from bench.campaign.executors import run_workers_on_ray

    args = [(setup, n, i, trials_before) for i, n in enumerate(shares)]
    return run_workers_on_ray(
        _ray_worker, args, address=address, cpus_per_worker=setup.threads or 1, use_gpus=setup.device != "cpu"
    )


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None

