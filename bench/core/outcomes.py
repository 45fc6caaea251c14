"""The run record, built in one place for every status: ok, failed (an exception) and interrupted (stopped
at a time budget or from outside); docs/records.md lists their fields.

`RunOutcome` is what a run produced; `make_record(spec, outcome)` adds what the spec says (identity,
config, variant) and returns the record as stored. The training loop, the grid, the Ray executor and the
tuner all build their records through it, so every record of one schema has the same fields.
"""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass, field

from bench.core import checkpoints, paths, records
from bench.core.devices import device_kind
from bench.core.errors import BenchError
from bench.core.identity import variant_of
from bench.core.spec import RunSpec


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite: the run diverged (too large a learning rate, for example)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class RunOutcome:
    """What a run produced. A failed run has only its error (and traceback); an interrupted one has the
    epochs it got through; an ok one has everything."""

    status: str  # one of records.STATUSES
    error: str | None = None  # one line, failed runs only
    traceback: str | None = None  # failed runs only
    device: str | None = None  # "cpu" | "cuda": where it ran
    env: dict | None = None  # software, machine and method facts (context.environment + Method.run_info)
    started_at: str | None = None
    num_users: int | None = None
    best_epoch: int = -1
    best_valid: dict | None = None
    test: dict | None = None  # None: no test (an interrupted run, a tuning trial)
    epochs: list[dict] = field(default_factory=list)  # one row per epoch (valid metrics, seconds per phase)
    totals: dict | None = None
    memory: dict | None = None  # bench/core/costs.PeakMemory's reading
    ranks: dict | None = None  # per-user test ranks, encoded (records.encode_ranks)
    context: dict | None = None  # bench/core/context.py
    interrupted: dict | None = None  # {"reason", "epochs_done", "max_epochs", "checkpoint"}
    resumed_from_epoch: int | None = None  # a run continued from a mid-run checkpoint


def make_record(spec: RunSpec, outcome: RunOutcome) -> dict:
    """The stored record of `spec`'s run: schema and run id first, then the spec's identity and config,
    then what happened. Keys a status does not have (a failed run's epochs, an ok run's traceback) are
    left out, as docs/records.md lists."""
    if outcome.status not in records.STATUSES:
        raise ValueError(f"unknown status {outcome.status!r}")
    record = {
        "method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "profile": spec.profile,
        "protocol": spec.protocol, "config_source": spec.config_source, "config": spec.config_values(),
        "variant": variant_of(spec, spec.config_values()), "spec": spec.fields(),
        "status": outcome.status, "error": outcome.error,
    }
    if outcome.status == "failed":
        return records.finalise(record | {"finished_at": now(), "traceback": outcome.traceback}, spec.run_id)
    memory = outcome.memory or {}
    record |= {
        "device": outcome.device, "env": outcome.env, "started_at": outcome.started_at, "finished_at": now(),
        "num_users": outcome.num_users, "best_epoch": outcome.best_epoch, "best_valid": outcome.best_valid,
        "test": outcome.test, "epochs": outcome.epochs, "totals": outcome.totals,
        "peak_memory_bytes": memory.get("peak_memory_bytes"), "memory": outcome.memory,
        "ranks": outcome.ranks, "context": outcome.context,
    }
    if outcome.interrupted is not None:
        record["interrupted"] = outcome.interrupted
    if outcome.resumed_from_epoch is not None:
        record["resumed_from_epoch"] = outcome.resumed_from_epoch
    return records.finalise(record, spec.run_id)


def failure_message(exc: BaseException) -> str:
    """One line: a user error's own message, else `TypeName: first line of the message`."""
    if isinstance(exc, BenchError | NonFiniteLoss):
        message = str(exc)
    else:
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return " ".join(message.split())  # records promise a one-line error


def failure_record(spec: RunSpec, exc: BaseException) -> dict:
    """The record of a run that raised `exc`: kept so tables show it, never counted as done; the traceback is
    kept for whoever debugs it."""
    outcome = RunOutcome("failed", error=failure_message(exc), traceback="".join(traceback.format_exception(exc)))
    return make_record(spec, outcome)


def interrupted_record(spec: RunSpec, reason: str) -> dict:
    """The record of a run stopped from outside (a Ray task cancelled after the budget's grace period): not
    done, kept out of every table, with the epochs its checkpoint holds (none without a checkpoint)."""
    ckpt = checkpoints.checkpoint_path(spec.checkpoint_dir, spec.run_id) if spec.checkpoint_dir else None
    try:
        resume = checkpoints.load(ckpt, spec.run_id) if ckpt else None
    except BenchError:
        resume = None
    fit = resume.fit if resume is not None else {}
    epochs = fit.get("epochs", [])
    return make_record(spec, RunOutcome(
        "interrupted", device=device_kind(spec.device), epochs=epochs, best_epoch=fit.get("best_epoch", -1),
        best_valid=fit.get("best_valid"),
        interrupted={"reason": reason, "epochs_done": len(epochs), "max_epochs": spec.epochs,
                     "checkpoint": paths.portable(str(ckpt)) if resume is not None else None},
    ))
