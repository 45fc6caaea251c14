"""Where a study lives and how it is opened: storage, the study's identity, sampler and pruner, dead workers.

A study is kept either in a journal file (`<results>/studies/<study>.journal`, Optuna's append-only log of
operations, shared by processes through a lock file) or in a database given by URL (PostgreSQL for several
machines). This module is the only one that opens either; `bench/tuning/tune.py` runs trials against what it returns.

Three things here protect a study from the ways a session can end badly:

* Dead workers. Every running trial carries its owner (host, boot, pid, process start time) and a
  heartbeat. When a study is opened, and before each trial a worker starts, a RUNNING trial whose owner
  process is gone from this machine, or whose heartbeat is older than the grace period, is marked FAIL and
  its parameters are queued (a WAITING trial) so that the next trial to start runs them again. This is
  Optuna's own heartbeat mechanism (`fail_stale_trials`), which Optuna gives to its RDB storage only; the
  journal gets the same through `HeartbeatJournalStorage`.
* A damaged journal. Before Optuna reads a journal, `check_journal` reads it line by line: a line in the
  middle that is not a JSON object makes the journal refused with its line number, and nothing is ever
  appended to it. A last line without its newline is the trace of a writer killed while appending (the
  operation never completed, and Optuna already ignores it): it is cut off under the journal's lock after
  the whole file is copied to `<journal>.torn-<time>`, and stderr says so.
* Storage that cannot be written: `check_journal_writable` proves the journal (and its lock file) can be
  written before any trial is spent.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from bench.core import records, train
from bench.core.errors import BenchError
from bench.core.profiles import Profile

METRIC = train.SELECTION_METRIC  # valid NDCG@20, as the training loop's model selection
DEFAULT_SEED = 0
# Median pruning: a trial is stopped when its valid NDCG@20 at an epoch is below the median of earlier
# trials at the same epoch. Two finished trials make a median worth trusting, and epoch 0 is never
# judged because the first epoch's ranking says little about where a learning rate ends up.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 1
# Heartbeats. A journal heartbeat is one line appended per running trial and interval, so it is sparse;
# a trial whose owner is known to be dead on this machine fails at once, whatever the grace period.
JOURNAL_HEARTBEAT_S = 20
JOURNAL_GRACE_S = 90
RDB_HEARTBEAT_S = 60
RDB_GRACE_S = 180
# A trial whose parameters kill their worker every time (out of memory, say) is re-run at most this often.
MAX_RERUNS = 2
OWNER_KEY = "bench:owner"
HEARTBEAT_KEY = "bench:heartbeat"
RERUN_KEY = "bench:rerun_of"
INTERRUPTED = "interrupted"  # user attr of a trial stopped by Ctrl-C (Optuna records it FAIL)
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class StudySetup:
    """What every worker needs to open the study and run trials; picklable for spawn and Ray."""

    method: str
    dataset: str
    profile: Profile
    study: str
    storage: str  # an RDB URL, or the path of a journal file
    results: str
    device: str = "auto"
    seed: int = DEFAULT_SEED
    protocol: str = "reference"
    threads: int | None = None

    def identity(self) -> dict:
        """Stored in the study's user attrs: trials of different budgets must never share a study."""
        p = self.profile
        return {
            "method": self.method, "dataset": self.dataset, "profile": p.name, "max_users": p.max_users,
            "epochs": p.epochs, "patience": p.patience, "seed": p.seeds[0], "protocol": self.protocol,
            "metric": f"valid {METRIC}",
        }


# ---------------------------------------------------------------------------------------------- names
def default_study_name(method: str, dataset: str, profile: str) -> str:
    return f"{method}-{dataset}-{profile}"


def check_study_name(name: str) -> str:
    # The name becomes file names (<study>.journal, <study>/best.json): no separators, no surprises.
    if not _STUDY_NAME.match(name):
        raise BenchError(f"study name {name!r} may only contain letters, digits, '.', '_' and '-'")
    return name


def studies_dir(results: Path) -> Path:
    return Path(results).resolve() / "studies"


def journal_path(results: Path, study: str) -> Path:
    return studies_dir(results) / f"{study}.journal"


