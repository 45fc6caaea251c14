"""Run claims: two grids on one results folder share the work instead of each running everything.

Before a grid starts a run it claims the run's id: `<results>/claims/<run_id>.claim`, created with
O_CREAT|O_EXCL (atomic: of two grids only one can create it), holding the owner's host, pid and a token.
While the grid lives, a heartbeat thread touches its claims every `HEARTBEAT_S` seconds. A claim is
**stale** when its owner is a dead process on this host, or when its heartbeat is older than `STALE_AFTER_S`
(an owner on another machine that stopped touching it). A stale claim is taken over: renamed away (atomic:
of two grids racing for it only one rename succeeds) and claimed anew. The claim is removed when the run's
record is written, or when the grid stops (normally, by an error or Ctrl-C); a `kill -9` leaves it, and the
next grid finds it stale.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from bench.core.errors import BenchError

HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class Claims:
    """The claims one grid holds under `<results>/claims/`; use as a context manager."""

    def __init__(self, results_dir: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.dir = Path(results_dir) / "claims"
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifetime ---------------------------------------------------------------------------------------
    def __enter__(self) -> Claims:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for rid in list(self.held):
            self.release(rid)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                for rid in self.held:
                    try:
                        os.utime(self._path(rid))
                    except OSError:  # removed under us (a grid that judged it stale): the run still ends here
                        pass

    # -- claims -----------------------------------------------------------------------------------------
    def _path(self, rid: str) -> Path:
        return self.dir / f"{rid}.claim"

    def try_claim(self, rid: str) -> bool:
        """True when this grid now holds `rid` (new, or taken over from a stale owner)."""
        path = self._path(rid)
        for _ in range(2):  # a second try after taking over a stale claim
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale(path):
                    return False
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump({**self.owner, "claimed_at": time.time()}, fh)
            except OSError as exc:  # a full disk: no half-written claim stays behind to look like a dead one
                path.unlink(missing_ok=True)
                raise BenchError(f"cannot write claim {path}: {exc.strerror or exc}") from None
            with self._lock:
                self.held.add(rid)
            return True
        return False

    def release(self, rid: str) -> None:
        with self._lock:
            self.held.discard(rid)
        path = self._path(rid)
        holder = self.read(path)
        if holder is None or holder.get("token") == self.owner["token"]:  # never remove another grid's claim
            path.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def is_stale(self, path: Path) -> bool:
        holder = self.read(path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: not stale, simply gone (the caller retries the create)
        if holder is None:
            # Unreadable: a claimer killed between create and write. Give it the heartbeat's grace.
            return age > self.stale_after_s
        if holder.get("host") == self.owner["host"] and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"]) or age > self.stale_after_s
        return age > self.stale_after_s

    def _take_over_if_stale(self, path: Path) -> bool:
        if not path.exists():
            return True  # released between our create and now: try again
        if not self.is_stale(path):
            return False
        grave = path.with_name(f"{path.name}.stale-{self.owner['token'][:8]}")
        try:
            os.rename(path, grave)  # only one grid's rename of the same file succeeds
        except FileNotFoundError:
            return True  # another grid took it away first; our O_EXCL create decides who wins
        grave.unlink(missing_ok=True)
        return True

    def holder_of(self, rid: str) -> str:
        holder = self.read(self._path(rid)) or {}
        return f"{holder.get('host', '?')}:{holder.get('pid', '?')}"
