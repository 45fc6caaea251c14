"""The one training loop, shared by every method: epochs, timed phases, early stopping, the run record.

A run is described by a `RunSpec` (bench/core/spec.py: what to run) and produces a record dict (docs/records.md).
This module knows nothing of Ray, Optuna or files of results: `epoch_callback` lets a tuner observe valid
metrics (and prune a trial), `evaluate_test=False` ends a trial before the test split, and the caller
decides where the record goes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from bench.core import checkpoints, context, paths, records, termination
from bench.core.costs import PHASES, PeakMemory, PhaseTimer
from bench.core.data import SequenceData
from bench.core.devices import resolve_device
from bench.core.evaluate import PROTOCOLS, evaluate
from bench.core.outcomes import NonFiniteLoss, RunOutcome, make_record, now
from bench.core.spec import RunSpec, check_choice, check_positive
from bench.core.step import build_method, epoch_batches, make_optimizer, optimise, step_function
from bench.core.step import steps_per_epoch as epoch_steps
from bench.core.weights import save_checkpoint
from methods import Method

SELECTION_METRIC = "NDCG@20"  # model selection on valid, as the published code


# -------------------------------------------------------------------------------------------- the loop
def run(
    spec: RunSpec,
    *,
    progress: bool = True,
    epoch_callback: Callable[[int, dict], None] | None = None,
    data: SequenceData | None = None,
    evaluate_test: bool = True,
    stop_when: Callable[[int], str | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> dict:
    """Train and evaluate one run; returns its record (status ok, or interrupted when it stopped early).

    `epoch_callback(epoch, row)` sees every epoch's row (valid metrics, seconds per phase); a tuner reports
    and prunes from it. `evaluate_test=False` (tuning trials) stops after the last epoch, before the test
    split is touched: the record then has `test` None. User errors raise BenchError; a diverging loss
    raises NonFiniteLoss at the step where it happens.

    Campaign hooks (bench/core/checkpoints.py, bench/campaign/schedule.py): with `spec.checkpoint_dir` the run continues
    from its mid-run checkpoint if one exists and saves one every `spec.checkpoint_every` epochs and when it
    stops early. `stop_when(epochs_done)` (default: the spec's deadline read on `clock`, `deadline_stop`) is
    asked after every epoch; a reason returned ends the run there with status "interrupted" (no test).
    """
    check_choice("evaluation protocol", spec.protocol, PROTOCOLS)
    check_positive("epochs", spec.epochs)
    check_positive("patience", spec.patience)
    device = resolve_device(spec.device)
    memory = PeakMemory(device)
    memory.start()
    # One process at a time trains a checkpointed run (bench/core/checkpoints.py): from before it reads the
    # checkpoint until its record is made.
    one_at_a_time = checkpoints.held(spec.checkpoint_dir, spec.run_id) if spec.checkpoint_dir else contextlib.nullcontext()
    try:
        with one_at_a_time, context.in_flight_here() as host_runs, _process_settings(spec):
            return _train_and_test(spec, device, memory, data, progress, epoch_callback, evaluate_test,
                                   stop_when, clock, host_runs)
    finally:
        memory.stop()  # idempotent; also ends the sampling thread of a run stopped by an exception


@contextlib.contextmanager
def _process_settings(spec: RunSpec):
    """The run's matmul precision and thread counts (torch, and faiss for k-means: concurrent runs share the
    cores), set for the run and given back after it: tuning runs trials in-process."""
    previous_matmul_precision, previous_threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision("high" if spec.precision == "tf32" else "highest")
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    previous_faiss_threads = _set_faiss_threads(spec.num_threads)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous_matmul_precision)
        torch.set_num_threads(previous_threads)
        _set_faiss_threads(previous_faiss_threads)


def _train_and_test(spec, device, memory, data, progress, epoch_callback, evaluate_test, stop_when, clock,
                    host_runs: context.HostRuns) -> dict:
    started, wall_start = now(), time.perf_counter()
    run_context = context.start(spec, device)  # after the thread counts are set (bench/core/context.py)
    if data is None:
        data = SequenceData.load(spec.dataset, max_users=spec.max_users, device=str(device))
    method = build_method(spec, spec.config, data, device)
    # ---- campaign hook: resume from a mid-run checkpoint, stop at the deadline (bench/core/checkpoints.py)
    ckpt_path = checkpoints.checkpoint_path(spec.checkpoint_dir, spec.run_id) if spec.checkpoint_dir else None
    resume = checkpoints.load(ckpt_path, spec.run_id) if ckpt_path else None
    if resume is not None:
        wall_start -= resume.elapsed_s  # wall and time-to-best continue from the first invocation
    fit = fit_epochs(
        spec, method, data, memory, wall_start, epoch_callback, progress, run_context, resume=resume,
        stop_when=stop_when if stop_when is not None else deadline_stop(spec, clock), checkpoint_path=ckpt_path,
        host_runs=host_runs,
    )
    if fit.best_state is not None:  # None: stopped (SIGTERM) before its first epoch ended
        method.load_state_dict(fit.best_state)
    if fit.interrupted is None and ckpt_path is not None:
        checkpoints.remove(ckpt_path)  # finished: the record is what is kept
    test, test_ranks, test_eval_s = None, None, 0.0
    if evaluate_test and fit.interrupted is None:  # an interrupted run is not done: it never touches test
        test_start = time.perf_counter()
        test, test_ranks = evaluate(method, data, "test", spec.protocol, return_ranks=True)
        test_eval_s = time.perf_counter() - test_start
    if spec.save_checkpoint:
        save_checkpoint(fit.best_state, spec.save_checkpoint)
    peak = peak_memory(memory, fit.epochs)
    totals = fit.totals() | {
        "test_eval_s": round(test_eval_s, 6),
        "wall_s": round(time.perf_counter() - wall_start, 6),
        "time_to_best_s": round(fit.best_elapsed, 6),
    }
    return make_record(spec, RunOutcome(
        "ok" if fit.interrupted is None else "interrupted", device=device.type,
        env={**context.environment(device), **method.run_info()}, started_at=started, num_users=data.num_users,
        best_epoch=fit.best_epoch, best_valid=fit.best_valid, test=test, epochs=fit.epochs, totals=totals,
        memory=peak, context=context.finish(run_context, fit.segments, fit.epochs[fit.segments[-1]["first_epoch"]:]),
        # per-user test ranks (clipped at 20), for the paired tests of the leaderboard
        ranks=records.encode_ranks({"test": test_ranks}) if test_ranks is not None else None,
        interrupted=None if fit.interrupted is None else {
            "reason": fit.interrupted, "epochs_done": len(fit.epochs), "max_epochs": spec.epochs,
            "checkpoint": paths.portable(str(ckpt_path)) if ckpt_path is not None and ckpt_path.is_file() else None,
        },
        resumed_from_epoch=resume.next_epoch if resume is not None else None,
    ))


def _set_faiss_threads(threads: int | None) -> int | None:
    """Set faiss's OpenMP threads (k-means) when `threads` is given; returns the previous count."""
    if not threads:
        return None
    try:
        import faiss
    except ImportError:
        return None
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    return previous


