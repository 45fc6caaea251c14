"""The grid: `python -m bench run --all`, every method x dataset x seed, resumable.

A grid is a list of `RunSpec`s. Each spec's run id is known before it runs (`RunSpec.run_id`), so a
grid skips the runs whose record already exists with status ok, and a killed grid loses only the runs that
were in flight: the driver writes each record (atomically) the moment its run finishes. A run that raises
is recorded as failed, with its traceback, and the grid goes on; the failed record is not "done", so the
next invocation retries it and the new record replaces it (same run id, same path).

Executors: `ray` (default; bench/campaign/executors.py, the only module that imports ray, explains clusters and
fractional GPUs) or `local` (in this process, one run after the other, no Ray at all).

`--set` in a grid: `key=value` applies to the methods whose config has that key (`num_intents=256` reaches
iclrec and elcrec, not sasrec) and is an error if none has it; `method.key=value` applies to one method.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.campaign.claims import Claims
from bench.campaign.progress import GridProgress
from bench.campaign.schedule import (
    PACKING_DIR,
    Scheduler,
    check_packing,
    format_duration,
    machine_name,
    make_scheduler,
    measured_packing,
)
from bench.core import checkpoints, configs, files, outcomes, records, termination, train
from bench.core.devices import device_kind
from bench.core.errors import BenchError
from bench.core.profiles import get_profile
from bench.core.spec import (
    COMMITTED_RESULTS,
    DEFAULT_RESULTS,
    EXECUTORS,
    RunSpec,
    check_choice,
    make_spec,
)


@dataclass
class GridSummary:
    ok: int = 0
    failed: list[dict] = field(default_factory=list)  # {"method", "dataset", "seed", "error", "path"}
    skipped: int = 0
    interrupted: list[dict] = field(default_factory=list)  # stopped at the time budget: retried next time
    not_started: list[str] = field(default_factory=list)  # "not started: ... expected X > Y left" lines
    wall_s: float = 0.0
    results_dir: Path = DEFAULT_RESULTS
    paths: list[Path] = field(default_factory=list)  # records written by this invocation
    claimed_elsewhere: list[dict] = field(default_factory=list)  # runs another live grid holds
    done_elsewhere: int = 0  # runs another grid finished while this one ran

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def note_other_grids(self, queue: WorkQueue) -> None:
        """What other grids on the same results folder did meanwhile: runs they held, runs they finished."""
        self.done_elsewhere = queue.done_elsewhere
        self.claimed_elsewhere = [
            {"method": s.method, "dataset": s.dataset, "seed": s.seed, "holder": holder}
            for s, holder in queue.claimed_elsewhere
        ]

    def add(self, record: dict, path: Path) -> None:
        """Count a run's record, written at `path`."""
        self.paths.append(path)
        if record["status"] == "ok":
            self.ok += 1
        elif record["status"] == "interrupted":
            self.interrupted.append(
                {k: record.get(k) for k in ("method", "dataset", "seed")} | (record.get("interrupted") or {})
            )
        else:
            self.failed.append({k: record.get(k) for k in ("method", "dataset", "seed", "error")} | {"path": path})


# ------------------------------------------------------------------------------------------------- specs
def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def split_overrides(pairs: list[str] | dict | None, methods: list[str]) -> dict[str, dict]:
    """`--set` pairs (or a dict of them, the API's) per method: unscoped keys go to the methods that have
    them, `method.key` to one."""
    per_method: dict[str, dict] = {m: {} for m in methods}
    scoped: list[tuple[str, str, object]] = []
    given = pairs if isinstance(pairs, dict) else configs.parse_overrides(pairs)
    for key, value in given.items():
        scope, dot, name = key.partition(".")
        if dot and scope in per_method:
            scoped.append((scope, name, value))
            continue
        if dot and scope in configs.REGISTRY:
            raise BenchError(f"--set {key}: method {scope} is not in this grid ({', '.join(methods)})")
        owners = [m for m in methods if key in configs.field_types(configs.method_class(m).Config)]
        if not owners:
            raise BenchError(
                f"--set {key}: no method of this grid ({', '.join(methods)}) has a config key {key!r}"
            )
        if len(owners) < len(methods):
            print(f"note: --set {key} applies to {', '.join(owners)} only", file=sys.stderr)
        for m in owners:
            per_method[m][key] = value
    for scope, name, value in scoped:  # after the unscoped ones: the more specific setting wins
        per_method[scope][name] = value
    return per_method


