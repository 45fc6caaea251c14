"""`python -m bench tune`: Optuna studies over a method's search space, run by one or K worker processes.

    python -m bench tune --method sasrec --dataset Beauty --profile quick --trials 20 --parallel 4
    python -m bench tune --export            # best params of every study -> <results>/tuned/

This module runs a study: it checks every place it will write, opens the study (bench/tuning/studies.py), starts
the workers (in this process, as local processes, or as Ray tasks), each of which calls Optuna's
`study.optimize` against the shared storage, and at the end trains the best configuration once on test and
writes the reports (bench/tuning/reports.py).

Why Optuna's own loop in K workers rather than Ray Tune (with `OptunaSearch`), in short (README, Tuning):
a trial is pruned inside the worker, where `trial.report` and `trial.should_prune` are at hand, instead of
by a second policy in Tune's scheduler; every trial is persisted by Optuna's storage as it happens, so a
study resumes from its journal or database with no Tune experiment folder to restore; and the project's
GPU machine has no Ray, so `--executor local` must run the very same workers without it.

Model selection uses the valid split only (bench/tuning/trials.py). The only test evaluation of a study is
the final run of its best configuration, saved like any other run record. Where the workers run, and how
they stop with the driver, is bench/tuning/workers.py. After a SIGTERM, `tune` returns once the workers
stopped their trials (marked to run again) without the final run or the reports; the summary's `stopped`
says what was left for the next invocation.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from bench.core import configs, files, outcomes, records, termination, train
from bench.core.devices import resolve_device
from bench.core.errors import BenchError
from bench.core.profiles import Profile
from bench.core.spec import EXECUTORS, check_choice
from bench.tuning import search_space
from bench.tuning.liveness import fail_stale_trials, requeue_interrupted
from bench.tuning.reports import complete_trials, counts, export, fmt, space_entry, write_reports
from bench.tuning.studies import (
    DEFAULT_SEED,
    METRIC,
    PRUNER_STARTUP_TRIALS,
    PRUNER_WARMUP_STEPS,
    StudySetup,
    check_study_name,
    default_study_name,
    is_url,
    journal_path,
    make_sampler,
    open_storage,
    open_study,
    public_storage,
    studies_dir,
    study_exists,
)
from bench.tuning.trials import TRIAL_ERRORS, EpochReporter, StudyStopped, objective, optimize, trial_spec
from bench.tuning.workers import ray_available, run_local, run_ray, split_trials


def final_run(setup: StudySetup, params: dict) -> dict:
    """The one test evaluation of a study: the best params, the trials' budget, all CPU threads."""
    spec = trial_spec(setup, params)
    rid = spec.run_id
    if rid in records.completed_run_ids(Path(setup.results)):
        # Same config and budget as a run already done (a resumed study with the same best): reuse it.
        path = records.record_path(
            Path(setup.results), {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed,
                                  "profile": spec.profile, "run_id": rid},
        )
        record = records.read_record(path)
        if record is not None:
            print(f"final run: reusing {path}", file=sys.stderr)
            return {"record": record, "path": str(path)}
    try:
        record = train.run(spec, progress=True)
    except TRIAL_ERRORS as exc:
        records.save(Path(setup.results), outcomes.failure_record(spec, exc))
        raise BenchError(f"the final run of the best configuration failed: {exc}") from None
    path = records.save(Path(setup.results), record)
    return {"record": record, "path": str(path)}


# -------------------------------------------------------------------------------------------- tune
@dataclass(frozen=True)
class _Launch:
    """How this invocation's trials are run, decided once the study is open."""

    setup: StudySetup  # with the threads of each worker when there are several
    space: search_space.SearchSpace
    shares: list[int]  # trials per worker; a single share runs in this process
    executor: str  # "local" where Ray was asked for but is not installed
    before: int  # trials in the study before this invocation: seeds every worker's sampler