@dataclass
class Fit:
    """What the epochs of a run produced: a row per epoch and the best epoch on valid NDCG@20."""

    epochs: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = -1
    best_valid: dict | None = None
    best_state: dict | None = None
    best_elapsed: float = 0.0
    segments: list[dict] = field(default_factory=list)  # one per invocation (bench/core/context.segment)
    interrupted: str | None = None  # why the run stopped before its budget (deadline), else None

    def state(self) -> dict:
        """What a mid-run checkpoint keeps of it."""
        kept = ("epochs", "best_score", "best_epoch", "best_valid", "best_state", "best_elapsed", "segments")
        return {k: getattr(self, k) for k in kept}

    def totals(self) -> dict:
        totals = {f"{p}_s": round(sum(e[f"{p}_s"] for e in self.epochs), 6) for p in PHASES}
        return totals | {"epochs_run": len(self.epochs)}


# How often (in steps) the loop checks that the loss is finite, by reading the epoch's running loss sum. On
# the CPU the read costs nothing, so every step (the reported step is exact); on a GPU it is one host sync,
# so every 50 steps (the report names the window of steps).
FINITE_CHECK_EVERY = {"cpu": 1, "cuda": 50}


class _Epochs:
    """The state the epochs of one run share: the method's training step and optimiser, the batch stream,
    the phase timer and what the epochs so far produced (`fit`)."""

    def __init__(self, spec: RunSpec, method, data: SequenceData, memory: PeakMemory, wall_start: float,
                 resume: checkpoints.Resume | None, run_context: dict, host_runs: context.HostRuns) -> None:
        self.spec, self.method, self.data, self.memory, self.wall_start = spec, method, data, memory, wall_start
        self.host_runs = host_runs
        device = data.device
        self.training_step = step_function(method, spec, device)
        self.optimizer = make_optimizer(method)
        self.generator = torch.Generator(device=device).manual_seed(spec.seed)
        self.timer = PhaseTimer(device)
        self.steps_per_epoch = epoch_steps(method, data, spec.max_steps)
        self.check_every = FINITE_CHECK_EVERY.get(device.type, 50)
        self.fit = Fit()
        self.first_epoch = 0
        if resume is not None:  # campaign hook: the state of the epoch boundary the checkpoint was taken at
            checkpoints.restore_model(resume, method, device)
            self.optimizer.load_state_dict(resume.optimizer)
            checkpoints.restore_streams(resume, self.generator)
            best_state = {k: v.to(device) for k, v in resume.fit["best_state"].items()}
            self.fit = Fit(**{**resume.fit, "best_state": best_state})
            self.first_epoch = resume.next_epoch
        # A checkpoint from before segments were kept holds epochs whose context is unknown.
        earlier = self.fit.segments or ([context.unknown_segment(device.type)] if self.first_epoch else [])
        self.fit.segments = [*earlier, context.segment(run_context, self.first_epoch)]

    def run_epoch(self, epoch: int, progress: bool) -> dict:
        """One epoch: E-step, training steps and validation, each timed; returns the epoch's row."""
        method = self.method
        method.train()
        with self.timer.phase("estep"):
            method.on_epoch_start(epoch, self.data)
        self.memory.sample()
        with self.timer.phase("train"):
            loss_sums = self._train_steps(epoch, progress)
        _stop_if_terminated()
        with self.timer.phase("eval"):
            valid = evaluate(method, self.data, "valid", self.spec.protocol)
        losses = {name: float(total) / self.steps_per_epoch for name, total in loss_sums.items()}
        # Memory held at the end of the epoch (CUDA: allocated by torch; CPU: RSS): flat across epochs unless
        # something leaks, which tests/test_execution.py checks.
        row = {"epoch": epoch, "valid": valid, **self.timer.lap(), "losses": losses, "memory_bytes": self.memory.current(),
               # The most runs training on the host during the epoch, this one included: what its seconds
               # shared the machine with.
               "in_flight": self.host_runs.take()}
        fit = self.fit
        fit.epochs.append(row)
        if valid[SELECTION_METRIC] > fit.best_score:
            fit.best_score, fit.best_epoch, fit.best_valid = valid[SELECTION_METRIC], epoch, valid
            fit.best_elapsed = time.perf_counter() - self.wall_start
            fit.best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
        return row

    def _train_steps(self, epoch: int, progress: bool) -> dict[str, torch.Tensor]:
        loss_sums: dict[str, torch.Tensor] = {}
        steps = tqdm(
            total=self.steps_per_epoch, desc=f"epoch {epoch}", unit="step", leave=False,
            disable=not progress or self.steps_per_epoch < 20,  # a bar inside long epochs only
        )
        batches = epoch_batches(self.method, self.data, self.generator)  # a fresh random order every epoch
        for step, batch in enumerate(itertools.islice(batches, self.steps_per_epoch)):
            _stop_if_terminated()
            terms = self.training_step(batch)
            optimise(terms, self.optimizer)
            for name, value in terms.items():  # summed on the device: no per-step host sync
                loss_sums[name] = loss_sums.get(name, 0.0) + value.detach()
            if (step + 1) % self.check_every == 0 or step + 1 == self.steps_per_epoch:
                _raise_if_diverged(loss_sums["loss"], epoch, step, self.check_every)
            steps.update()
        steps.close()
        return loss_sums

    def boundary(self, next_epoch: int) -> dict:
        """The checkpoint of the epoch boundary before `next_epoch` (bench/core/checkpoints.py)."""
        return checkpoints.snapshot(
            self.spec.run_id, next_epoch, self.method, self.optimizer, self.generator, self.fit.state(),
            time.perf_counter() - self.wall_start,
        )