def grid_specs(
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    *,
    profile: str | None = None,
    set_pairs: list[str] | dict | None = None,
    **options,
) -> list[RunSpec]:
    """The grid's specs: methods x datasets x seeds (defaults: all methods, all datasets, the profile's
    seeds), each built by `make_spec` with `options` (its keyword arguments), so every name and value is
    checked before any work starts. `set_pairs` are `--set` pairs, split per method by `split_overrides`.
    The profile's extra columns (the smoke grid's GRU4Rec column) follow their method's own runs, with
    their values over the `--set` ones; one that is the same run as another spec is not added twice.
    """
    from bench.core.data import dataset_names

    for key in ("save_checkpoint", "overrides", "seed"):
        if options.get(key) is not None:
            raise BenchError(f"grid_specs takes no {key!r}: it names one run, not a grid")
    methods = _unique(methods or list(configs.REGISTRY))
    datasets = _unique(datasets or dataset_names())
    chosen = get_profile(profile or "paper")
    seeds = _unique(seeds or list(chosen.seeds))
    overrides = split_overrides(set_pairs, methods)
    columns = [(method, dict(overrides[method])) for method in methods]
    for method, values in chosen.extra_columns:
        if method in methods:
            at = max(i for i, (m, _) in enumerate(columns) if m == method) + 1
            columns.insert(at, (method, {**overrides[method], **dict(values)}))
    specs = [
        make_spec(method, dataset, profile=profile, seed=seed, overrides=dict(values), **options)
        for method, values in columns
        for dataset in datasets
        for seed in seeds
    ]
    seen: set[str] = set()
    return [spec for spec in specs if not (spec.run_id in seen or seen.add(spec.run_id))]  # first of equal runs


# --------------------------------------------------------------------------------------------- running
class WorkQueue:
    """The runs a grid still has to do, handed out one at a time as its slots free up.

    The scheduler (bench/campaign/schedule.py) picks which run comes next (grid order, or under a time budget the
    longest expected first, never one expected not to finish). A run is then handed out only once this grid
    has claimed it (bench/campaign/claims.py) and only while no ok record exists for it, so two grids on one results
    folder share the runs between them: each run is trained once, by whichever grid claims it first. Runs
    another grid holds are left to it and reported.
    """

    def __init__(self, scheduler: Scheduler, results_dir: Path, claims: Claims) -> None:
        self.scheduler = scheduler
        self.results_dir = results_dir
        self.claims = claims
        self.claimed_elsewhere: list[tuple[RunSpec, str]] = []
        self.done_elsewhere = 0

    def take(self) -> RunSpec | None:
        """The next run to start now, claimed; None when nothing (more) can start now."""
        while (spec := self.scheduler.next_run()) is not None:
            rid = spec.run_id
            if not self.claims.try_claim(rid):
                self.claimed_elsewhere.append((spec, self.claims.holder_of(rid)))
                self.scheduler.dropped(spec)
                continue
            if self._done(rid, spec):  # finished by another grid after this one started
                self.claims.release(rid)
                self.done_elsewhere += 1
                self.scheduler.dropped(spec)
                continue
            return spec
        return None

    def _done(self, rid: str, spec: RunSpec) -> bool:
        meta = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "profile": spec.profile, "run_id": rid}
        record = records.read_record(records.record_path(self.results_dir, meta))
        return record is not None and record.get("status") == "ok"

    def finished(self, record: dict) -> None:
        self.scheduler.finished(record)
        self.claims.release(record["run_id"])


def _run_local(queue: WorkQueue, on_done: Callable[[dict], None], progress: GridProgress,
               clock: Callable[[], float]) -> None:
    progress.started(1)
    while not termination.requested() and (spec := queue.take()) is not None:
        try:
            record = train.run(spec, progress=progress.enabled, clock=clock)
        except Exception as exc:  # recorded as failed; KeyboardInterrupt still stops the grid
            record = outcomes.failure_record(spec, exc)
        on_done(record)  # after a SIGTERM: the run stopped at its last epoch boundary, recorded interrupted


