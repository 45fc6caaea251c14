"""`python -m bench tune`: Optuna studies over a method's search space, persisted in a real database.

    python -m bench tune --method sasrec --dataset Beauty --profile quick --trials 20 --parallel 4
    python -m bench tune --export            # best params of every study -> methods/configs/tuned/

Design: Optuna drives the trials and K worker processes run `study.optimize` against one shared storage;
Ray (when used) only places those K processes on a cluster. The alternative, Ray Tune's `OptunaSearch`,
was rejected because:
  * pruning: Optuna's pruner needs `trial.report` / `trial.should_prune` inside the trial, which a worker
    running `study.optimize` has directly; through Ray Tune the Optuna trial lives in the driver and
    pruning becomes Tune's scheduler, a second pruning policy to explain;
  * persistence and resuming: every worker writes each trial to the storage as it happens (a journal file,
    which is safe with several processes, or an RDB such as PostgreSQL), so a killed study keeps its
    trials and `tune` again with the same study adds N more, with no Tune experiment directory to restore;
  * the GPU machine of this project has no Ray: `--executor local` runs the same K workers as local
    processes, so both executors share one code path and one storage format.

Model selection uses the valid split only. A trial stops itself (see `EpochReporter`) before the training
loop would evaluate on test; the only test evaluation of a study is the one final run of the best
configuration, whose record is saved like any other run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from bench import configs, records, search_space, train
from bench.errors import BenchError
from bench.profiles import Profile
from bench.spec import make_spec

METRIC = train.SELECTION_METRIC  # valid NDCG@20, as the training loop's model selection
EXECUTORS = ("ray", "local")
DEFAULT_SEED = 0
# Median pruning: a trial is stopped when its valid NDCG@20 at an epoch is below the median of earlier
# trials at the same epoch. Two finished trials make a median worth trusting, and epoch 0 is never
# judged because the first epoch's ranking says little about where a learning rate ends up.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 1
# Errors that fail one trial (an unlucky combination, a diverging loss) without stopping the study.
TRIAL_ERRORS = (BenchError, RuntimeError, ValueError, FloatingPointError)
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# When several studies tuned the same (method, dataset), export prefers the one with the larger budget.
_PROFILE_RANK = {"paper": 3, "quick": 2, "smoke": 1}


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


# ------------------------------------------------------------------------------------------- storage
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


def open_storage(storage: str, *, create: bool = True) -> BaseStorage:
    """An RDB storage for a URL (postgresql://, mysql://, sqlite:///), else a journal file at that path."""
    if is_url(storage):
        try:
            # Heartbeats let a study mark the trials of a crashed worker FAIL instead of RUNNING forever.
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; the warning is noise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
        except Exception as exc:  # driver missing, bad URL, server down: all the user's to fix
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise BenchError(f"cannot open Optuna storage {public_storage(storage)}: {first}") from None
    path = Path(storage)
    if not create and not path.is_file():
        raise BenchError(f"no study journal at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    # JournalFileBackend appends each operation under a lock file, so several processes may share it.
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(seed: int, worker: int, trials_before: int) -> optuna.samplers.TPESampler:
    # One stream per (seed, worker, study size): parallel workers must not propose the same points, and a
    # resumed study must not replay the random start-up points of the first session.
    digest = hashlib.sha256(f"{seed}:{worker}:{trials_before}".encode()).digest()
    # constant_liar: running trials count as bad points, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"), constant_liar=True)


def make_pruner() -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)


def open_study(setup: StudySetup, worker: int = 0, trials_before: int = 0) -> optuna.Study:
    """Create the study or load it, checking that an existing one was made for the same runs."""
    storage = open_storage(setup.storage)
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
    wanted = setup.identity()
    stored = study.user_attrs
    if stored:
        diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        if diff:
            described = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items())
            raise BenchError(
                f"study {setup.study} in {public_storage(setup.storage)} was made for other runs: {described}; "
                "choose another --study"
            )
    else:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    return study