def fit_epochs(
    spec, method, data, memory, wall_start, epoch_callback, progress,
    run_context: dict, *, resume: checkpoints.Resume | None = None, stop_when: Callable | None = None,
    checkpoint_path=None, host_runs: context.HostRuns,
) -> Fit:
    """The epochs, with early stopping on valid NDCG@20 after `spec.patience` epochs without a better one.

    `resume` continues a checkpointed run; `checkpoint_path` is where the run's mid-run checkpoint goes (None:
    none); `stop_when(epochs_done)` may end the run after any epoch (Fit.interrupted says why); `run_context`
    (bench/core/context.start) is the context this invocation starts its segment in; `host_runs` counts the
    runs in flight on the host that each epoch shares it with.
    """
    loop = _Epochs(spec, method, data, memory, wall_start, resume, run_context, host_runs)
    fit = loop.fit
    boundary: dict | None = None  # the last epoch boundary's checkpoint, in host memory (written on SIGTERM)
    # A terminal gets redrawn bars; a log file (a campaign lane, nohup) one line per epoch, which `tail` reads.
    bars = progress and sys.stderr.isatty()
    has_estep = type(method).on_epoch_start is not Method.on_epoch_start
    bar = tqdm(range(loop.first_epoch, spec.epochs), desc=f"{spec.method}/{spec.dataset}", disable=not bars, leave=False)
    try:
        for epoch in bar:
            _stop_if_terminated()
            row = loop.run_epoch(epoch, bars)
            bar.set_postfix({"valid NDCG@20": f"{row['valid'][SELECTION_METRIC]:.4f}", "best": fit.best_epoch})
            if progress and not bars:
                print(epoch_line(spec, row, fit, has_estep), file=sys.stderr, flush=True)
            if epoch_callback is not None:
                epoch_callback(epoch, row)
            if epoch - fit.best_epoch >= spec.patience:
                break
            saved = False
            if checkpoint_path is not None:
                boundary = loop.boundary(epoch + 1)
                if spec.checkpoint_every and (epoch + 1) % spec.checkpoint_every == 0:
                    checkpoints.write(checkpoint_path, boundary)
                    saved = True
            reason = stop_when(len(fit.epochs)) if stop_when else None
            if reason is not None and epoch + 1 < spec.epochs:
                fit.interrupted = reason
                if checkpoint_path is not None and not saved:
                    checkpoints.write(checkpoint_path, boundary)
                break
    except (Terminated, KeyboardInterrupt) as exc:
        # The epoch in progress is dropped; the last boundary this invocation reached becomes the checkpoint.
        # KeyboardInterrupt is also how Ray cancels a task: the driver then records the run from that file.
        if checkpoint_path is not None and boundary is not None:
            checkpoints.write(checkpoint_path, boundary)
        if isinstance(exc, KeyboardInterrupt):
            raise
        fit.interrupted = termination.reason()
    bar.close()
    return fit