def is_url(storage: str) -> bool:
    return "://" in storage


def public_storage(storage: str) -> str:
    """The storage as printed and written to reports: never the password of a database URL."""
    if not is_url(storage):
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL fails properly in open_storage; here it only must not leak
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", storage)


# ------------------------------------------------------------------------------------ journal checks
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
    records.check_writable(path.parent, "studies folder")
    if path.exists():
        if not path.is_file():
            raise BenchError(f"study journal {path} is not a file")
        try:
            with open(path, "ab"):  # opening for append writes nothing
                pass
        except OSError as exc:
            raise BenchError(f"study journal {path} is not writable: {exc.strerror or type(exc).__name__}") from None


# ------------------------------------------------------------------------------ owners and heartbeats
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc), "" if unknown, None if it is dead."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): alive or not, start unknown
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) ": state is field 3, starttime 22
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return None
    return fields[19]


def current_owner() -> dict:
    """Who runs a trial: enough to tell later, on the same machine, whether that process still lives."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def owner_is_dead(owner: Any) -> bool:
    """True only when `owner` ran on this machine (same host and boot) and that process is gone."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() or owner.get("boot") != _boot_id():
        return False  # another machine's process: only its heartbeat can tell
    try:
        started = _process_start(int(owner["pid"]))
    except (KeyError, TypeError, ValueError):
        return False
    if started is None:
        return True
    # The pid is alive: it is the owner unless it started at another time (the pid was reused).
    return bool(started and owner.get("started") and started != owner["started"])


class _DeadOwnerCheck:
    """Mixin for a heartbeat storage: trials whose owner died on this machine are stale at once.

    The first heartbeat of a trial (sent by Optuna right after the trial starts) also records its owner.
    """

    _owner: dict | None = None

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            if self._owner is None or self._owner.get("pid") != os.getpid():
                self._owner = current_owner()
                self._tagged: set[int] = set()
            if trial_id not in self._tagged:
                self.set_trial_system_attr(trial_id, OWNER_KEY, self._owner)
                self._tagged.add(trial_id)
            super().record_heartbeat(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed this trial meanwhile; the worker learns it at its next report

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = set(super()._get_stale_trial_ids(study_id))
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if owner_is_dead(t.system_attrs.get(OWNER_KEY)):
                stale.add(t._trial_id)
        return sorted(stale)


class _JournalHeartbeat(JournalStorage, BaseHeartbeat):
    """Optuna's heartbeat protocol for a journal: the heartbeat is a system attr of the running trial."""

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int, callback) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_KEY)
            if beat is None:  # never beat (a trial of an older harness): judge by its start
                beat = t.datetime_start.timestamp() if t.datetime_start else now
            if now - float(beat) > self.grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.stale_callback


class HeartbeatJournalStorage(_DeadOwnerCheck, _JournalHeartbeat):
    """A journal storage whose trials of dead workers fail and are re-run (see the module docstring)."""


class HeartbeatRDBStorage(_DeadOwnerCheck, RDBStorage):
    """Optuna's RDB storage with heartbeats, plus the immediate dead-owner check of the journal."""


