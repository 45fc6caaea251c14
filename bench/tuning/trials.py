"""One trial of a study and one worker's loop of trials: what `bench tune` runs, wherever it runs it.

Model selection uses the valid split only: a trial trains with `evaluate_test=False`, so the training loop
ends before it would touch test, and `EpochReporter` reports each epoch's valid NDCG@20 and prunes.

A trial stopped from outside is not a result: Ctrl-C (or Ray's cancellation, which is the same
KeyboardInterrupt) and SIGTERM (bench/core/termination.py: the loop stops at its last epoch boundary) both
leave it FAIL and marked `interrupted`, so that the next `tune` of the study runs its parameters again
(bench/tuning/liveness.py, `requeue_interrupted`), and the worker takes no further trial.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import optuna

from bench.core import termination, train
from bench.core.devices import resolve_device
from bench.core.errors import BenchError
from bench.core.spec import make_spec
from bench.tuning import search_space
from bench.tuning.liveness import INTERRUPTED
from bench.tuning.studies import METRIC, StudySetup, open_study

# Errors that fail one trial (an unlucky combination, a diverging loss) without stopping the study.
TRIAL_ERRORS = (BenchError, RuntimeError, ValueError, FloatingPointError)


class StudyStopped(Exception):
    """A SIGTERM stopped the trial in progress: it is recorded FAIL and `interrupted`, and the worker stops."""


def _no_traceback_for_a_stop(record: logging.LogRecord) -> bool:
    # Optuna logs a failed trial with its traceback; a stop from outside is no bug: its one line is enough.
    if record.exc_info and isinstance(record.exc_info[1], StudyStopped | KeyboardInterrupt):
        record.exc_info = None
    return True


logging.getLogger("optuna.study._optimize").addFilter(_no_traceback_for_a_stop)


class EpochReporter:
    """The training loop's epoch callback inside a trial: report valid NDCG@20 to Optuna, and prune.

    Stopping (epoch budget, patience) is the training loop's own; the trial runs it with
    `evaluate_test=False`, so the loop ends after its last epoch without touching the test split.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.best = -math.inf
        self.best_epoch = -1
        self.epochs_run = 0

    def __call__(self, epoch: int, row: dict) -> None:
        value = float(row["valid"][METRIC])
        self.epochs_run = epoch + 1
        if value > self.best:
            self.best, self.best_epoch = value, epoch
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"valid {METRIC} {value:.4f} at epoch {epoch} is below the median")


def trial_spec(setup: StudySetup, params: dict, num_threads: int | None = None) -> train.RunSpec:
    """A trial's run: the study's budget (its profile) with the trial's params as overrides."""
    p = setup.profile
    return make_spec(
        setup.method,
        setup.dataset,
        profile=p,
        seed=p.seeds[0],
        protocol=setup.protocol,
        overrides=dict(params),  # typed values: configs.check_values accepts them as they are
        device=setup.device,
        num_threads=num_threads,
    )


def objective(trial: optuna.Trial, setup: StudySetup, space: search_space.SearchSpace, data: Any) -> float:
    """Best valid NDCG@20 over the trial's epochs."""
    params = search_space.suggest(trial, space)
    spec = trial_spec(setup, params, setup.threads)
    reporter = EpochReporter(trial)
    start = time.perf_counter()
    try:
        record = train.run(spec, progress=False, epoch_callback=reporter, data=data, evaluate_test=False)
    except TRIAL_ERRORS as exc:
        trial.set_user_attr("error", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        raise
    except KeyboardInterrupt:
        # Optuna records the trial FAIL; marked so, it is run again when the study is next opened.
        trial.set_user_attr(INTERRUPTED, True)
        raise
    finally:
        trial.set_user_attr("best_epoch", reporter.best_epoch)
        trial.set_user_attr("epochs_run", reporter.epochs_run)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    if record["status"] == "interrupted":  # a SIGTERM: the epochs it ran are no result of its parameters
        trial.set_user_attr(INTERRUPTED, True)
        raise StudyStopped(record["interrupted"]["reason"])
    return reporter.best


def optimize(
    setup: StudySetup, n_trials: int, worker: int = 0, trials_before: int = 0, study: optuna.Study | None = None
) -> None:
    """One worker: load the data once, then run `n_trials` trials of the shared study."""
    from bench.core.data import SequenceData

    study = study or open_study(setup, worker, trials_before)
    space = search_space.load(setup.method)
    device = resolve_device(setup.device)
    data = SequenceData.load(setup.dataset, max_users=setup.profile.max_users, device=str(device))
    study.optimize(
        lambda trial: objective(trial, setup, space, data), n_trials=n_trials, catch=TRIAL_ERRORS,
        gc_after_trial=True, callbacks=[_stop_after_sigterm],
    )


def _stop_after_sigterm(study: optuna.Study, _trial) -> None:
    if termination.requested():  # a SIGTERM between two trials: start no further one
        study.stop()

