"""A graceful stop on SIGTERM, what a batch scheduler, a shutdown or `kill` sends before it kills.

The command line installs the handler for the commands that train (`install`). The handler only sets a
flag; the training loop reads it between steps (a Python attribute read, no sync) and stops: the epoch in
progress is dropped, the state of the last epoch boundary (kept in host memory, bench/core/checkpoints.py) is
written as the run's checkpoint when the run has a checkpoint folder, and the run is recorded
`interrupted`. The grid starts no further run; the command exits with 143 (128 + SIGTERM), as a process
killed by the signal would, after one line saying what was kept. Running the same command again resumes.
A second SIGTERM while stopping is not caught: the default action ends the process at once.
"""

from __future__ import annotations

import signal
import threading

EXIT_CODE = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM

_state = {"signal": None}


def install(second_ends: bool = True) -> None:
    """Catch SIGTERM in this process from now on (main thread only; elsewhere a no-op).

    `second_ends=False` (a study's local workers) catches every SIGTERM: a worker may get two at once, its
    process group's and the one its driver passes on, and must still record its trial.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal if second_ends else _on_every_signal)


def _on_signal(signum, _frame) -> None:
    _state["signal"] = signum
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once


def _on_every_signal(signum, _frame) -> None:
    _state["signal"] = signum


def requested() -> bool:
    """Whether a SIGTERM has arrived: the loop, the grid and the tuner stop at their next boundary."""
    return _state["signal"] is not None


def reason() -> str:
    return "terminated (SIGTERM)"


def reset() -> None:
    """Forget a SIGTERM (tests; a long-lived process that handled one)."""
    _state["signal"] = None
