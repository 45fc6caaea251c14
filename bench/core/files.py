"""Writing files so that nothing is ever half-written: readers see the old file or the complete new one.

Records, tables, plots, tuned configs, mid-run checkpoints and saved weights all go through
`write_bytes_atomic` (a temporary file in the same folder, fsynced, then renamed over the target).
"""

from __future__ import annotations

import fcntl
import io
import os
import tempfile
from pathlib import Path

import torch

from bench.core.errors import BenchError

TMP_SUFFIX = ".tmp"  # temporary files end so, and readers of a folder skip them


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temp file must live in the same directory: os.replace is only atomic within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # data on disk before the rename makes it visible
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a file-size limit, a folder gone read-only: the user's to fix
            raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not every platform can open a directory (Windows), which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(directory: Path, what: str = "results folder") -> Path:
    """Create `directory` if needed and prove a file can be written there, before any work is spent.

    One clear line (BenchError) naming the place otherwise: a path that is a file, a read-only folder.
    """
    directory = Path(directory)
    for place in (directory, *directory.parents):  # a file where a folder must be: say which
        if place.exists():
            if not place.is_dir():
                raise BenchError(f"{what} {directory} cannot be made: {place} is a file, not a folder")
            break
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BenchError(f"{what} {directory} is not writable: {reason}") from None
    return directory


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_torch_atomic(path: Path, obj) -> None:
    """`torch.save(obj)` to `path`, atomically (a checkpoint is a few MB: serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------ lock files
def read_holder(fd: int) -> str:
    """What a lock file's holder wrote into it ("pid N on HOST"; empty while it is being written)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip()


def lock_holder(path: Path) -> str | None:
    """Who holds the flock on `path` now (what it wrote there, else "another process"), or None where the
    file is absent or nobody holds it: a lock goes with its process, so a live holder is a live process."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(fd) or "another process"
    finally:
        os.close(fd)  # also releases the shared lock taken when nobody held it
    return None