def _run_on_ray(queue: WorkQueue, on_done: Callable[[dict], None], progress: GridProgress, address: str | None,
                cpus_per_run: float | None, gpus_per_run: float, deadline: float | None) -> None:
    from bench.campaign.executors import run_specs_on_ray

    run_specs_on_ray(queue.take, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                     on_done=on_done, on_start=progress.started, deadline=deadline)


def _measured_gpu_packing(results_dir: Path, cpus_per_run: float | None, progress: bool) -> tuple[float, float | None]:
    """GPUs and CPUs per run when --gpus-per-run is not given on a GPU: as `bench packing` chose on this GPU
    model (bench/schedule.measured_packing), else one run per GPU."""
    machine = machine_name("cuda")
    measured = measured_packing("cuda", machine, [results_dir / "benchmarks", PACKING_DIR])
    if measured is None:
        if progress:
            print(f"grid: 1 run per GPU (no packing measurement of {machine}; `python -m bench packing` makes one)",
                  flush=True)
        return 1.0, cpus_per_run
    runs, threads, path = measured
    if progress:
        print(f"grid: {runs} run(s) per GPU, {threads} thread(s) each, as measured in {path} "
              "(--gpus-per-run overrides)", flush=True)
    return 1.0 / runs, cpus_per_run if cpus_per_run is not None else float(threads)


def run_grid(
    specs: list[RunSpec], results_dir: Path | str, executor: str = "ray", address: str | None = None,
    cpus_per_run: float | None = None, gpus_per_run: float | None = None, progress: bool = True,
    time_budget: float | None = None, clock: Callable[[], float] = time.time,
) -> GridSummary:
    """Run the specs not yet done under `results_dir`, writing each record as its run finishes.

    `address`, `cpus_per_run` and `gpus_per_run` apply to the Ray executor only. A spec's device `cpu`
    means no GPU per run; `cuda` means one unless `gpus_per_run` packs several runs on a GPU.
    `time_budget` (seconds) time-boxes the grid (bench/campaign/schedule.py): longest expected runs first, none
    started that is not expected to finish, runs in flight at the budget recorded interrupted and
    checkpointed (bench/core/checkpoints.py, default folder outside the working copy) so that the next
    invocation resumes them. The budget is read on `clock` (tests give their own) by the scheduler and by the
    runs of the local executor; Ray tasks and the Ray driver read time.time.
    """
    _check_options(specs, executor, address, cpus_per_run, gpus_per_run, time_budget)
    deadline = None if time_budget is None else clock() + time_budget
    start = time.perf_counter()
    # Absolute: the driver writes the records, but a relative path must not depend on anyone's cwd later.
    summary = GridSummary(results_dir=Path(results_dir).expanduser().resolve())
    files.check_writable(summary.results_dir / "runs")  # before any training, not when the first run ends
    if executor == "ray":
        specs, cpus_per_run, gpus_per_run = _pin_ray_devices(specs, summary.results_dir, cpus_per_run, gpus_per_run, progress)
    else:
        specs = [replace(s, device=device_kind("auto")) if s.device == "auto" else s for s in specs]
    specs, resumable = _with_checkpoints(specs, deadline)
    by_id: dict[str, RunSpec] = {}
    for spec in specs:
        by_id.setdefault(spec.run_id, spec)
    done = records.completed_run_ids(summary.results_dir)
    todo = {rid: spec for rid, spec in by_id.items() if rid not in done}
    summary.skipped = len(by_id) - len(todo)
    scheduler = make_scheduler(todo, summary.results_dir, deadline, estimate_folders=[COMMITTED_RESULTS],
                               resumable=resumable, clock=clock)
    if progress:
        _print_plan(scheduler, len(by_id), summary.skipped, len(todo), time_budget)
    _download_once(todo.values())
    bar = GridProgress(len(todo), summary.skipped, progress and bool(todo))
    claims = Claims(summary.results_dir)
    queue = WorkQueue(scheduler, summary.results_dir, claims)

    def on_done(record: dict) -> None:
        path = records.save(summary.results_dir, record)
        queue.finished(record)  # the record is in: the scheduler learns from it, the claim can go
        summary.add(record, path)
        bar.finished(record)

    try:
        with claims:
            if todo and executor == "local":
                _run_local(queue, on_done, bar, clock)
            elif todo:
                _run_on_ray(queue, on_done, bar, address, cpus_per_run, gpus_per_run, deadline)
    finally:
        bar.close()
    summary.not_started = scheduler.refusal_lines()
    summary.note_other_grids(queue)
    summary.wall_s = time.perf_counter() - start
    return summary


