"""`python -m bench campaign PLAN`: a campaign of long runs, written down once and continued anywhere.

A plan (a TOML file, `campaigns/*.toml`) lists steps in the order they matter; each step is one grid
(methods x datasets x seeds, optional `--set` overrides) of a common budget (profile, device, threads,
checkpoints). The campaign runs the plan in *lanes*: each lane is a loop over the steps, running each
step's grid as its own `python -m bench run --all ... --executor local` process, `nice`d, one thread per
run. The grids of all lanes write to one results folder, whose run claims (bench/campaign/claims.py) make
a lane skip the runs another lane holds and move on to the next step: two lanes on two cores run the first
two runs of the plan side by side, and a short run is paired with a long one without being told to.

Nothing here trains: a lane's process is the ordinary grid, so its checkpoints (every epoch by default),
its SIGTERM handling and its records are the grid's (docs/campaigns.md). Stopping the campaign (SIGTERM,
Ctrl-C) passes SIGTERM on to the lanes' grids, which checkpoint their runs at the last epoch boundary and
record them interrupted; the same command continues them, here or on another machine that has the
checkpoint folder. Finished records stay in the campaign's results folder (outside any working copy by
default, like the checkpoints) until `--collect DIR` copies the `ok` ones into a results folder to commit;
the checkout's committed records count as done, so a clone on a new machine runs only what is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import records
from bench.core.errors import BenchError


def default_results() -> Path:
    """Where a campaign's records go unless the plan or `--results` says otherwise: beside the default
    checkpoint folder, outside any working copy, so a fresh clone on the same machine continues it."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "intent-bench" / "campaign"


# The budget keys a plan's [campaign] table may set, with the grid option each becomes.
BUDGET_OPTIONS = {
    "profile": "--profile",
    "device": "--device",
    "threads": "--threads",
    "checkpoint_every": "--checkpoint-every",
    "epochs": "--epochs",
    "patience": "--patience",
    "max_users": "--max-users",
    "precision": "--precision",
    "compile": "--compile",
    "protocol": "--protocol",
    "configs": "--configs",
}
STEP_KEYS = {"name", "methods", "datasets", "seeds", "set"}


@dataclass(frozen=True)
class Step:
    name: str
    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)

    def grid_args(self) -> list[str]:
        args = ["--methods", *self.methods, "--datasets", *self.datasets, "--seeds", *map(str, self.seeds)]
        for pair in self.overrides:
            args += ["--set", pair]
        return args


@dataclass(frozen=True)
class Plan:
    path: Path
    budget: dict[str, object]
    steps: list[Step]
    results: Path

    def budget_args(self) -> list[str]:
        args: list[str] = []
        for key, value in self.budget.items():
            args += [BUDGET_OPTIONS[key], str(value)]
        return args


