"""A graceful stop on SIGTERM, what a batch scheduler, a shutdown or `kill` sends before it kills, and on
Ctrl-C (SIGINT) in `run`, which then leaves the same as SIGTERM.

The command line installs the handler for the commands that train (`install`; `run` with `interrupt=True`). The handler only sets a
flag; the training loop reads it between steps (a Python attribute read, no sync) and stops: the epoch in
progress is dropped, the state of the last epoch boundary (kept in host memory, bench/core/checkpoints.py) is
written as the run's checkpoint when the run has a checkpoint folder, and the run is recorded
`interrupted`. The grid starts no further run; the command exits with 128 + the signal (143 for SIGTERM,
130 for Ctrl-C), as a process killed by the signal would, after one line saying what was kept. Running the
same command again resumes. A second signal while stopping is not caught: a second SIGTERM ends the process
at once, a second Ctrl-C raises KeyboardInterrupt (the command's "error: interrupted").
"""

from __future__ import annotations

import signal
import threading

EXIT_CODE = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM

_state = {"signal": None}


def install(second_ends: bool = True, interrupt: bool = False) -> None:
    """Catch SIGTERM in this process from now on (main thread only; elsewhere a no-op); with `interrupt`,
    Ctrl-C (SIGINT) too.

    `second_ends=False` (a study's local workers) catches every SIGTERM: a worker may get two at once, its
    process group's and the one its driver passes on, and must still record its trial.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal if second_ends else _on_every_signal)
        if interrupt:
            signal.signal(signal.SIGINT, _on_signal)


def _on_signal(signum, _frame) -> None:
    _state["signal"] = signum
    # A second signal ends the process at once: SIGTERM by its default action, Ctrl-C by KeyboardInterrupt.
    signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


def _on_every_signal(signum, _frame) -> None:
    _state["signal"] = signum


def requested() -> bool:
    """Whether a SIGTERM (or a caught Ctrl-C) has arrived: the loop, the grid and the tuner stop at their next boundary."""
    return _state["signal"] is not None


def reason() -> str:
    return "interrupted (Ctrl-C)" if _state["signal"] == signal.SIGINT else "terminated (SIGTERM)"


def exit_code() -> int:
    """128 + the signal that stopped the command, as a shell reports for a process the signal ended."""
    return 128 + (_state["signal"] or signal.SIGTERM)


def reset() -> None:
    """Forget a SIGTERM or Ctrl-C (tests; a long-lived process that handled one)."""
    _state["signal"] = None
