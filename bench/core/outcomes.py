"""The records of runs that did not finish: failed (an exception) and interrupted (stopped from outside),
and the software environment every record carries."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import traceback

import torch

from bench.core import checkpoints, records
from bench.core.errors import BenchError
from bench.core.identity import run_identity, spec_fields, variant_of
from bench.core.spec import RunSpec, device_kind


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite: the run diverged (too large a learning rate, for example)."""


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
    try:
        rid, config, label = run_identity(spec)
    except BenchError:
        rid, config, label = records.run_id(spec.method, spec.dataset, spec.seed, spec.profile, spec.protocol, {}), {}, spec.config_source
    base = {
        "method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "profile": spec.profile,
        "protocol": spec.protocol, "config_source": label, "config": config, "variant": variant_of(spec, config),
        "spec": spec_fields(spec),
        "status": "failed", "error": failure_message(exc),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    return records.finalise(base, rid)


def interrupted_record(spec: RunSpec, reason: str) -> dict:
    """The record of a run stopped from outside (a Ray task cancelled after the budget's grace period): not
    done, kept out of every table, with the epochs its checkpoint holds (none without a checkpoint)."""
    record = failure_record(spec, RuntimeError(reason))
    record.pop("traceback", None)
    record.update(status="interrupted", error=None, device=device_kind(spec.device))
    ckpt = checkpoints.checkpoint_path(spec.checkpoint_dir, record["run_id"]) if spec.checkpoint_dir else None
    try:
        resume = checkpoints.load(ckpt, record["run_id"]) if ckpt else None
    except BenchError:
        resume = None
    fit = resume.fit if resume is not None else {}
    record.update(
        epochs=fit.get("epochs", []), best_epoch=fit.get("best_epoch", -1), best_valid=fit.get("best_valid"), test=None,
        interrupted={"reason": reason, "epochs_done": len(fit.get("epochs", [])), "max_epochs": spec.epochs,
                     "checkpoint": str(ckpt) if resume is not None else None},
    )
    return record


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss_version,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "git_commit": git_commit(),
    }