def _check_options(specs: list[RunSpec], executor: str, address: str | None, cpus_per_run: float | None,
                   gpus_per_run: float | None, time_budget: float | None) -> None:
    """Every option of the grid checked before any work: executor, Ray-only options, budget, packing."""
    check_choice("executor", executor, EXECUTORS)
    ray_only = {"--address": address, "--cpus-per-run": cpus_per_run, "--gpus-per-run": gpus_per_run}
    given = [name for name, value in ray_only.items() if value is not None]
    if executor == "local" and given:
        raise BenchError(f"{', '.join(given)} only apply to --executor ray")
    if "cpu" in {s.device for s in specs} and gpus_per_run:
        raise BenchError("--device cpu contradicts --gpus-per-run > 0")
    # ---- campaign hook (bench/campaign/schedule.py): the budget and the packing are checked before any work
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise BenchError(f"--time-budget must be more than 0, got {time_budget:g} s")
    check_packing(gpus_per_run, torch.cuda.device_count(), remote=bool(address or os.environ.get("RAY_ADDRESS")))


def _pin_ray_devices(specs: list[RunSpec], results_dir: Path, cpus_per_run: float | None, gpus_per_run: float | None,
                     progress: bool) -> tuple[list[RunSpec], float | None, float]:
    """Each run's device pinned here, so that its id (which includes the device) is the one its record gets;
    GPUs per run from the driver's view (a GPU-less driver of a GPU cluster passes --gpus-per-run)."""
    devices = {s.device for s in specs}
    if gpus_per_run is None:
        wants_gpu = any(d.startswith("cuda") for d in devices) or ("auto" in devices and torch.cuda.is_available())
        gpus_per_run = 1.0 if wants_gpu and "cpu" not in devices else 0.0
        if gpus_per_run and torch.cuda.is_available():
            gpus_per_run, cpus_per_run = _measured_gpu_packing(results_dir, cpus_per_run, progress)
    device = "cuda" if gpus_per_run > 0 else "cpu"
    return [replace(s, device=device) for s in specs], cpus_per_run, gpus_per_run


def _with_checkpoints(specs: list[RunSpec], deadline: float | None) -> tuple[list[RunSpec], set[str]]:
    """The specs with a checkpoint folder wherever a run may stop at the budget (so that it resumes), and the
    ids of the runs that asked for checkpoints themselves: those may continue next time."""
    resumable = {s.run_id for s in specs if s.checkpoint_dir is not None}
    if deadline is not None:
        default_dir = str(checkpoints.default_folder())
        specs = [s if s.checkpoint_dir else replace(s, checkpoint_dir=default_dir) for s in specs]
    return specs, resumable


def _print_plan(scheduler: Scheduler, runs: int, skipped: int, todo: int, time_budget: float | None) -> None:
    print(f"grid: {runs} runs, {skipped} already done (skipped), {todo} to run", flush=True)
    if time_budget is None:
        return
    print(f"grid: time budget {format_duration(time_budget)}; expected (upper bound, max epochs):", flush=True)
    for run in scheduler.order():
        expected = scheduler.expected(run)
        what = "probe (no earlier record)" if expected is None else format_duration(expected)
        resumed = f", resumes at epoch {run.epochs_done}" if run.epochs_done else ""
        print(f"  {run.spec.method:<8} {run.spec.dataset:<20} seed {run.spec.seed:<3} {what}{resumed}", flush=True)
    later = [r for r in scheduler.order() if r.resumable and (scheduler.expected(r) or math.inf) > time_budget]
    if later:
        print("grid: runs to continue next time (checkpointed at the budget, resumed by the same command): "
              + ", ".join(f"{r.spec.method} {r.spec.dataset} seed {r.spec.seed}" for r in later), flush=True)


def _download_once(specs) -> None:
    """Each dataset fetched (and verified) once, here: concurrent workers must not fetch the same file."""
    from bench.core import data

    for name in _unique([spec.dataset for spec in specs]):
        data.download(name)
