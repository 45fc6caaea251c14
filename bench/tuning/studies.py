"""Where a study lives and how it is opened: storage, the study's identity, sampler and pruner, dead workers.

A study is kept either in a journal file (`<results>/studies/<study>.journal`, Optuna's append-only log of
operations, shared by processes through a lock file) or in a database given by URL (PostgreSQL for several
machines). This module is the only one that opens either; `bench/tuning/tune.py` runs trials against what it returns.

Two modules beside it protect a study from the ways a run of `tune` can end badly: `liveness.py` (dead
workers: owners, heartbeats, trials queued again) and `journal.py` (a damaged or unwritable journal).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend

from bench.core import train
from bench.core.errors import BenchError
from bench.core.profiles import Profile
from bench.tuning.journal import check_journal, check_journal_writable
from bench.tuning.liveness import (
    JOURNAL_GRACE_S,
    JOURNAL_HEARTBEAT_S,
    RDB_GRACE_S,
    RDB_HEARTBEAT_S,
    HeartbeatJournalStorage,
    HeartbeatRDBStorage,
    rerun_stale_trial,
)

METRIC = train.SELECTION_METRIC  # valid NDCG@20, as the training loop's model selection
DEFAULT_SEED = 0
# Median pruning: a trial is stopped when its valid NDCG@20 at an epoch is below the median of earlier
# trials at the same epoch. Two finished trials make a median worth trusting, and epoch 0 is never
# judged because the first epoch's ranking says little about where a learning rate ends up.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 1
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
    # resumed study must not replay the random start-up points of its first run.
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
    "StudySetup", "check_study_name", "default_study_name", "journal_path",
    "make_pruner", "make_sampler", "open_storage", "open_study", "public_storage", "studies_dir",
]
