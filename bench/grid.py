"""The grid: `python -m bench run --all`, every method x dataset x seed, resumable.

A grid is a list of `RunSpec`s. Each spec's run id is known before it runs (`train.run_identity`), so a
grid skips the runs whose record already exists with status ok, and a killed grid loses only the runs that
were in flight: the driver writes each record (atomically) the moment its run finishes. A run that raises
is recorded as failed, with its traceback, and the grid goes on; the failed record is not "done", so the
next invocation retries it and the new record replaces it (same run id, same path).

Executors: `ray` (default; bench/ray_backend.py, the only module that imports ray, explains clusters and
fractional GPUs) or `local` (in this process, one run after the other, no Ray at all).

`--set` in a grid: `key=value` applies to the methods whose config has that key (`num_intents=256` reaches
iclrec and elcrec, not sasrec) and is an error if none has it; `method.key=value` applies to one method.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench import configs, records, train
from bench.errors import BenchError
from bench.train import SELECTION_METRIC, RunSpec

EXECUTORS = ("ray", "local")
DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"


@dataclass
class GridSummary:
    ok: int = 0
    failed: list[dict] = field(default_factory=list)  # {"method", "dataset", "seed", "error", "path"}
    skipped: int = 0
    wall_s: float = 0.0
    results_dir: Path = DEFAULT_RESULTS
    paths: list[Path] = field(default_factory=list)  # records written by this invocation

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ---------------------------------------------------------------------------------------------- failures
def failure_message(exc: BaseException) -> str:
    """One line: a user error's own message, else `TypeName: first line of the message`."""
    if isinstance(exc, BenchError):
        message = str(exc)
    else:
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return " ".join(message.split())  # records promise a one-line error


def failure_record(spec: RunSpec, exc: BaseException) -> dict:
    """The failed record of a run that raised `exc`; the traceback is kept for whoever debugs it."""
    record = train.failed_record(spec, failure_message(exc))
    record["traceback"] = "".join(traceback.format_exception(exc))
    return record


# ------------------------------------------------------------------------------------------------- specs
def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def split_overrides(pairs: list[str] | None, methods: list[str]) -> dict[str, dict[str, str]]:
    """`--set` pairs per method: unscoped keys go to the methods that have them, `method.key` to one."""
    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    scoped: list[tuple[str, str, str]] = []
    for key, value in configs.parse_overrides(pairs).items():
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