# -------------------------------------------------------------------------------------------- trials
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
        train.run(spec, progress=False, epoch_callback=reporter, data=data, evaluate_test=False)
    except TRIAL_ERRORS as exc:
        trial.set_user_attr("error", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        raise
    finally:
        trial.set_user_attr("best_epoch", reporter.best_epoch)
        trial.set_user_attr("epochs_run", reporter.epochs_run)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    return reporter.best


def optimize(
    setup: StudySetup, n_trials: int, worker: int = 0, trials_before: int = 0, study: optuna.Study | None = None
) -> None:
    """One worker: load the data once, then run `n_trials` trials of the shared study."""
    from bench.data import SequenceData

    study = study or open_study(setup, worker, trials_before)
    space = search_space.load(setup.method)
    device = train.resolve_device(setup.device)
    data = SequenceData.load(setup.dataset, max_users=setup.profile.max_users, device=str(device))
    study.optimize(
        lambda trial: objective(trial, setup, space, data), n_trials=n_trials, catch=TRIAL_ERRORS, gc_after_trial=True
    )


def _local_worker(setup: StudySetup, n_trials: int, worker: int, trials_before: int) -> None:
    # Entry point of a spawned process: a user error is one line, as on the command line.
    try:
        optimize(setup, n_trials, worker, trials_before)
    except BenchError as exc:
        print(f"error: worker {worker}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def split_trials(trials: int, parallel: int) -> list[int]:
    """`trials` shared among at most `parallel` workers: exactly `trials` in total, none left empty."""
    shares = [trials // parallel + (1 if i < trials % parallel else 0) for i in range(parallel)]
    return [s for s in shares if s > 0]


def run_local(setup: StudySetup, shares: list[int], trials_before: int) -> list[str]:
    """The workers as local processes; returns a line per worker that did not finish cleanly."""
    # spawn, not fork: the parent has torch (OpenMP pools, maybe CUDA) and Optuna's threads initialised,
    # which a forked child inherits in a broken state.
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_local_worker, args=(setup, n, i, trials_before), name=f"tune-worker-{i}")
        for i, n in enumerate(shares)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # the children got the same SIGINT; give them a moment to record their trial
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    return [f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0]


def _ray_worker(setup: StudySetup, n_trials: int, worker: int, trials_before: int) -> int:
    optimize(setup, n_trials, worker, trials_before)
    return n_trials


def run_ray(setup: StudySetup, shares: list[int], trials_before: int, address: str | None) -> list[str]:
    """The same workers as Ray tasks, on a local Ray or the cluster at `address` / $RAY_ADDRESS."""
    # Imported here, not at the top: the GPU machine of this project has no Ray, and `bench.tune` must
    # import (and `--executor local` work) there. bench/ray_backend.py is the one module that imports ray.
    from bench.ray_backend import run_workers_on_ray

    args = [(setup, n, i, trials_before) for i, n in enumerate(shares)]
    return run_workers_on_ray(
        _ray_worker, args, address=address, cpus_per_worker=setup.threads or 1, use_gpus=setup.device != "cpu"
    )


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# ------------------------------------------------------------------------------------------- reports
def counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    out = {name.lower(): states.count(state) for name, state in TrialState.__members__.items()}
    return {"complete": out["complete"], "pruned": out["pruned"], "failed": out["fail"],
            "running": out["running"], "waiting": out["waiting"], "total": len(states)}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances, or {} when they mean nothing (fewer than 2 results, or all equal)."""
    done = complete_trials(study)
    if len(done) < 2 or len({t.value for t in done}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every searched value identical
        return {}


def plot_history(study: optuna.Study, title: str) -> bytes:
    """PNG of the optimisation history: each finished trial's value and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(complete_trials(study), key=lambda t: t.number)
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if done:
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        best, running = [], -math.inf
        for y in ys:
            running = max(running, y)
            best.append(running)
        ax.scatter(xs, ys, s=18, color="tab:blue", label="complete", zorder=3)
        # Carry the best to the last trial, pruned or not, so the line spans the whole study.
        last = max(t.number for t in study.get_trials(deepcopy=False))
        ax.step([*xs, last], [*best, best[-1]], where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter(
            [t.number for t in pruned], [max(t.intermediate_values.values()) for t in pruned],
            s=18, marker="x", color="tab:gray", label="pruned (best before pruning)", zorder=2,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {METRIC}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_reports(study: optuna.Study, out: Path, summary: dict) -> None:
    attrs = ("number", "value", "state", "datetime_start", "datetime_complete", "duration", "params", "user_attrs")
    frame = study.trials_dataframe(attrs=attrs)
    records.write_text_atomic(out / "trials.csv", frame.to_csv(index=False))
    rows = ["param,importance"] + [f"{k},{v:.6f}" for k, v in importances(study).items()]
    records.write_text_atomic(out / "importances.csv", "\n".join(rows) + "\n")
    records.write_bytes_atomic(out / "history.png", plot_history(study, summary["study"]))
    records.write_text_atomic(out / "best.json", json.dumps(summary, indent=1) + "\n")


def final_run(setup: StudySetup, params: dict) -> dict:
    """The one test evaluation of a study: the best params, the trials' budget, all CPU threads."""
    spec = trial_spec(setup, params)
    rid, _, _ = train.run_identity(spec)
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
        records.save(Path(setup.results), train.failure_record(spec, exc))
        raise BenchError(f"the final run of the best configuration failed: {exc}") from None
    path = records.save(Path(setup.results), record)
    return {"record": record, "path": str(path)}


# -------------------------------------------------------------------------------------------- tune
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
    configs.method_class(method)
    space = search_space.load(method)  # a bad search space fails here, before any worker starts
    if trials < 0:
        raise BenchError(f"--trials must be >= 0, got {trials}")
    if parallel < 1:
        raise BenchError(f"--parallel must be >= 1, got {parallel}")
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}")
    train.resolve_device(device)
    from bench.data import download

    download(dataset)  # once, here: K workers must not race to fetch the same file
    name = check_study_name(study or default_study_name(method, dataset, profile.name))
    results = Path(results).resolve()
    store = storage or str(journal_path(results, name))
    setup = StudySetup(method, dataset, profile, name, store, str(results), device, seed)

    the_study = open_study(setup)
    before = len(the_study.get_trials(deepcopy=False))
    the_study.sampler = make_sampler(seed, 0, before)  # seeded by the study's size, as every worker's
    shares = split_trials(trials, parallel)
    if len(shares) > 1:
        # Share the cores: K workers each with all cores' threads would oversubscribe the CPU.
        setup = replace(setup, threads=max(1, (os.cpu_count() or 1) // len(shares)))
    if len(shares) > 1 and executor == "ray" and not ray_available():
        print("note: Ray is not installed; running the workers as local processes (--executor local)", file=sys.stderr)
        executor = "local"
    print(
        f"study {name} in {public_storage(store)}: {before} trials so far, adding {trials} "
        f"({len(shares)} worker{'s' if len(shares) != 1 else ''}, {executor if len(shares) > 1 else 'in process'}); "
        f"searching {', '.join(space)}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    problems: list[str] = []
    if len(shares) == 1:  # one worker needs no second process: run it here
        optimize(setup, shares[0], 0, before, study=the_study)
    elif len(shares) > 1 and executor == "local":
        problems = run_local(setup, shares, before)
    elif len(shares) > 1:
        problems = run_ray(setup, shares, before, address)
    wall = time.perf_counter() - start
    for line in problems:
        print(f"warning: {line}; its remaining trials were not run", file=sys.stderr)

    the_study = optuna.load_study(study_name=name, storage=open_storage(store))
    n = counts(the_study)
    summary: dict[str, Any] = {
        "study": name, "storage": public_storage(store), "method": method, "dataset": dataset,
        "profile": asdict(profile), "metric": f"valid {METRIC}", "direction": "maximize",
        "sampler": f"TPESampler(seed derived from {seed}, constant_liar=True)",
        "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}, n_warmup_steps={PRUNER_WARMUP_STEPS})",
        "search_space": {k: _space_entry(d) for k, d in space.items()},
        "counts": n, "added_trials": trials, "parallel": len(shares), "executor": executor, "wall_s": round(wall, 3),
        "best_trial": None, "final_run": None,
    }
    print(
        f"trials: {n['complete']} complete, {n['pruned']} pruned, {n['failed']} failed "
        f"({n['total']} in the study, {trials} added); wall {wall:.1f} s"
    )
    out = studies_dir(results) / name
    if not complete_trials(the_study):
        write_reports(the_study, out, summary)
        raise BenchError(f"no trial of study {name} completed; see {out / 'trials.csv'}")
    best = the_study.best_trial
    summary["best_trial"] = {
        "number": best.number, "value": best.value, "params": best.params,
        "best_epoch": best.user_attrs.get("best_epoch"), "epochs_run": best.user_attrs.get("epochs_run"),
    }
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
    print(f"best trial #{best.number}: valid {METRIC} {best.value:.4f} with {params}")
    if run_final:
        done = final_run(setup, best.params)
        record = done["record"]
        summary["final_run"] = {
            "run_id": record["run_id"], "record": done["path"], "best_epoch": record["best_epoch"],
            "valid": record["best_valid"], "test": record["test"],
        }
        print("final run of the best configuration, test metrics at best epoch " f"{record['best_epoch']}:")
        print("  " + "  ".join(f"{k} {v:.4f}" for k, v in record["test"].items()))
        print(f"record: {done['path']}", file=sys.stderr)
    write_reports(the_study, out, summary)
    print(f"reports: {out}", file=sys.stderr)
    return summary


def _space_entry(dim: search_space.Dimension) -> dict:
    entry = {"type": dim.kind}
    if dim.kind == "categorical":
        return {**entry, "choices": list(dim.choices)}
    entry.update(low=dim.low, high=dim.high, log=dim.log)
    return entry if dim.step is None else {**entry, "step": dim.step}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------- export
@dataclass
class _Candidate:
    storage: str
    study: str
    attrs: dict
    trial: FrozenTrial


def _candidates(storage: str, study: str | None, method: str | None, dataset: str | None) -> list[_Candidate]:
    store = open_storage(storage, create=False)
    found = []
    for frozen in store.get_all_studies():
        attrs = frozen.user_attrs
        if study and frozen.study_name != study:
            continue
        if "method" not in attrs or "dataset" not in attrs:
            print(f"skipping study {frozen.study_name}: not made by bench tune", file=sys.stderr)
            continue
        if (method and attrs["method"] != method) or (dataset and attrs["dataset"] != dataset):
            continue
        loaded = optuna.load_study(study_name=frozen.study_name, storage=store)
        done = complete_trials(loaded)
        if not done:
            print(f"skipping study {frozen.study_name}: no complete trial", file=sys.stderr)
            continue
        best = max(done, key=lambda t: t.value)
        found.append(_Candidate(storage, frozen.study_name, dict(attrs), best))
    return found


def export(
    results: Path,
    *,
    storage: str | None = None,
    study: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    tuned_dir: Path | None = None,
) -> list[Path]:
    """Write the best params of each (method, dataset) to `<tuned_dir>/<method>.toml`; returns the files.

    Sources: the given storage, else the study's journal, else every journal under `<results>/studies/`.
    When several studies tuned the same pair, the one with the larger budget wins (paper > quick > smoke >
    custom), then the better value: a high score on 2,000 users says less than a lower one on all of them.
    """
    import tomli_w

    if storage:
        sources = [storage]
    elif study:
        sources = [str(journal_path(results, check_study_name(study)))]
    else:
        sources = [str(p) for p in sorted(studies_dir(results).glob("*.journal"))]
    found: list[_Candidate] = []
    for source in sources:
        found += _candidates(source, study, method, dataset)
    if not found:
        where = ", ".join(public_storage(s) for s in sources) or f"{studies_dir(results)} (no *.journal)"
        raise BenchError(f"no study with a complete trial to export in {where}")

    chosen: dict[tuple[str, str], _Candidate] = {}
    for c in found:
        key = (c.attrs["method"], c.attrs["dataset"])
        rank = (_PROFILE_RANK.get(c.attrs.get("profile"), 0), c.trial.value)
        if key not in chosen or rank > (_PROFILE_RANK.get(chosen[key].attrs.get("profile"), 0), chosen[key].trial.value):
            chosen[key] = c

    target = Path(tuned_dir) if tuned_dir is not None else configs.tuned_dir()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    written = []
    for m in sorted({k[0] for k in chosen}):
        path = target / f"{m}.toml"
        doc = configs.read_toml(path)
        datasets = doc.setdefault("datasets", {})
        for (method_name, ds), c in sorted(chosen.items()):
            if method_name != m:
                continue
            cls = configs.method_class(m).Config
            values = configs.check_values(cls, dict(c.trial.params), f"study {c.study} trial {c.trial.number}")
            provenance = {
                "study": c.study, "storage": public_storage(c.storage), "trial": c.trial.number,
                "value": c.trial.value, "metric": c.attrs.get("metric", f"valid {METRIC}"),
                "profile": c.attrs.get("profile"), "max_users": c.attrs.get("max_users"),
                "epochs": c.attrs.get("epochs"), "patience": c.attrs.get("patience"), "date": now,
            }
            # TOML has no null: a budget without a user cap simply has no max_users.
            datasets[ds] = {**values, "provenance": {k: v for k, v in provenance.items() if v is not None}}
            print(f"{m}/{ds}: study {c.study} trial #{c.trial.number} (valid {METRIC} {c.trial.value:.4f}) -> {path}")
        header = "# Tuned configurations, written by `python -m bench tune --export`; used by `run --configs tuned`.\n"
        records.write_text_atomic(path, header + tomli_w.dumps(doc))
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- CLI
__all__ = ["EpochReporter", "StudySetup", "export", "tune"]