def epoch_line(spec: RunSpec, row: dict, fit: Fit, has_estep: bool) -> str:
    """One epoch of a run as a log line: where it is, its valid score and the best so far, its phase times."""
    shown = [p for p in PHASES if p != "estep" or has_estep]
    phases = ", ".join(f"{p} {row[f'{p}_s']:.1f} s" for p in shown)
    return (f"{spec.method}/{spec.dataset} seed {spec.seed}: epoch {row['epoch']} of {spec.epochs}, "
            f"valid {SELECTION_METRIC} {row['valid'][SELECTION_METRIC]:.4f} "
            f"(best {fit.best_score:.4f} at epoch {fit.best_epoch}), {phases} (training CPU "
            f"{row['training_cpu_s']:.1f} s), loss {row['losses']['loss']:.4f}, {row['in_flight']} run(s) in flight")


class Terminated(Exception):
    """Raised inside the loop when a SIGTERM has arrived (bench/core/termination.py); `fit_epochs` catches it."""


def _stop_if_terminated() -> None:
    if termination.requested():
        raise Terminated


def deadline_stop(spec: RunSpec, clock: Callable[[], float] = time.time) -> Callable[[int], str | None] | None:
    """The stop rule of a run with a deadline (a time-boxed grid): after an epoch, stop when the next one
    would not end before the deadline; a probe (no earlier record of its kind) also stops after its first
    epoch (its second when compiled: the first one compiles) when even the expected rest of the run (that
    epoch's time x the epochs left) does not fit.

    Everything is read on `clock` (the deadline's clock, time.time; tests give their own): an epoch's time
    is the time between two epoch ends (the first from when the rule was made), checkpoint writes included.
    """
    if spec.deadline is None:
        return None
    started_here = [0]
    probe_at = 1 if spec.compile == "off" else 2
    last_end = [clock()]

    def stop(epochs_done: int) -> str | None:
        started_here[0] += 1
        now = clock()
        last_epoch_s, last_end[0] = now - last_end[0], now
        left = spec.deadline - now
        if spec.probe and started_here[0] == probe_at:
            expected = last_epoch_s * (spec.epochs - epochs_done)
            if expected > left:
                return f"probe: expected {expected:.0f} s for {spec.epochs - epochs_done} more epochs > {max(left, 0):.0f} s left"
        if last_epoch_s > left:
            return f"time budget: {max(left, 0):.0f} s left, an epoch takes {last_epoch_s:.0f} s"
        return None

    return stop


def _raise_if_diverged(loss_sum: torch.Tensor, epoch: int, step: int, checked_every: int) -> None:
    """The epoch's running loss sum (kept anyway) turns non-finite at the first non-finite step and stays so:
    reading it (one host sync) tells whether the run diverged since the last check, with no per-step state."""
    if math.isfinite(float(loss_sum)):
        return
    where = f"step {step}" if checked_every == 1 else f"steps {step // checked_every * checked_every}-{step}"
    raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, {where}: the run diverged (try a lower lr)")


def peak_memory(memory: PeakMemory, epochs: list[dict]) -> dict:
    mem = dict(memory.stop())
    if mem["kind"] == "rss":
        # VmHWM can miss a few pages that were given back without an unmap; a reading taken at an epoch's
        # end is a lower bound of the peak, so the peak is never reported below one (seen: by 0.2-0.4 MB).
        peak = max([mem["peak_memory_bytes"], *(e["memory_bytes"] for e in epochs)])
        mem["peak_memory_bytes"] = mem["rss_peak_bytes"] = peak
    return mem