def _str_list(value, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise BenchError(f"{where}: {what} must be a non-empty list of names")
    return value


def load_plan(path: Path | str, results: Path | str | None = None) -> Plan:
    """Read and check a plan; every name is checked again by the grid, this catches the plan's own shape."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"campaign plan {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"campaign plan {path}: not valid TOML ({exc})") from None
    budget = dict(raw.get("campaign", {}))
    folder = budget.pop("results", None)
    unknown = sorted(set(budget) - set(BUDGET_OPTIONS))
    if unknown:
        raise BenchError(f"campaign plan {path}: unknown [campaign] key(s) {', '.join(unknown)}; "
                         f"known: results, {', '.join(BUDGET_OPTIONS)}")
    steps = []
    for i, entry in enumerate(raw.get("step", []), start=1):
        where = f"campaign plan {path}, step {i}"
        extra = sorted(set(entry) - STEP_KEYS)
        if extra:
            raise BenchError(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(STEP_KEYS))}")
        seeds = entry.get("seeds", [1])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise BenchError(f"{where}: seeds must be a non-empty list of integers")
        overrides = entry.get("set", [])
        overrides = _str_list(overrides, "set", where) if overrides else []
        methods = _str_list(entry.get("methods"), "methods", where)
        datasets = _str_list(entry.get("datasets"), "datasets", where)
        name = entry.get("name") or f"{' '.join(methods)} {' '.join(datasets)} seeds {' '.join(map(str, seeds))}"
        steps.append(Step(str(name), methods, datasets, seeds, overrides))
    if not steps:
        raise BenchError(f"campaign plan {path}: no [[step]] to run")
    chosen = Path(results) if results is not None else Path(folder) if folder else default_results()
    return Plan(path, budget, steps, chosen.expanduser().resolve())


def step_command(plan: Plan, step: Step, time_budget: str | None = None) -> list[str]:
    """The grid command of one step: the command a person would type to run it by hand."""
    command = [sys.executable, "-m", "bench", "run", "--all", *step.grid_args(), *plan.budget_args(),
               "--executor", "local", "--results", str(plan.results)]
    if time_budget:
        command += ["--time-budget", time_budget]
    return command


class Lanes:
    """The lanes' grid processes, so that a stop reaches every one of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, command: list[str], log, niceness: int) -> int | None:
        with self.lock:
            if self.stopping:
                return None
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
            self.children.add(child)
        try:
            return child.wait()
        finally:
            with self.lock:
                self.children.discard(child)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for child in self.children:
                child.send_signal(signal.SIGTERM)  # each grid checkpoints its run and records it interrupted


def _lane(lanes: Lanes, plan: Plan, number: int, niceness: int, deadline: float | None, log_dir: Path,
          say) -> None:
    log_path = log_dir / f"lane{number}.log"
    with open(log_path, "a", buffering=1) as log:
        for step in plan.steps:
            budget = None
            if deadline is not None:
                left = deadline - time.time()
                if left < 60:
                    say(f"lane {number}: time budget spent before step {step.name!r}")
                    return
                budget = f"{int(left)}s"
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} step {step.name}\n")
            code = lanes.run(step_command(plan, step, budget), log, niceness)
            if code is None:
                return
            say(f"lane {number}: step {step.name!r} ended with exit {code} (log {log_path})")
            if lanes.stopping:
                return


