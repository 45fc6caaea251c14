"""A study's journal file, checked before Optuna reads or writes it.

* A damaged journal. Before Optuna reads a journal, `check_journal` reads it line by line: a line in the
  middle that is not a JSON object makes the journal refused with its line number, and nothing is ever
  appended to it. A last line without its newline is the trace of a writer killed while appending (the
  operation never completed, and Optuna already ignores it): it is cut off under the journal's lock after
  the whole file is copied to `<journal>.torn-<time>`, and stderr says so.
* Storage that cannot be written: `check_journal_writable` proves the journal (and its lock file) can be
  written before any trial is spent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from bench.core import files
from bench.core.errors import BenchError


def check_journal(path: Path) -> None:
    """Refuse a journal with a damaged line; cut off a torn last line (after a backup). Never appends.

    Call before Optuna reads the file: Optuna's own reader raises a bare JSONDecodeError on a bad line,
    and its next append would glue itself to a torn one, breaking the journal for good.
    """
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    torn = _scan_journal(path, data)
    if torn is None:
        return
    # The last line has no newline. A live writer may be in the middle of appending it: take the lock every
    # writer takes, then look again; only a tail that is still incomplete under the lock is really torn.
    try:
        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            data = path.read_bytes()
            torn = _scan_journal(path, data)
            if torn is None:
                return
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            backup = path.with_name(f"{path.name}.torn-{stamp}")
            shutil.copy2(path, backup)
            with open(path, "r+b") as fh:
                fh.truncate(torn)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            lock.release()
    except OSError as exc:  # a read-only folder or file: the journal is left as it was
        raise BenchError(
            f"study journal {path} ends in a torn line (a writer killed while appending) and cannot be "
            f"repaired here: {exc.strerror or exc}"
        ) from None
    print(
        f"note: study journal {path} ended in a torn line ({len(data) - torn} bytes, a writer killed while "
        f"appending; Optuna never read it): cut off, the original file is kept as {backup}",
        file=sys.stderr,
    )


def _scan_journal(path: Path, data: bytes) -> int | None:
    """None if every line is a complete JSON object; the offset of a torn last line; else BenchError."""
    offset = 0
    number = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        number += 1
        if end < 0:
            return offset  # no newline: a torn last line, complete JSON or not (Optuna skips it either way)
        line = data[offset:end]
        try:
            op = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            op = None
        if not isinstance(op, dict) or "op_code" not in op:
            shown = line[:60].decode("utf-8", "replace")
            raise BenchError(
                f"study journal {path} is corrupt at line {number} ({shown!r} is not an Optuna operation); "
                "it was left untouched: restore it from a backup, or delete the line if you know it is junk"
            )
        offset = end + 1
    return None


def check_journal_writable(path: Path) -> None:
    """One line naming the journal (or its folder) if trials could not be recorded there."""
    path = Path(path)
    files.check_writable(path.parent, "studies folder")
    if path.exists():
        if not path.is_file():
            raise BenchError(f"study journal {path} is not a file")
        try:
            with open(path, "ab"):  # opening for append writes nothing
                pass
        except OSError as exc:
            raise BenchError(f"study journal {path} is not writable: {exc.strerror or type(exc).__name__}") from None
