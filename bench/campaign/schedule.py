"""The time-boxed grid (`run --all --time-budget 25m`): expected run times, the order runs start in, the
runs refused, and the projection of the GPU time a whole protocol needs (`bench status`).

Expected time of a run. From earlier records (ok or interrupted) of the same method, dataset, device, data
size (`max_users`) and compile mode: the median seconds of an epoch (E-step + train + valid, first epochs
left out when later ones exist, since they carry compiling and warm-up) times the epochs the run has left
(the profile's maximum minus those its checkpoint holds), plus the records' mean overhead (wall time not
spent in epochs: data loading, the first epoch's extra, the test). That is an upper bound: early stopping
(patience) usually ends a run before its maximum. Without such a record the run is a *probe*: it starts,
and after its first epoch (its second when compiled) it stops (interrupted, checkpointed, so nothing is
lost) unless that epoch's time times the epochs left fits in the time left. As the grid's own records
arrive they refine the estimates, and replace earlier ones once they hold a few steady epochs: runs packed
several to a GPU are slower per epoch than the solo runs that may have made the first estimate.

Order and refusals. Probes start first (one per kind at a time: its record then estimates its siblings),
then the longest expected runs; a run whose expectation exceeds the time left when a slot frees is not
started ("not started: expected X > Y left"). At the budget every run stops after its current epoch when
the next one would not end in time, and is recorded `interrupted` (kept out of every table, retried and
resumed from its checkpoint by the next invocation); the Ray executor cancels what is still running a
grace period after the deadline. Runs whose checkpoints were asked for (`--checkpoint-every`,
`--checkpoint-dir`) are not refused for being long: one that will not finish in this budget starts anyway
(if an epoch fits), runs until the budget and is continued by the next invocation, which is how a run of
many hours is carried across jobs of one or two.

Packing. `bench packing` (bench/campaign/packing.py) measures how many runs to put on one GPU; this module reads
those measurements back (`measured_packing`: the grid's default packing on that GPU model; `packed_speedups`:
what `bench status` divides its projection by).

Nothing here trains or imports Ray: the grid (bench/campaign/grid.py) and the executors ask a `Scheduler`.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.core import records
from bench.core.context import cpu_model
from bench.core.devices import device_kind
from bench.core.errors import BenchError
from bench.core.spec import COMMITTED_RESULTS, RunSpec

# The checkout's committed packing measurements, read beside the results folder's own <results>/benchmarks.
PACKING_DIR = COMMITTED_RESULTS / "benchmarks"
FAITHFUL_COMPILE = "off"  # the compile mode whose measured packing the grid follows by default
GRACE_S = 120.0  # after the deadline, in-flight Ray tasks get this long to finish their epoch, then are cancelled
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, option: str = "--time-budget") -> float:
    """Seconds of a duration such as 90s, 25m, 1h, 1.5h (one line, BenchError, for anything else or <= 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", str(text).lower())
    if not match:
        raise BenchError(f"{option} {text!r}: give a positive duration with a unit, such as 90s, 25m, 1h or 1.5h")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise BenchError(f"{option} {text!r}: the budget must be more than 0")
    return seconds


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    # below 10 s one decimal, so that a refusal never reads "expected 6 s > 6 s left"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def check_packing(gpus_per_run: float | None, gpus_here: int, remote: bool) -> None:
    """A GPU request that cannot be packed: one line. Ray takes fractions below 1 or whole GPUs; a local
    machine cannot give a run more GPUs than it has (a cluster's are checked once Ray is up)."""
    if gpus_per_run is None or gpus_per_run == 0:
        return
    if not math.isfinite(gpus_per_run) or gpus_per_run < 0:
        raise BenchError(f"--gpus-per-run must be >= 0, got {gpus_per_run:g}")
    if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
        raise BenchError(f"--gpus-per-run {gpus_per_run:g}: above 1 GPU a run takes whole GPUs (Ray's rule)")
    if not remote and gpus_here == 0:
        raise BenchError(
            f"--gpus-per-run {gpus_per_run:g} but torch sees no GPU on this machine: leave it out to run on the "
            "CPU, or give --address of a Ray cluster with GPUs"
        )
    if not remote and gpus_per_run > gpus_here:
        raise BenchError(
            f"--gpus-per-run {gpus_per_run:g} but this machine has {gpus_here} GPU(s): "
            f"use at most {max(gpus_here, 0)} (or a fraction such as 0.25 to pack runs on one GPU)"
        )


# ----------------------------------------------------------------------------------------------- estimates
def kind_of(spec: RunSpec) -> tuple:
    """Runs of one kind cost the same per epoch: method, dataset, device, data size and steps per epoch,
    execution options (compile mode, precision, view encoding), the recommendation loss (ce scores every
    item) and the encoder."""
    view_encoding = getattr(spec.config, "view_encoding", records.FAITHFUL["view_encoding"])
    rec_loss = spec.config.rec_loss
    return (spec.method, spec.dataset, device_kind(spec.device), spec.max_users, spec.compile, spec.precision,
            view_encoding, rec_loss, spec.max_steps, spec.config.encoder)


def _record_kind(record: dict) -> tuple:
    """`kind_of` of the spec a record was made from (records of schema 3 carry the variant whole)."""
    spec, variant = record["spec"], record["variant"]
    device = record.get("device") or device_kind(spec["device"])  # a failed run has no device of its own
    return (record["method"], record["dataset"], device, spec["max_users"], variant["compile"], variant["precision"],
            variant.get("view_encoding", records.FAITHFUL["view_encoding"]), variant["rec_loss"], spec.get("max_steps"),
            records.encoder_of(record.get("config")) or records.DEFAULT_ENCODER)


MIN_OWN_EPOCHS = 3  # epochs after the first that this grid's own records need to replace an estimate
ROUGH_BELOW_EPOCHS = 10  # an estimate from fewer epoch times is shown as a rough guess


@dataclass
class Estimate:
    """Seconds of one epoch of a kind of run, and the seconds a run spends outside its epochs."""

    epoch_s: float
    overhead_s: float
    runs: int  # records it is computed from
    source: str  # the results folder they are in
    epochs: int = 0  # epoch times its median is taken over

    @property
    def rough(self) -> bool:
        """Taken from so few epochs that one busy or idle moment of the machine decides it."""
        return self.epochs < ROUGH_BELOW_EPOCHS

    def expected(self, epochs_left: int) -> float:
        return self.overhead_s + self.epoch_s * max(epochs_left, 0)


def epoch_seconds(row: dict) -> float:
    """Seconds of one epoch row of a record: E-step + training + validation."""
    return sum(float(row.get(k) or 0.0) for k in ("estep_s", "train_s", "eval_s"))


def estimate_from(recs: list[dict], source: str) -> Estimate | None:
    """The estimate from records of one kind (None without a record that has an epoch)."""
    epoch_times, overheads = [], []
    for record in recs:
        rows = record.get("epochs") or []
        if not rows:
            continue
        times = [epoch_seconds(r) for r in rows]
        epoch_times.extend(times[1:] if len(times) > 1 else times)
        wall = (record.get("totals") or {}).get("wall_s")
        if wall is not None:
            # What the run spent outside its epochs (loading, test, checkpoints): not wall - median x epochs,
            # which would count the epochs' own spread as overhead and refuse a resumable run an epoch fits.
            overheads.append(float(wall) - sum(times))
    if not epoch_times:
        return None
    overhead = max(0.0, statistics.fmean(overheads)) if overheads else 0.0
    return Estimate(statistics.median(epoch_times), overhead, len(recs), source, len(epoch_times))


def load_estimates(*folders: Path | str) -> dict[tuple, Estimate]:
    """Estimates per kind of run from the ok and interrupted records of `folders`, pooled.

    Every epoch of a kind counts, whichever folder holds it: the median over hundreds of epochs of a finished
    run is not swayed by the few dozen of a run interrupted while the machine was busy with something else.
    A run found in several folders (a campaign's record and its collected copy) counts once, as the copy
    with the most epochs.
    """
    best: dict[str, tuple[dict, str]] = {}  # run id -> (record, folder)
    for folder in folders:
        for path in sorted((Path(folder) / "runs").glob("*.json")):
            record = records.read_record(path)
            if record is None or record.get("status") not in ("ok", "interrupted"):
                continue
            key = record.get("run_id") or str(path)
            held = best.get(key)
            if held is None or len(record.get("epochs") or []) > len(held[0].get("epochs") or []):
                best[key] = (record, str(folder))
    by_kind: dict[tuple, list[tuple[dict, str]]] = {}
    for record, folder in best.values():
        by_kind.setdefault(_record_kind(record), []).append((record, folder))
    estimates: dict[tuple, Estimate] = {}
    for kind, found in by_kind.items():
        sources = ", ".join(dict.fromkeys(folder for _, folder in found))
        estimate = estimate_from([record for record, _ in found], sources)
        if estimate is not None:
            estimates[kind] = estimate
    return estimates


# ---------------------------------------------------------------------------------------------- scheduler
@dataclass
class Planned:
    spec: RunSpec
    run_id: str
    epochs_done: int = 0  # held by its checkpoint
    resumable: bool = False  # checkpoints asked for: may run until the budget and continue next time

    @property
    def epochs_left(self) -> int:
        return self.spec.epochs - self.epochs_done


@dataclass
class Scheduler:
    """Which run starts next under a deadline (see the module doc); `deadline` None: every run, in order.

    `clock` is time.time by default (tests give their own). The executors call `next_run()` whenever a slot
    is free, and `finished(record)` as each record arrives, which updates the estimate of its kind.
    """

    planned: list[Planned]
    estimates: dict[tuple, Estimate]
    deadline: float | None = None
    clock: Callable[[], float] = time.time
    not_started: list[tuple[Planned, float, float]] = field(default_factory=list)  # (run, expected, left)
    continuing: list[tuple[Planned, float | None, float]] = field(default_factory=list)  # started, to end later
    probing: dict[tuple, int] = field(default_factory=dict)  # kind -> probes in flight
    seen: dict[tuple, list[dict]] = field(default_factory=dict)  # kind -> this grid's records with epochs

    def expected(self, run: Planned) -> float | None:
        estimate = self.estimates.get(kind_of(run.spec))
        return None if estimate is None else estimate.expected(run.epochs_left)

    def order(self) -> list[Planned]:
        """Probes first, then the longest expected runs (ties: the grid's order)."""
        keyed = [(self.expected(r) is not None, -(self.expected(r) or 0.0), i) for i, r in enumerate(self.planned)]
        return [self.planned[i] for *_, i in sorted(keyed)]

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.clock()

    def next_run(self) -> RunSpec | None:
        """The spec to start now (with its deadline and probe flag), or None: nothing can start now."""
        if self.deadline is None:
            return self.planned.pop(0).spec if self.planned else None
        left = self.left()
        for run in self.order():
            expected = self.expected(run)
            if run.resumable and (expected is None or expected > left):
                # It will not finish now: it runs until the budget, checkpointed, and the next invocation
                # continues it; worth starting only if an epoch fits (unknown cost: try).
                estimate = self.estimates.get(kind_of(run.spec))
                if left <= (0.0 if estimate is None else estimate.expected(1)):
                    self._refuse(run, math.inf if expected is None else expected, left)
                    continue
                self.planned.remove(run)
                self.continuing.append((run, expected, left))
                return replace(run.spec, deadline=self.deadline)
            if expected is None:
                kind = kind_of(run.spec)
                if self.probing.get(kind):
                    continue  # its sibling's probe will tell what it costs
                if left <= 0:
                    self._refuse(run, math.inf, left)
                    continue
                self.probing[kind] = self.probing.get(kind, 0) + 1
                self.planned.remove(run)
                return replace(run.spec, deadline=self.deadline, probe=True)
            if expected > left:
                self._refuse(run, expected, left)
                continue
            self.planned.remove(run)
            return replace(run.spec, deadline=self.deadline)
        return None

    def _refuse(self, run: Planned, expected: float, left: float) -> None:
        self.planned.remove(run)
        self.not_started.append((run, expected, left))

    def finished(self, record: dict) -> None:
        """A record arrived: its kind's probe (if it was one) is over, and its epochs refine the estimate.

        This grid's own records describe this machine as it runs now (its packing, its load) better than
        earlier ones, so once they hold MIN_OWN_EPOCHS epochs after a first they replace an estimate from
        elsewhere; with fewer (a probe's first epoch carries warm-up and compiling) they only fill a gap.
        """
        kind = _record_kind(record)
        if self.probing.get(kind):
            self.probing[kind] -= 1
        if record.get("status") not in ("ok", "interrupted") or not record.get("epochs"):
            return
        own = self.seen.setdefault(kind, [])
        own.append(record)
        steady_epochs = sum(len(r["epochs"]) - 1 for r in own)
        if kind not in self.estimates or self.estimates[kind].source == "this grid" or steady_epochs >= MIN_OWN_EPOCHS:
            estimate = estimate_from(own, "this grid")
            if estimate is not None:
                self.estimates[kind] = estimate

    def dropped(self, spec: RunSpec) -> None:
        """A run handed out by `next_run` will not run here after all (another grid holds or finished it)."""
        kind = kind_of(spec)
        if spec.probe and self.probing.get(kind):
            self.probing[kind] -= 1

    def continuing_lines(self) -> list[str]:
        return [
            f"{r.spec.method} {r.spec.dataset} seed {r.spec.seed} "
            f"(expected {format_duration(expected) if expected is not None else 'unknown'} > {format_duration(left)} left)"
            for r, expected, left in self.continuing
        ]

    def refusal_lines(self) -> list[str]:
        return [
            f"not started: {r.spec.method} {r.spec.dataset} seed {r.spec.seed}: expected "
            f"{format_duration(expected) if math.isfinite(expected) else 'unknown'} > {format_duration(left)} left"
            for r, expected, left in self.not_started
        ]


def make_scheduler(
    specs_by_id: dict[str, RunSpec], results_dir: Path, deadline: float | None, estimate_folders: Iterable[Path] = (),
    resumable: Iterable[str] = (), clock: Callable[[], float] = time.time,
) -> Scheduler:
    """A scheduler over the runs not yet done, with the epochs their checkpoints hold and the estimates of
    `results_dir` (then `estimate_folders`); the runs of `resumable` (ids) may end in a later invocation."""
    from bench.core import checkpoints

    planned, resumable = [], set(resumable)
    for rid, spec in specs_by_id.items():
        done = checkpoints.epochs_done(spec.checkpoint_dir, rid) if spec.checkpoint_dir else None
        planned.append(Planned(spec, rid, done or 0, rid in resumable))
    # without a deadline nothing is refused or reordered: no estimate is needed
    estimates = load_estimates(results_dir, *estimate_folders) if deadline is not None else {}
    return Scheduler(planned, estimates, deadline, clock=clock)


# ------------------------------------------------------------------------------------------- projection
def projected_seconds(
    specs: Iterable[RunSpec], estimates: dict[tuple, Estimate], epochs: int | None = None
) -> tuple[float, list[RunSpec]]:
    """Seconds the specs need one after the other at `epochs` each (default each spec's maximum, the upper
    bound), and the specs without an estimate (not counted)."""
    total, unknown = 0.0, []
    for spec in specs:
        estimate = estimates.get(kind_of(spec))
        if estimate is None:
            unknown.append(spec)
            continue
        total += estimate.expected(spec.epochs if epochs is None else min(epochs, spec.epochs))
    return total, unknown


# ------------------------------------------------------------------------- packing measurements, read back
# `bench packing` (bench/campaign/packing.py) measures them; the grid and `bench status` follow them.
def machine_name(kind: str) -> str:
    """The model a packing measurement holds for: the GPU's name, or the CPU's model and core count."""
    if kind == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()} x{os.cpu_count() or 1}"


