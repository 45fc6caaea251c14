"""The one training loop, shared by every method: epochs, timed phases, early stopping, the run record.

A run is described by a `RunSpec` (bench/core/spec.py: what to run) and produces a record dict (docs/records.md).
This module knows nothing of Ray, Optuna or files of results: `epoch_callback` lets a tuner observe valid
metrics (and prune a trial), `evaluate_test=False` ends a trial before the test split, and the caller
decides where the record goes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from bench.core import checkpoints, context, records, termination
from bench.core.configs import resolve_config
from bench.core.costs import PHASES, PeakMemory, PhaseTimer
from bench.core.data import SequenceData
from bench.core.evaluate import PROTOCOLS, evaluate
from bench.core.identity import identity_of, spec_fields, variant_of
from bench.core.outcomes import NonFiniteLoss, environment
from bench.core.spec import RunSpec, check_choice, check_positive, resolve_device
from bench.core.step import build_method, epoch_batches, make_optimizer, optimise, step_function
from bench.core.step import steps_per_epoch as epoch_steps
from bench.core.weights import save_checkpoint

SELECTION_METRIC = "NDCG@20"  # model selection on valid, as the published code


# -------------------------------------------------------------------------------------------- the loop
def run(
    spec: RunSpec,
    *,
    progress: bool = True,
    epoch_callback: Callable[[int, dict], None] | None = None,
    data: SequenceData | None = None,
    evaluate_test: bool = True,
    stop_when: Callable[[int, float], str | None] | None = None,
) -> dict:
    """Train and evaluate one run; returns its finalised record (status ok).

    `epoch_callback(epoch, row)` sees every epoch's row (valid metrics, seconds per phase); a tuner reports
    and prunes from it. `evaluate_test=False` (tuning trials) stops after the last epoch, before the test
    split is touched: the record then has `test` None. User errors raise BenchError; a diverging loss
    raises NonFiniteLoss at the step where it happens.

    Campaign hooks (bench/core/checkpoints.py, bench/campaign/schedule.py): with `spec.checkpoint_dir` the run continues
    from its mid-run checkpoint if one exists and saves one every `spec.checkpoint_every` epochs and when it
    stops early. `stop_when(epochs_done, last_epoch_s)` (default: the spec's deadline, `deadline_stop`) is
    asked after every epoch; a reason returned ends the run there with status "interrupted" (no test).
    """
    check_choice("evaluation protocol", spec.protocol, PROTOCOLS)
    check_positive("epochs", spec.epochs)
    check_positive("patience", spec.patience)
    device = resolve_device(spec.device)
    started = dt.datetime.now(dt.UTC)
    wall_start = time.perf_counter()
    memory = PeakMemory(device)
    memory.start()
    previous_matmul_precision, previous_threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision("high" if spec.precision == "tf32" else "highest")
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    run_context = context.start(spec, device)  # execution context (bench/core/context.py)
    previous_faiss_threads = _set_faiss_threads(spec.num_threads)  # k-means: concurrent runs share the cores
    try:
        if data is None:
            data = SequenceData.load(spec.dataset, max_users=spec.max_users, device=str(device))
        config, source_label = resolve_config(spec.method, spec.dataset, spec.config_source, spec.overrides)
        rid = identity_of(spec, config)  # the id and the trained config come from one resolution
        method = build_method(spec, config, data, device)
        # ---- campaign hook: resume from a mid-run checkpoint, stop at the deadline (bench/core/checkpoints.py)
        ckpt_path = checkpoints.checkpoint_path(spec.checkpoint_dir, rid) if spec.checkpoint_dir else None
        resume = checkpoints.load(ckpt_path, rid) if ckpt_path else None
        if resume is not None:
            wall_start -= resume.elapsed_s  # wall and time-to-best continue from the first invocation
        stop_when = stop_when if stop_when is not None else deadline_stop(spec)
        fit = fit_epochs(
            spec, method, data, memory, wall_start, epoch_callback, progress,
            resume=resume, stop_when=stop_when, checkpoint=(ckpt_path, rid),
        )
        if fit.best_state is not None:  # None: stopped (SIGTERM) before its first epoch ended
            method.load_state_dict(fit.best_state)
        test, test_ranks, test_eval_s = None, None, 0.0
        if fit.interrupted is None and ckpt_path is not None:
            checkpoints.remove(ckpt_path)  # finished: the record is what is kept
        if fit.interrupted is not None:
            evaluate_test = False  # an interrupted run is not done: it never touches the test split
        if evaluate_test:
            test_start = time.perf_counter()
            test, test_ranks = evaluate(method, data, "test", spec.protocol, return_ranks=True)
            test_eval_s = time.perf_counter() - test_start
        if spec.save_checkpoint:
            save_checkpoint(fit.best_state, spec.save_checkpoint)
        peak = peak_memory(memory, fit.epochs)
        wall = time.perf_counter() - wall_start
        record = {
            "method": spec.method,
            "dataset": spec.dataset,
            "seed": spec.seed,
            "profile": spec.profile,
            "protocol": spec.protocol,
            "config_source": source_label,
            "config": config.to_dict(),
            "variant": variant_of(spec, config.to_dict()),
            "spec": spec_fields(spec),
            "status": "ok" if fit.interrupted is None else "interrupted",
            "error": None,
            "device": device.type,
            "env": {**environment(device), **method.run_info()},
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "num_users": data.num_users,
            "best_epoch": fit.best_epoch,
            "best_valid": fit.best_valid,
            "test": test,
            "epochs": fit.epochs,
            "totals": fit.totals() | {
                "test_eval_s": round(test_eval_s, 6),
                "wall_s": round(wall, 6),
                "time_to_best_s": round(fit.best_elapsed, 6),
            },
            "peak_memory_bytes": peak["peak_memory_bytes"],
            "memory": peak,
            # per-user test ranks (clipped at 20), for the paired tests of the leaderboard
            "ranks": records.encode_ranks({"test": test_ranks}) if test_ranks is not None else None,
            "context": context.finish(run_context),
        }
        if fit.interrupted is not None:
            record["interrupted"] = {
                "reason": fit.interrupted,
                "epochs_done": len(fit.epochs),
                "max_epochs": spec.epochs,
                "checkpoint": str(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None,
            }
        if resume is not None:
            record["resumed_from_epoch"] = resume.next_epoch
        return records.finalise(record, rid)
    finally:  # process-wide settings go back to what the caller had (tuning runs trials in-process)
        torch.set_float32_matmul_precision(previous_matmul_precision)
        torch.set_num_threads(previous_threads)
        _set_faiss_threads(previous_faiss_threads)
        memory.stop()  # idempotent; also ends the sampling thread of a run stopped by an exception


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
    interrupted: str | None = None  # why the run stopped before its budget (deadline), else None

    def state(self) -> dict:
        """What a mid-run checkpoint keeps of it."""
        return {k: getattr(self, k) for k in ("epochs", "best_score", "best_epoch", "best_valid", "best_state", "best_elapsed")}

    def totals(self) -> dict:
        totals = {f"{p}_s": round(sum(e[f"{p}_s"] for e in self.epochs), 6) for p in PHASES}
        return totals | {"epochs_run": len(self.epochs)}


# How often (in steps) the loop checks that the loss is finite, by reading the epoch's running loss sum. On
# the CPU the read costs nothing, so every step (the reported step is exact); on a GPU it is one host sync,
# so every 50 steps (the report names the window of steps).
FINITE_CHECK_EVERY = {"cpu": 1, "cuda": 50}


def fit_epochs(
    spec, method, data, memory, wall_start, epoch_callback, progress,
    *, resume: checkpoints.Resume | None = None, stop_when: Callable | None = None, checkpoint: tuple = (None, None),
) -> Fit:
    """The epochs: E-step, training steps and validation each timed; early stopping on valid NDCG@20.

    `resume` continues a checkpointed run; `checkpoint` is (path or None, run id) of the run's checkpoint;
    `stop_when(epochs_done, last_epoch_s)` may end the run after any epoch (Fit.interrupted says why).
    """
    device = data.device
    training_step = step_function(method, spec, device)
    optimizer = make_optimizer(method)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    timer = PhaseTimer(device)
    steps_per_epoch = epoch_steps(method, data)
    check_every = FINITE_CHECK_EVERY.get(device.type, 50)
    fit = Fit()
    first_epoch = 0
    if resume is not None:  # campaign hook: the state of the epoch boundary the checkpoint was taken at
        checkpoints.restore_model(resume, method, device)
        optimizer.load_state_dict(resume.optimizer)
        checkpoints.restore_streams(resume, generator)
        fit = Fit(**{**resume.fit, "best_state": {k: v.to(device) for k, v in resume.fit["best_state"].items()}})
        first_epoch = resume.next_epoch
    ckpt_path, rid = checkpoint
    boundary: dict | None = None  # the last epoch boundary's checkpoint, in host memory (written on SIGTERM)

    def at_boundary(next_epoch: int) -> dict:
        return checkpoints.snapshot(
            rid, next_epoch, method, optimizer, generator, fit.state(), time.perf_counter() - wall_start
        )

    bar = tqdm(range(first_epoch, spec.epochs), desc=f"{spec.method}/{spec.dataset}", disable=not progress, leave=False)
    try:
        for epoch in bar:
            _stop_if_terminated()
            method.train()
            with timer.phase("estep"):
                method.on_epoch_start(epoch, data)
            memory.sample()
            loss_sums: dict[str, torch.Tensor] = {}
            steps = tqdm(
                total=steps_per_epoch, desc=f"epoch {epoch}", unit="step", leave=False,
                disable=not progress or steps_per_epoch < 20,  # a bar inside long epochs only
            )
            with timer.phase("train"):
                for step, batch in enumerate(epoch_batches(method, data, generator)):
                    _stop_if_terminated()
                    terms = training_step(batch)
                    optimise(terms, optimizer)
                    for name, value in terms.items():  # summed on the device: no per-step host sync
                        loss_sums[name] = loss_sums.get(name, 0.0) + value.detach()
                    if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                        _raise_if_diverged(loss_sums["loss"], epoch, step, check_every)
                    steps.update()
            steps.close()
            _stop_if_terminated()
            with timer.phase("eval"):
                valid = evaluate(method, data, "valid", spec.protocol)
            losses = {name: float(total) / steps_per_epoch for name, total in loss_sums.items()}
            # Memory held at the end of the epoch (CUDA: allocated by torch; CPU: RSS): flat across epochs unless
            # something leaks, which tests/test_execution.py checks.
            row = {"epoch": epoch, "valid": valid, **timer.lap(), "losses": losses, "memory_bytes": memory.current()}
            fit.epochs.append(row)
            if valid[SELECTION_METRIC] > fit.best_score:
                fit.best_score, fit.best_epoch, fit.best_valid = valid[SELECTION_METRIC], epoch, valid
                fit.best_elapsed = time.perf_counter() - wall_start
                fit.best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
            bar.set_postfix({"valid NDCG@20": f"{valid[SELECTION_METRIC]:.4f}", "best": fit.best_epoch})
            if epoch_callback is not None:
                epoch_callback(epoch, row)
            if epoch - fit.best_epoch >= spec.patience:
                break
            saved = False
            if ckpt_path is not None:
                boundary = at_boundary(epoch + 1)
                if spec.checkpoint_every and (epoch + 1) % spec.checkpoint_every == 0:
                    checkpoints.write(ckpt_path, boundary)
                    saved = True
            reason = stop_when(len(fit.epochs), row["estep_s"] + row["train_s"] + row["eval_s"]) if stop_when else None
            if reason is not None and epoch + 1 < spec.epochs:
                fit.interrupted = reason
                if ckpt_path is not None and not saved:
                    checkpoints.write(ckpt_path, boundary)
                break
    except (Terminated, KeyboardInterrupt) as exc:
        # The epoch in progress is dropped; the last boundary this invocation reached becomes the checkpoint.
        # KeyboardInterrupt is also how Ray cancels a task: the driver then records the run from that file.
        if ckpt_path is not None and boundary is not None:
            checkpoints.write(ckpt_path, boundary)
        if isinstance(exc, KeyboardInterrupt):
            raise
        fit.interrupted = termination.reason()
    bar.close()
    return fit


class Terminated(Exception):
    """Raised inside the loop when a SIGTERM has arrived (bench/core/termination.py); `fit_epochs` catches it."""


def _stop_if_terminated() -> None:
    if termination.requested():
        raise Terminated


def deadline_stop(spec: RunSpec) -> Callable[[int, float], str | None] | None:
    """The stop rule of a run with a deadline (a time-boxed grid): after an epoch, stop when the next one
    would not end before the deadline; a probe (no earlier record of its kind) also stops after its first
    epoch (its second when compiled: the first one compiles) when even the expected rest of the run (that
    epoch's time x the epochs left) does not fit."""
    if spec.deadline is None:
        return None
    started_here = [0]
    probe_at = 1 if spec.compile == "off" else 2

    def stop(epochs_done: int, last_epoch_s: float) -> str | None:
        started_here[0] += 1
        left = spec.deadline - time.time()
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


