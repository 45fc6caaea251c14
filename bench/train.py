"""The one training loop, shared by every method: epochs, timed phases, early stopping, the run record.

A run is described by a `RunSpec` (what to run) and produces a record dict (docs/records.md). This module
knows nothing of Ray, Optuna or files of results: `epoch_callback` lets a tuner observe valid metrics (and
stop a trial by raising), and the caller decides where the record goes.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from bench import context, records
from bench.configs import method_class, resolve_config
from bench.costs import PeakMemory, PhaseTimer
from bench.data import SequenceData
from bench.errors import BenchError
from bench.evaluate import PROTOCOLS, evaluate
from methods import DatasetInfo, Method

SELECTION_METRIC = "NDCG@20"  # model selection on valid, as the published code


@dataclass
class RunSpec:
    """Everything that determines a run's result (and a few things that only say how to run it)."""

    method: str
    dataset: str
    seed: int = 1
    profile: str = "custom"
    epochs: int = 300
    patience: int = 40
    max_users: int | None = None
    protocol: str = "reference"
    config_source: str = "paper"
    overrides: dict = field(default_factory=dict)
    # Execution options: the faithful defaults are fp32 and eager. Other values can change the numbers, so
    # they enter the run's identity (and only then: ids of faithful runs stay what they always were).
    precision: str = "fp32"  # fp32 | tf32 (CUDA matmuls in TF32) | bf16 (autocast of the training step)
    compile: str = "off"  # off | default | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs
    # How to run, not what: excluded from the run's identity.
    device: str = "auto"
    num_threads: int | None = None
    save_checkpoint: str | None = None

    def identity(self) -> dict:
        keys = ("method", "dataset", "seed", "profile", "epochs", "patience", "max_users", "protocol")
        return {k: getattr(self, k) for k in keys}


PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
# Execution options that are RunSpec fields; the rest of records.FAITHFUL are config keys. At their faithful
# values all are left out of the run id, so records made before an option existed keep their ids.
SPEC_OPTIONS = ("precision", "compile")


def execution_options(spec: RunSpec) -> dict:
    """How a run executes, where that differs from the default (CPU, fp32, eager): part of its identity.

    A GPU run is a different measurement of cost from a CPU run of the same spec, so both records are kept
    (and neither is skipped because the other exists). "auto" is resolved where the id is computed.
    """
    options = {k: getattr(spec, k) for k in SPEC_OPTIONS if getattr(spec, k) != records.FAITHFUL[k]}
    if device_kind(spec.device) == "cuda":
        options["device"] = "cuda"
    return options