def specs_from_args(args) -> list[RunSpec]:
    """The grid's specs from `run --all` arguments, every name checked before any work starts."""
    from bench.data import dataset_names, load_manifest
    from bench.evaluate import PROTOCOLS
    from bench.profiles import get_profile

    if getattr(args, "save_checkpoint", None):
        raise BenchError("--save-checkpoint names one file: it cannot be used with --all")
    if getattr(args, "json", False):
        raise BenchError("--json prints one run's record: with --all, read the records under --results")
    profile = get_profile(args.profile or "paper")
    methods = _unique(args.methods or ([args.method] if args.method else list(configs.REGISTRY)))
    datasets = _unique(args.datasets or ([args.dataset] if args.dataset else dataset_names()))
    seeds = _unique(args.seeds or ([args.seed] if args.seed is not None else list(profile.seeds)))
    # Execution options are checked here, once: a bad value is a user error, not one failed record per run.
    train.check_execution(args.precision, args.compile)
    for name in methods:
        configs.method_class(name)
    for name in datasets:
        load_manifest(name)
    if args.protocol not in PROTOCOLS:
        raise BenchError(
            f"unknown evaluation protocol {args.protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        )
    epochs = args.epochs if args.epochs is not None else profile.epochs
    patience = args.patience if args.patience is not None else profile.patience
    max_users = args.max_users if args.max_users is not None else profile.max_users
    if epochs < 1 or patience < 1 or (max_users is not None and max_users < 1):
        raise BenchError("--epochs, --patience and --max-users must be >= 1")
    # A budget other than the profile's is labelled custom, so that leaderboard groups never mix budgets.
    same_budget = (epochs, patience, max_users) == (profile.epochs, profile.patience, profile.max_users)
    label = profile.name if same_budget else "custom"
    overrides = split_overrides(args.overrides, methods)
    return [
        RunSpec(
            method=method,
            dataset=dataset,
            seed=seed,
            profile=label,
            epochs=epochs,
            patience=patience,
            max_users=max_users,
            protocol=args.protocol,
            config_source=args.configs,
            overrides=dict(overrides[method]),
            device=args.device,
            num_threads=args.threads,
            precision=args.precision,
            compile=args.compile,
        )
        for method in methods
        for dataset in datasets
        for seed in seeds
    ]


# -------------------------------------------------------------------------------------------- progress
class _Progress:
    """A bar on stderr (done/running/failed/skipped) and one line on stdout per finished run."""

    def __init__(self, total: int, skipped: int, enabled: bool) -> None:
        self.enabled = enabled
        self.counts = {"done": 0, "running": 0, "failed": 0, "skipped": skipped}
        self.remaining = total
        self.slots = 0  # nothing runs until the executor is up
        self.bar = tqdm(
            total=total, desc="grid", unit="run", file=sys.stderr, disable=not enabled, dynamic_ncols=True
        )
        self._refresh()

    def _refresh(self, redraw: bool = True) -> None:
        self.counts["running"] = min(self.slots, self.remaining)
        self.bar.set_postfix(self.counts, refresh=redraw)

    def started(self, slots: int) -> None:
        self.slots = slots
        self._refresh()

    def finished(self, record: dict) -> None:
        self.remaining -= 1
        ok = record["status"] == "ok"
        self.counts["done" if ok else "failed"] += 1
        if self.enabled:
            head = f"{record['method']:<8} {record['dataset']:<20} seed {record['seed']:<3}"
            if ok:
                best = (record.get("best_valid") or {}).get(SELECTION_METRIC, float("nan"))
                wall = (record.get("totals") or {}).get("wall_s", float("nan"))
                line = f"{head} ok      valid {SELECTION_METRIC} {best:.4f}  {wall:8.1f} s"
            else:
                line = f"{head} FAILED  {record.get('error')}"
            self.bar.write(line, file=sys.stdout)
        self._refresh(redraw=False)
        self.bar.update(1)  # redraws with the new counts

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------------------------- running
def _run_local(specs: list[RunSpec], on_done: Callable[[dict], None], progress: _Progress) -> None:
    progress.started(1)
    for spec in specs:
        try:
            record = train.run(spec, progress=progress.enabled)
        except Exception as exc:  # recorded as failed; KeyboardInterrupt still stops the grid
            record = failure_record(spec, exc)
        on_done(record)


def run_grid(
    specs: list[RunSpec],
    results_dir: Path | str,
    executor: str = "ray",
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    progress: bool = True,
) -> GridSummary:
    """Run the specs not yet done under `results_dir`, writing each record as its run finishes."""
    from bench import data

    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    start = time.perf_counter()
    # Absolute: the driver writes the records, but a relative path must not depend on anyone's cwd later.
    summary = GridSummary(results_dir=Path(results_dir).expanduser().resolve())
    # Pin each run's device here, so that its id (which includes the device) is the one its record gets.
    if executor == "ray":
        if gpus_per_run is None:  # the driver's view; a GPU-less driver of a GPU cluster passes --gpus-per-run
            gpus_per_run = 1.0 if torch.cuda.is_available() else 0.0
        specs = [replace(s, device="cuda" if gpus_per_run > 0 else "cpu") for s in specs]
    else:
        specs = [replace(s, device=train.device_kind("auto")) if s.device == "auto" else s for s in specs]
    by_id: dict[str, RunSpec] = {}
    for spec in specs:  # resolving every config here turns a bad config into an error before any work
        by_id.setdefault(train.run_identity(spec)[0], spec)
    done = records.completed_run_ids(summary.results_dir)
    todo = [spec for rid, spec in by_id.items() if rid not in done]
    summary.skipped = len(by_id) - len(todo)
    if progress:
        print(
            f"grid: {len(by_id)} runs, {summary.skipped} already done (skipped), {len(todo)} to run",
            flush=True,
        )
    # Once, here: concurrent workers must not download (and verify) the same file at the same time.
    for name in _unique([spec.dataset for spec in todo]):
        data.download(name)

    bar = _Progress(len(todo), summary.skipped, progress and bool(todo))

    def on_done(record: dict) -> None:
        path = records.save(summary.results_dir, record)
        summary.paths.append(path)
        if record["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed.append(
                {k: record.get(k) for k in ("method", "dataset", "seed", "error")} | {"path": path}
            )
        bar.finished(record)

    try:
        if todo and executor == "local":
            _run_local(todo, on_done, bar)
        elif todo:
            from bench.ray_backend import run_specs_on_ray

            run_specs_on_ray(
                todo,
                address=address,
                cpus_per_run=cpus_per_run,
                gpus_per_run=gpus_per_run,
                on_done=on_done,
                on_start=bar.started,
            )
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - start
    return summary


def run_grid_from_args(args) -> int:
    """`run --all`: 0 when every run is ok (or was already), 1 when any failed."""
    if args.executor not in EXECUTORS:
        raise BenchError(f"unknown executor {args.executor!r}; choose one of {', '.join(EXECUTORS)}")
    ray_only = {
        "--address": args.address,
        "--cpus-per-run": args.cpus_per_run,
        "--gpus-per-run": args.gpus_per_run,
    }
    given = [name for name, value in ray_only.items() if value is not None]
    if args.executor == "local" and given:
        raise BenchError(f"{', '.join(given)} only apply to --executor ray")
    gpus_per_run = args.gpus_per_run
    if args.device == "cpu":
        if gpus_per_run:
            raise BenchError("--device cpu contradicts --gpus-per-run > 0")
        gpus_per_run = 0.0
    elif args.device.startswith("cuda") and gpus_per_run is None:
        gpus_per_run = 1.0
    specs = specs_from_args(args)
    summary = run_grid(
        specs,
        args.results or DEFAULT_RESULTS,
        executor=args.executor,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=gpus_per_run,
        progress=True,
    )
    print(
        f"grid: {summary.ok} ok, {len(summary.failed)} failed, {summary.skipped} skipped "
        f"in {summary.wall_s:.1f} s"
    )
    print(f"records: {summary.results_dir / 'runs'}")
    for f in summary.failed:
        print(f"failed: {f['method']} {f['dataset']} seed {f['seed']}: {f['error']}", file=sys.stderr)
    return summary.exit_code