def tune(
    method: str,
    dataset: str,
    *,
    profile: Profile,
    trials: int,
    parallel: int = 1,
    executor: str = "local",
    storage: str | None = None,
    study: str | None = None,
    results: Path,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    address: str | None = None,
    run_final: bool = True,
) -> dict:
    """Add `trials` trials to a study (created if new), write its reports, run the best config once on test.

    `profile` may be any Profile (tests pass a tiny one); returns the summary written to best.json.
    """
    space = _check_arguments(method, trials, parallel, executor, device)
    setup, storage_obj = _prepare_study(method, dataset, profile, trials, storage, study, results, device, seed)
    the_study, launch = _plan_workers(setup, storage_obj, space, trials, parallel, executor)
    problems, wall = _run_workers(the_study, launch, address)
    name, results = setup.study, Path(setup.results)
    the_study = optuna.load_study(study_name=name, storage=open_storage(setup.storage))
    fail_stale_trials(the_study)  # a worker that crashed (killed, out of memory) leaves its trial RUNNING
    if termination.requested():  # SIGTERM: queue the stopped trials now, and leave the rest for next time
        requeue_interrupted(the_study)
        waiting = counts(the_study)["waiting"]
        return {"study": name, "stopped": f"{waiting} trial(s) of study {name} stopped and queued to run again"}
    n = _warn_about_unfinished_workers(the_study, name, problems)
    summary = _summary(launch, n, trials, wall)
    print(
        f"trials: {n['complete']} complete, {n['pruned']} pruned, {n['failed']} failed "
        f"({n['total']} in the study, {trials} added); wall {wall:.1f} s"
    )
    out = studies_dir(results) / name
    if not complete_trials(the_study):
        write_reports(the_study, out, summary)
        raise BenchError(f"no trial of study {name} completed; see {out / 'trials.csv'}")
    best = _add_best_trial(the_study, summary)
    if run_final and (stopped := _add_final_run(launch.setup, best.params, summary)) is not None:
        return summary | {"stopped": stopped}
    write_reports(the_study, out, summary)
    print(f"reports: {out}", file=sys.stderr)
    return summary


def _check_arguments(method: str, trials: int, parallel: int, executor: str, device: str) -> search_space.SearchSpace:
    """The options that need no study; returns the method's search space."""
    configs.method_class(method)
    space = search_space.load(method)  # a bad search space fails here, before any worker starts
    if trials < 0:
        raise BenchError(f"--trials must be >= 0, got {trials}")
    if parallel < 1:
        raise BenchError(f"--parallel must be >= 1, got {parallel}")
    check_choice("executor", executor, EXECUTORS)
    resolve_device(device)
    return space


def _prepare_study(
    method: str, dataset: str, profile: Profile, trials: int, storage: str | None, study: str | None,
    results: Path, device: str, seed: int,
) -> tuple[StudySetup, BaseStorage]:
    """Everything a trial relies on, made sure of before the first one is spent; returns the setup and the
    opened storage."""
    name = check_study_name(study or default_study_name(method, dataset, profile.name))
    results = Path(results).resolve()
    store = storage or str(journal_path(results, name))
    # --trials 0 reports on a study; on a new one it would only leave an empty study behind.
    if trials == 0 and not ((is_url(store) or Path(store).is_file()) and study_exists(open_storage(store), name)):
        raise BenchError(
            f"study {name} does not exist in {public_storage(store)}; --trials 0 only reports on an existing "
            "study (give --trials N to start it)"
        )
    # Every place this command writes, proved writable before a trial is spent: the final run's record,
    # the reports, the journal (checked with its folder when the storage is opened, before anything else).
    files.check_writable(results / "runs", "results folder")
    files.check_writable(studies_dir(results) / name, "study reports folder")
    storage_obj = open_storage(store)
    from bench.core.data import download

    download(dataset)  # once, here: K workers must not race to fetch the same file
    return StudySetup(method, dataset, profile, name, store, str(results), device, seed), storage_obj