def device_kind(name: str) -> str:
    """"cuda" or "cpu": what `resolve_device(name)` gives, without failing on a device that is missing."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def variant_of(spec: RunSpec, config: dict) -> dict:
    """What a record says about how faithful the run was: mode "faithful" or "fast", and every option."""
    options = {k: getattr(spec, k) for k in SPEC_OPTIONS}
    options.update({k: config[k] for k in records.FAITHFUL if k in config})  # view_encoding: intent methods
    # compile and tf32 keep the published math (fused kernels, TF32 products); bf16 and a shared encoding
    # of the views change what is computed, so only they make a run "fast".
    fast = options["precision"] == "bf16" or options.get("view_encoding", "separate") != "separate"
    return {"mode": "fast" if fast else "faithful", **options}


def check_execution(precision: str, compile: str) -> None:
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if compile not in COMPILE_MODES:
        raise BenchError(f"unknown compile mode {compile!r}; choose one of {', '.join(COMPILE_MODES)}")


def run_identity(spec: RunSpec) -> tuple[str, dict, str]:
    """(run_id, resolved config, config source label) of a spec, known before the run starts (for resume)."""
    config, label = resolve_config(spec.method, spec.dataset, spec.config_source, spec.overrides)
    return identity_of(spec, config), config.to_dict(), label


def identity_of(spec: RunSpec, config) -> str:
    """The run id of `spec` trained with the resolved `config`."""
    budget = {"epochs": spec.epochs, "patience": spec.patience, "max_users": spec.max_users}
    budget.update(execution_options(spec))
    faithful_config = {k: v for k, v in records.FAITHFUL.items() if k not in SPEC_OPTIONS}
    values = {k: v for k, v in config.to_dict().items() if not (k in faithful_config and faithful_config[k] == v)}
    return records.run_id(spec.method, spec.dataset, spec.seed, spec.profile, spec.protocol, values, budget)


def failed_record(spec: RunSpec, error: str) -> dict:
    """The record of a run that raised: kept so the grid shows it, never counted as done."""
    try:
        rid, config, label = run_identity(spec)
    except BenchError:
        rid, config, label = records.run_id(spec.method, spec.dataset, spec.seed, spec.profile, spec.protocol, {}), {}, spec.config_source
    base = {
        "method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "profile": spec.profile,
        "protocol": spec.protocol, "config_source": label, "config": config, "variant": variant_of(spec, config),
        "spec": {k: v for k, v in asdict(spec).items() if k != "overrides"},
        "status": "failed", "error": error,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return records.finalise(base, rid)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BenchError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


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


def build_method(spec: RunSpec, config, data: SequenceData, device: torch.device) -> Method:
    if config.max_len != data.max_len:
        raise BenchError(f"config max_len {config.max_len} differs from the data's {data.max_len}")
    info = DatasetInfo(name=data.name, item_size=data.item_size, num_users=data.num_users)
    torch.manual_seed(spec.seed)  # parameter initialisation and dropout
    try:
        method = method_class(spec.method)(config, info, seed=spec.seed).to(device)
    except ValueError as exc:
        raise BenchError(f"{spec.method} on {spec.dataset}: {exc}") from None
    return method


def run(
    spec: RunSpec,
    *,
    progress: bool = True,
    epoch_callback: Callable[[int, dict], None] | None = None,
    data: SequenceData | None = None,
) -> dict:
    """Train and evaluate one run; returns its finalised record (status ok). User errors raise BenchError."""
    if spec.protocol not in PROTOCOLS:
        raise BenchError(f"unknown evaluation protocol {spec.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if spec.epochs < 1 or spec.patience < 1:
        raise BenchError("epochs and patience must be >= 1")
    check_execution(spec.precision, spec.compile)
    device = resolve_device(spec.device)
    started = dt.datetime.now(dt.UTC)
    wall_start = time.perf_counter()
    memory = PeakMemory(device)
    memory.start()
    previous_matmul_precision, previous_threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision("high" if spec.precision == "tf32" else "highest")
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    run_context = context.start(spec, device)  # execution context (bench/context.py)
    try:
        record = _train(spec, device, memory, started, wall_start, epoch_callback, progress, data)
        record["context"] = context.finish(run_context)
        return record
    finally:  # process-wide settings go back to what the caller had (tuning runs trials in-process)
        torch.set_float32_matmul_precision(previous_matmul_precision)
        torch.set_num_threads(previous_threads)
        memory.stop()  # idempotent; also ends the sampling thread of a run stopped by an exception


def step_function(method: Method, spec: RunSpec, device: torch.device) -> Callable:
    """`method.training_step` as the run's execution options ask: compiled or not, under bf16 autocast or not.

    Only the training step is affected; evaluation always ranks with fp32 eager scores.
    """
    step = method.training_step
    if spec.compile != "off":
        step = torch.compile(step, mode=None if spec.compile == "default" else spec.compile)
    cuda_graphs = spec.compile == "reduce-overhead" and device.type == "cuda"

    def run_step(batch):
        if cuda_graphs:  # a new iteration: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if spec.precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return step(batch)
        return step(batch)

    return run_step


def _train(spec, device, memory, started, wall_start, epoch_callback, progress, data) -> dict:
    if data is None:
        data = SequenceData.load(spec.dataset, max_users=spec.max_users, device=str(device))
    resolved, source_label = resolve_config(spec.method, spec.dataset, spec.config_source, spec.overrides)
    rid = identity_of(spec, resolved)  # the id and the trained config come from one resolution
    method = build_method(spec, resolved, data, device)
    config = resolved.to_dict()
    training_step = step_function(method, spec, device)
    optimizer = torch.optim.Adam(method.parameters(), lr=method.config.lr, weight_decay=method.config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    timer = PhaseTimer(device)
    batch_size = method.config.batch_size
    augment_args = method.config.augment_args() if method.num_views else None

    epochs: list[dict] = []
    best = {"score": -math.inf, "epoch": -1, "state": None, "valid": None, "elapsed": 0.0}
    bar = tqdm(range(spec.epochs), desc=f"{spec.method}/{spec.dataset}", disable=not progress, leave=False)
    for epoch in bar:
        method.train()
        with timer.phase("estep"):
            method.on_epoch_start(epoch, data)
        memory.sample()
        loss_sums: dict[str, torch.Tensor] = {}
        steps = 0
        with timer.phase("train"):
            for batch in data.train_batches(batch_size, generator, method.num_views, augment_args):
                terms = training_step(batch)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
                for name, value in terms.items():  # summed on the device: no per-step host sync
                    loss_sums[name] = loss_sums.get(name, 0.0) + value.detach()
                steps += 1
        with timer.phase("eval"):
            valid = evaluate(method, data, "valid", spec.protocol)
        losses = {name: float(total) / steps for name, total in loss_sums.items()}
        if not all(math.isfinite(v) for v in losses.values()):
            raise RuntimeError(f"non-finite loss at epoch {epoch}: {losses}")
        # Memory held at the end of the epoch (CUDA: allocated by torch; CPU: RSS): flat across epochs unless
        # something leaks, which tests/test_execution.py checks.
        row = {"epoch": epoch, "valid": valid, **timer.lap(), "losses": losses, "memory_bytes": memory.current()}
        epochs.append(row)
        if valid[SELECTION_METRIC] > best["score"]:
            best.update(score=valid[SELECTION_METRIC], epoch=epoch, valid=valid, elapsed=time.perf_counter() - wall_start)
            best["state"] = {k: v.detach().clone() for k, v in method.state_dict().items()}
        bar.set_postfix({"valid NDCG@20": f"{valid[SELECTION_METRIC]:.4f}", "best": best["epoch"]})
        if epoch_callback is not None:
            epoch_callback(epoch, row)
        if epoch - best["epoch"] >= spec.patience:
            break
    bar.close()

    method.load_state_dict(best["state"])
    test_start = time.perf_counter()
    test, test_ranks = evaluate(method, data, "test", spec.protocol, return_ranks=True)
    test_eval_s = time.perf_counter() - test_start
    if spec.save_checkpoint:
        save_checkpoint(best["state"], spec.save_checkpoint)
    mem = dict(memory.stop())
    if mem["kind"] == "rss":
        # VmHWM can miss a few pages that were given back without an unmap; a reading taken at an epoch's
        # end is a lower bound of the peak, so the peak is never reported below one (seen: by 0.2-0.4 MB).
        peak = max([mem["peak_memory_bytes"], *(e["memory_bytes"] for e in epochs)])
        mem["peak_memory_bytes"] = mem["rss_peak_bytes"] = peak
    wall = time.perf_counter() - wall_start
    totals = {f"{p}_s": round(sum(e[f"{p}_s"] for e in epochs), 6) for p in ("estep", "train", "eval")}
    record = {
        "method": spec.method,
        "dataset": spec.dataset,
        "seed": spec.seed,
        "profile": spec.profile,
        "protocol": spec.protocol,
        "config_source": source_label,
        "config": config,
        "variant": variant_of(spec, config),
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("overrides",)},
        "status": "ok",
        "error": None,
        "device": device.type,
        "env": {**environment(device), **method.run_info()},
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "num_users": data.num_users,
        "best_epoch": best["epoch"],
        "best_valid": best["valid"],
        "test": test,
        "epochs": epochs,
        "totals": {
            **totals,
            "test_eval_s": round(test_eval_s, 6),
            "wall_s": round(wall, 6),
            "time_to_best_s": round(best["elapsed"], 6),
            "epochs_run": len(epochs),
        },
        "peak_memory_bytes": mem["peak_memory_bytes"],
        "memory": mem,
        "ranks": records.encode_ranks({"test": test_ranks}),  # per-user test ranks, for paired tests
    }
    return records.finalise(record, rid)


def save_checkpoint(state: dict, path: str) -> None:
    """Write a state_dict in the published layout, atomically."""
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    torch.save({k: v.cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a published-layout state_dict; any unreadable file is a user error."""
    if not os.path.isfile(path):
        raise BenchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise BenchError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "item_embeddings.weight" not in state:
        raise BenchError(f"checkpoint {path} is not a state_dict in the published layout (no item_embeddings.weight)")
    return state