def _measurements(kind: str, folders: list[Path]) -> list[tuple[dict, dict, Path]]:
    """(meta, document, path) of every readable packing measurement of this device kind in `folders`."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).glob(f"packing-{kind}-*.json")):
            try:
                doc = json.loads(path.read_text())
                found.append((dict(doc["meta"]), doc, path))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return found


def packed_speedups(kind: str, compile_mode: str, folders: list[Path]) -> list[dict]:
    """Per machine model measured: the packing chosen for `compile_mode` and its gain over one run at a
    time, as [ratio, low, high] of the 95% interval, so that a projection made one run at a time can say
    what packing buys. Where several methods were measured, the smallest packing (then the smallest gain)
    holds; machines whose choice is 1 run at a time are left out."""
    per_machine: dict[str, tuple] = {}
    for meta, doc, path in _measurements(kind, folders):
        try:
            chosen = int(doc["best"][compile_mode]["concurrency"])
            if chosen == 1:
                candidate = (1, 1.0, [1.0, None, None], path)
            else:
                [row] = [r for r in doc["rows"] if r["compile"] == compile_mode and r["concurrency"] == chosen]
                gain = row["gain_vs_1"]
                candidate = (chosen, float(gain["ratio"]), [float(gain["ratio"]), gain["low"], gain["high"]], path)
        except (KeyError, TypeError, ValueError):
            continue
        name = str(meta.get("device_name"))
        if name not in per_machine or candidate[:2] < per_machine[name][:2]:
            per_machine[name] = candidate
    return [{"machine": name, "concurrency": c, "gain": gain, "file": str(path)}
            for name, (c, _, gain, path) in sorted(per_machine.items()) if c > 1]


def measured_packing(kind: str, machine: str, folders: list[Path]) -> tuple[int, int, Path] | None:
    """(runs at once, threads per run, file) from the packing measurements of this machine model for the faithful compile
    mode, or None when there is none. Where several (methods, datasets) were measured, the smallest packing
    wins: it is the one shown to help every one of them. Unreadable files are skipped: a measurement is
    advice, not input."""
    found = []
    for meta, doc, path in _measurements(kind, folders):
        try:
            best = doc["best"][FAITHFUL_COMPILE]
            if meta["device_name"] == machine:
                found.append((int(best["concurrency"]), int(best["threads_per_run"]), str(path), path))
        except (KeyError, TypeError, ValueError):
            continue
    if not found:
        return None
    concurrency, threads, _, path = min(found)
    return concurrency, threads, path
