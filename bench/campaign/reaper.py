"""The processes of a local Ray end with the grid (or study) that started it, even after `kill -9` of it.

When the driver ends normally, `ray.shutdown()` stops the Ray it started. When the driver is killed with
SIGKILL, Ray's fate sharing ends the GCS server, the raylet and the workers, but the raylet's two agents
(`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) are left to notice on their own, which takes them about a
minute. So every process of a local Ray started by the harness carries an owner token in its environment
(`BENCH_RAY_OWNER`, set while `ray.init` starts the processes, which pass their environment on to the
agents and workers they start), and:

* a watchdog process (this file, run as a script) holds a pipe from the driver; when the pipe closes,
  because the driver ended in whatever way, it kills every process that carries the token;
* the next local Ray the harness starts first kills the processes whose token names an owner that is no
  longer alive (the watchdog itself was killed as well).

Only processes carrying a token the harness made are ever signalled; other Ray instances on the machine
(other users', other drivers') carry none. Linux only (/proc); elsewhere both are no-ops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

TOKEN_VAR = "BENCH_RAY_OWNER"


def new_token() -> str:
    """`<driver pid>:<its start time>:<random>`: the owner can be told dead even when its pid is reused."""
    return f"{os.getpid()}:{_start_time(os.getpid())}:{uuid.uuid4().hex[:12]}"


def _start_time(pid: int) -> str | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def tokens() -> dict[int, str]:
    """Every process of this user that carries an owner token, with its token."""
    found = {}
    if not os.path.isdir("/proc"):
        return found
    prefix = f"{TOKEN_VAR}=".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():  # root reads every environment: keep to ours
                continue
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:  # gone, or another user's
            continue
        for item in env.split(b"\0"):
            if item.startswith(prefix):
                found[int(name)] = item[len(prefix) :].decode(errors="replace")
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def owned_by(token: str) -> list[int]:
    """The processes carrying `token`, this one and the owner itself excepted."""
    owner = int(token.split(":")[0])
    return [pid for pid, t in tokens().items() if t == token and pid not in (os.getpid(), owner)]


def _owner_alive(token: str) -> bool:
    pid, started = token.split(":")[:2]
    return _start_time(int(pid)) == started if started != "None" else os.path.exists(f"/proc/{pid}")


def sweep_orphans() -> list[int]:
    """Kill the processes of local Rays whose owner is dead; returns their pids."""
    orphans = [pid for pid, t in tokens().items() if pid != os.getpid() and not _owner_alive(t)]
    kill(orphans)
    return orphans


def start_watchdog(token: str) -> subprocess.Popen | None:
    """A process that kills the token's processes once the caller is gone (or closes its stdin)."""
    if not os.path.isdir("/proc"):
        return None
    # A session of its own: a Ctrl-C or a signal to the driver's process group does not end it first.
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), token], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def stop_watchdog(watchdog: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Close the pipe (the watchdog then kills what is left) and wait for it."""
    if watchdog is None:
        return
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def _watch(token: str) -> None:
    sys.stdin.buffer.read()  # returns at EOF: the driver closed the pipe or died
    # Processes may still be starting (a worker being spawned): look again until none is left.
    deadline = time.monotonic() + 5.0
    while (left := owned_by(token)) and time.monotonic() < deadline:
        kill(left)
        time.sleep(0.2)


if __name__ == "__main__":
    _watch(sys.argv[1])