def run_campaign(plan: Plan, lanes: int = 2, niceness: int = 10, time_budget: float | None = None,
                 say=print, stagger_s: float = 5.0, committed: Path | str | None = None) -> int:
    """Run the plan in `lanes` lanes until every step's grid has ended in every lane; 143 when stopped.
    Runs already committed in the checkout (`committed`, default its results folder) are not run again."""
    if lanes < 1:
        raise BenchError(f"--lanes must be at least 1, got {lanes}")
    log_dir = plan.results / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if time_budget is None else time.time() + time_budget
    group = Lanes()
    previous = {s: signal.signal(s, lambda *_: group.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
    say(f"campaign {plan.path}: {len(plan.steps)} steps, {lanes} lane(s), nice {niceness}, records in "
        f"{plan.results / 'runs'}, logs in {log_dir}")
    adopted = adopt_committed(plan, committed)
    if adopted:
        say(f"{len(adopted)} run(s) of the plan already committed in the checkout: counted as done")
    threads = []
    try:
        for number in range(1, lanes + 1):
            thread = threading.Thread(target=_lane, args=(group, plan, number, niceness, deadline, log_dir, say),
                                      daemon=True)
            thread.start()
            threads.append(thread)
            time.sleep(stagger_s)  # the first lane claims the first step's run before the next lane looks at it
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if group.stopping:
        say("campaign stopped: runs in flight were checkpointed and recorded interrupted; the same command continues")
        return 143
    return 0


def _copy_ok_records(plan: Plan, source_runs: Path, dest_runs: Path) -> list[Path]:
    """Copy the `ok` records of the plan's runs from `source_runs` that `dest_runs` lacks (atomically; a record
    already there is left alone); the copied paths."""
    dest_runs.mkdir(parents=True, exist_ok=True)
    wanted = {spec.run_id for specs in step_specs(plan).values() for spec in specs}
    copied = []
    for path in sorted(source_runs.glob("*.json")):
        record = records.read_record(path)
        if record is None or record.get("status") != "ok" or record.get("run_id") not in wanted:
            continue
        target = dest_runs / path.name
        if not target.exists():
            tmp = target.with_suffix(".json.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            copied.append(target)
    return copied


def collect(plan: Plan, dest: Path | str) -> list[Path]:
    """Copy the campaign's `ok` records of the plan's steps that `dest/runs` lacks; the copied paths."""
    return _copy_ok_records(plan, plan.results / "runs", Path(dest) / "runs")


def adopt_committed(plan: Plan, committed: Path | str | None = None) -> list[Path]:
    """The reverse of `collect`: the plan's runs whose `ok` records the checkout already has (committed in
    `results/runs`) are copied into the campaign's folder, so that its grids skip them. A fresh machine
    continues a campaign from a clone alone: only runs in flight, whose checkpoints stayed on the old
    machine, start again."""
    from bench.core.spec import COMMITTED_RESULTS

    source = Path(committed) if committed is not None else COMMITTED_RESULTS
    return _copy_ok_records(plan, source / "runs", plan.results / "runs")


def step_specs(plan: Plan) -> dict[str, list]:
    """Each step's run specs, as its grid builds them (so run ids match the grid's)."""
    from bench.campaign.grid import grid_specs

    budget = plan.budget
    options = {key: budget[key] for key in ("device", "epochs", "patience", "max_users", "precision", "compile",
                                            "protocol", "checkpoint_every") if key in budget}
    if "configs" in budget:
        options["config_source"] = budget["configs"]
    if "threads" in budget:
        options["num_threads"] = budget["threads"]
    return {
        step.name: grid_specs(step.methods, step.datasets, step.seeds, profile=budget.get("profile"),
                              set_pairs=step.overrides or None, **options)
        for step in plan.steps
    }


def plan_status(plan: Plan, committed: Path | str | None = None) -> list[tuple[Step, list[dict]]]:
    """Each step with one row per run (bench/campaign/status.py's rows: done, interrupted with its epoch,
    failed or pending, and the expected time left), read from the campaign's records and checkpoints and
    the checkout's committed records (`committed`, default its results folder)."""
    from bench.campaign.schedule import load_estimates
    from bench.campaign.status import _latest_records, _row
    from bench.core import checkpoints
    from bench.core.spec import COMMITTED_RESULTS

    latest = _latest_records(plan.results)
    for run_id, record in _latest_records(committed if committed is not None else COMMITTED_RESULTS).items():
        if record.get("status") == "ok" and latest.get(run_id, {}).get("status") != "ok":
            latest[run_id] = record  # committed in the checkout: done, wherever the campaign's folder is
    estimates = load_estimates(plan.results, COMMITTED_RESULTS)
    folder = checkpoints.default_folder()
    by_name = step_specs(plan)
    return [(step, [_row(spec, spec.run_id, latest, folder, estimates) for spec in by_name[step.name]])
            for step in plan.steps]


def print_plan_status(plan: Plan, committed: Path | str | None = None) -> None:
    from bench.campaign.status import _cell, expected_left, print_rough_note

    print(f"campaign {plan.path}: records in {plan.results / 'runs'}")
    counts: dict[str, int] = {}
    every: list[dict] = []
    for i, (step, rows) in enumerate(plan_status(plan, committed), start=1):
        print(f"{i}. {step.name}")
        every += rows
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            left = f"  (expected left {expected_left(r)})" if r["status"] != "ok" else ""
            print(f"   {r['method']:<8} {r['dataset']:<20} seed {r['seed']}  {_cell(r)}{left}")
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print_rough_note(every)