def _plan_workers(
    setup: StudySetup, storage_obj: BaseStorage, space: search_space.SearchSpace, trials: int, parallel: int,
    executor: str,
) -> tuple[optuna.Study, _Launch]:
    """Open the study, queue again what earlier runs left unfinished, share the new trials among workers,
    and say so."""
    the_study = open_study(setup, storage=storage_obj)
    fail_stale_trials(the_study)  # trials of workers that died with an earlier run of tune: FAIL, and queued again
    requeue_interrupted(the_study)  # trials stopped by Ctrl-C: run again
    before = len(the_study.get_trials(deepcopy=False))
    the_study.sampler = make_sampler(setup.seed, 0, before)  # seeded by the study's size, as every worker's
    shares = split_trials(trials, parallel)
    if len(shares) > 1:
        # Share the cores: K workers each with all cores' threads would oversubscribe the CPU.
        setup = replace(setup, threads=max(1, (os.cpu_count() or 1) // len(shares)))
    if len(shares) > 1 and executor == "ray" and not ray_available():
        print("note: Ray is not installed; running the workers as local processes (--executor local)", file=sys.stderr)
        executor = "local"
    queued = len(the_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    so_far = f"{before - queued} trials so far" + (f" and {queued} queued to run again" if queued else "")
    print(
        f"study {setup.study} in {public_storage(setup.storage)}: {so_far}, adding {trials} "
        f"({len(shares)} worker{'s' if len(shares) != 1 else ''}, {executor if len(shares) > 1 else 'in process'}); "
        f"searching {', '.join(space)}",
        file=sys.stderr,
    )
    return the_study, _Launch(setup, space, shares, executor, before)


def _run_workers(the_study: optuna.Study, launch: _Launch, address: str | None) -> tuple[list[str], float]:
    """Run the shares to the end (or to a SIGTERM); returns the workers' problems and the wall seconds."""
    setup, shares, before = launch.setup, launch.shares, launch.before
    start = time.perf_counter()
    problems: list[str] = []
    try:
        if len(shares) == 1:  # one worker needs no second process: run it here
            optimize(setup, shares[0], 0, before, study=the_study)
        elif len(shares) > 1 and launch.executor == "local":
            problems = run_local(setup, shares, before)
        elif len(shares) > 1:
            problems = run_ray(setup, shares, before, address)
    except StudyStopped:
        pass
    return problems, time.perf_counter() - start


def _warn_about_unfinished_workers(the_study: optuna.Study, name: str, problems: list[str]) -> dict[str, int]:
    """Say which workers gave up and which trials wait for the next `tune`; returns the study's counts."""
    for line in problems:
        print(f"warning: {line}; its remaining trials were not run", file=sys.stderr)
    n = counts(the_study)
    if n["waiting"]:
        print(
            f"note: {n['waiting']} trial(s) of study {name} are queued to run again (their workers died); "
            "the next `tune` of this study runs them first",
            file=sys.stderr,
        )
    return n


def _summary(launch: _Launch, n: dict[str, int], trials: int, wall: float) -> dict[str, Any]:
    """best.json without its best trial and final run, which are filled in once known."""
    setup = launch.setup
    return {
        "study": setup.study, "storage": _shown(public_storage(setup.storage), Path(setup.results)),
        "method": setup.method, "dataset": setup.dataset,
        "profile": asdict(setup.profile), "metric": f"valid {METRIC}", "direction": "maximize",
        "sampler": f"TPESampler(seed derived from {setup.seed}, constant_liar=True)",
        "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}, n_warmup_steps={PRUNER_WARMUP_STEPS})",
        "search_space": {k: space_entry(d) for k, d in launch.space.items()},
        "counts": n, "added_trials": trials, "parallel": len(launch.shares), "executor": launch.executor,
        "wall_s": round(wall, 3), "best_trial": None, "final_run": None,
    }


def _add_best_trial(the_study: optuna.Study, summary: dict[str, Any]) -> FrozenTrial:
    """Put the study's best trial into the summary, and print it."""
    best = the_study.best_trial
    summary["best_trial"] = {
        "number": best.number, "value": best.value, "params": best.params,
        "best_epoch": best.user_attrs.get("best_epoch"), "epochs_run": best.user_attrs.get("epochs_run"),
    }
    params = ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
    print(f"best trial #{best.number}: valid {METRIC} {best.value:.4f} with {params}")
    return best


def _add_final_run(setup: StudySetup, params: dict, summary: dict[str, Any]) -> str | None:
    """Train the best params once on test and put the run into the summary; returns why `tune` stops
    without its reports when a SIGTERM interrupted that run, else None."""
    done = final_run(setup, params)
    record = done["record"]
    if record["status"] == "interrupted":  # SIGTERM: recorded as such; the next `tune` trains it again
        return f"the final run of study {setup.study} recorded interrupted ({done['path']})"
    summary["final_run"] = {
        "run_id": record["run_id"], "record": _shown(done["path"], Path(setup.results)),
        "best_epoch": record["best_epoch"], "valid": record["best_valid"], "test": record["test"],
    }
    print("final run of the best configuration, test metrics at best epoch " f"{record['best_epoch']}:")
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in record["test"].items()))
    print(f"record: {done['path']}", file=sys.stderr)
    return None


__all__ = ["EpochReporter", "StudySetup", "export", "objective", "split_trials", "trial_spec", "tune"]


def _shown(path: str, results: Path) -> str:
    """A path as the reports write it: relative to the results folder when inside it (reports are committed,
    and an absolute path says where they were made, not what they are); URLs and outside paths as they are."""
    if is_url(path):
        return path
    try:
        return str(Path(path).resolve().relative_to(Path(results).resolve()))
    except ValueError:
        return path
