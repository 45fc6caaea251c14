"""Dead workers of a study: every running trial carries its owner and a heartbeat.

Every running trial carries its owner (host, boot, pid, process start time) and a heartbeat. When a study
is opened, and before each trial a worker starts, a RUNNING trial whose owner process is gone from this
machine, or whose heartbeat is older than the grace period, is marked FAIL and its parameters are queued
(a WAITING trial) so that the next trial to start runs them again. This is Optuna's own heartbeat
mechanism (`fail_stale_trials`), which Optuna gives to its RDB storage only; the journal gets the same
through `HeartbeatJournalStorage`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

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

    A new trial is written with its owner in the same storage operation, and a queued trial gets its
    owner just before it turns RUNNING. Optuna's heartbeat thread starts alongside the objective, so a
    worker killed while its objective holds the journal lock would otherwise leave a RUNNING trial that
    names nobody, and it would be found only after the grace period. The first heartbeat records the
    owner again, which settles a queued trial that two workers raced for.
    """

    _owner: dict | None = None

    def _me(self) -> dict:
        if self._owner is None or self._owner.get("pid") != os.getpid():  # a forked worker is a new owner
            self._owner = current_owner()
            self._tagged: set[int] = set()
        return self._owner

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # a trial added whole (a queued rerun, a copied result): no owner
            return super().create_new_trial(study_id, template_trial)
        owner = self._me()
        running = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={OWNER_KEY: owner})
        trial_id = super().create_new_trial(study_id, running)
        self._tagged.add(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if state == TrialState.RUNNING:
            self.set_trial_system_attr(trial_id, OWNER_KEY, self._me())
        return super().set_trial_state_values(trial_id, state, values)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            owner = self._me()
            if trial_id not in self._tagged:
                self.set_trial_system_attr(trial_id, OWNER_KEY, owner)
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