def rerun_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: a trial lost with its worker is queued (WAITING, same params) to run again."""
    owner = trial.system_attrs.get(OWNER_KEY) or {}
    who = f"worker pid {owner['pid']} on {owner['host']}" if "pid" in owner else "a worker without heartbeat"
    _queue_again(study, trial, f"lost its worker ({who})")


def requeue_interrupted(study: optuna.Study) -> None:
    """Queue again the trials that Ctrl-C stopped (FAIL, marked `interrupted`) and nobody re-ran yet."""
    trials = study.get_trials(deepcopy=False)
    queued = {n for t in trials for n in t.system_attrs.get(RERUN_KEY, [])}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in queued:
            _queue_again(study, t, "was interrupted")


def _queue_again(study: optuna.Study, trial: FrozenTrial, what: str) -> None:
    history = [*trial.system_attrs.get(RERUN_KEY, []), trial.number]
    if len(history) > MAX_RERUNS:
        print(f"warning: trial #{trial.number} {what}, {len(history)} times in a row; marked FAIL, not run again",
              file=sys.stderr)
        return
    if not trial.distributions:
        print(f"note: trial #{trial.number} {what} before drawing parameters; marked FAIL", file=sys.stderr)
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"rerun_of": history[0]},
            system_attrs={RERUN_KEY: history},  # owner and heartbeat are left behind: they were the dead one's
        )
    )
    print(f"note: trial #{trial.number} {what}; marked FAIL and queued to run again", file=sys.stderr)


def fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; the warning is noise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# -------------------------------------------------------------------------------------------- storage
def open_storage(storage: str, *, create: bool = True) -> BaseStorage:
    """An RDB storage for a URL (postgresql+psycopg://, sqlite:///), else a journal file at that path."""
    if is_url(storage):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return HeartbeatRDBStorage(
                    storage, heartbeat_interval=RDB_HEARTBEAT_S, grace_period=RDB_GRACE_S,
                    heartbeat_stale_trial_callback=rerun_stale_trial,
                )
        except Exception as exc:  # driver missing, bad URL, server down: all the user's to fix
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            hint = ""
            if storage.startswith("postgresql") and (isinstance(exc, ImportError) or "import" in first.lower()):
                hint = " (for PostgreSQL: pip install 'psycopg[binary]' and use postgresql+psycopg://...)"
            raise BenchError(f"cannot open Optuna storage {public_storage(storage)}: {first}{hint}") from None
    path = Path(storage)
    if not create and not path.is_file():
        raise BenchError(f"no study journal at {path}")
    check_journal(path)
    if create:
        check_journal_writable(path)
    # JournalFileBackend appends each operation under a lock file, so several processes may share it.
    backend = JournalFileBackend(str(path))
    try:
        return HeartbeatJournalStorage(backend, JOURNAL_HEARTBEAT_S, JOURNAL_GRACE_S, rerun_stale_trial)
    except (ValueError, json.JSONDecodeError) as exc:  # damaged after our check (a writer of another version)
        raise BenchError(f"study journal {path} cannot be read: {exc}") from None


def study_exists(storage: BaseStorage, name: str) -> bool:
    return name in {s.study_name for s in storage.get_all_studies()}


def make_sampler(seed: int, worker: int, trials_before: int) -> optuna.samplers.TPESampler:
    # One stream per (seed, worker, study size): parallel workers must not propose the same points, and a
    # resumed study must not replay the random start-up points of the first session.
    digest = hashlib.sha256(f"{seed}:{worker}:{trials_before}".encode()).digest()
    # constant_liar: running trials count as bad points, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"), constant_liar=True)


def make_pruner() -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)


def open_study(
    setup: StudySetup, worker: int = 0, trials_before: int = 0, storage: BaseStorage | None = None
) -> optuna.Study:
    """Create the study or load it, checking that an existing one was made for the same runs."""
    storage = storage or open_storage(setup.storage)
    study = optuna.create_study(
        study_name=setup.study,
        storage=storage,
        sampler=make_sampler(setup.seed, worker, trials_before),
        pruner=make_pruner(),
        direction="maximize",
        load_if_exists=True,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BenchError(f"study {setup.study} in {public_storage(setup.storage)} minimises; use another --study")
    # The identity is written one attr at a time, and another process may be writing it right now (two
    # `tune` started together on a new study): compare what is there, fill in what is missing, then check
    # the whole once more, so that of two processes with different budgets at least one is refused.
    wanted = setup.identity()
    for _ in range(2):
        stored = study.user_attrs
        diff = {k: (stored[k], v) for k, v in wanted.items() if k in stored and stored[k] != v}
        if diff:
            described = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items())
            raise BenchError(
                f"study {setup.study} in {public_storage(setup.storage)} was made for other runs: {described}; "
                "choose another --study"
            )
        missing = [k for k in wanted if k not in stored]
        if not missing:
            break
        for key in missing:
            study.set_user_attr(key, copy.deepcopy(wanted[key]))
    return study


__all__ = [
    "StudySetup", "check_journal", "check_study_name", "default_study_name", "fail_stale_trials", "journal_path",
    "make_pruner", "make_sampler", "open_storage", "open_study", "public_storage", "studies_dir",
]
