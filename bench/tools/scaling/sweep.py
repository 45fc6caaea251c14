"""The study loop, `run_study`: check the spec, set up the real users, the batch pool and both methods,
warm up, sweep N (the E-step per backend, interleaved training steps, ELCRec's clustering terms), run real
epochs to check the step estimate, turn the samples into rows and merge them into scaling.csv."""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.core import context
from bench.core.data import SequenceData, Sequences, dataset_path, parse_sequences
from bench.core.files import write_text_atomic
from bench.core.spec import RunSpec
from bench.core.step import build_method
from bench.tools.scaling.fits import with_extrapolation
from bench.tools.scaling.measurement import (
    Clock,
    Peak,
    StepRunner,
    cluster_terms_seconds,
    encode_population,
    run_kmeans,
    step_memory_fresh,
)
from bench.tools.scaling.population import build_population, population_train_input, resample_users
from bench.tools.scaling.report import CONTEXT_NAME, read_contexts, write_outputs
from bench.tools.scaling.rows import EpochCheck, study_rows
from bench.tools.scaling.spec import METHODS, Plan, ScalingSpec, plan_study
from bench.tools.scaling.table import CSV_NAME, Row, Spread, frame_of, read_table, table_text
from methods import Method


@dataclass
class Setup:
    """What the sweep runs on: the dataset's users, the batch pool's sequences, both methods and their steps."""

    sequences: Sequences
    item_size: int
    real: SequenceData  # the dataset's users, on the CPU: each population's rows are copied to the device
    pool_seqs: Sequences
    methods: dict[str, Method]
    runs: dict[str, RunSpec]
    runners: dict[str, StepRunner]
    machine: dict  # bench.core.context at the start
    context: dict  # what context.json keeps of this run


@dataclass(frozen=True)
class _TrainingUsers:
    """What a method's `on_epoch_start` reads of the training users (`methods.TrainingSet`)."""

    num_users: int
    train_input: torch.Tensor  # [N, L], on the method's device


@dataclass
class Samples:
    """The sweep's raw measurements: per N and quantity, (seconds, bytes) of each repeat; per method, the
    seconds of every timed step."""

    per_n: dict[int, dict[str, list[tuple[float, int]]]] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})


def run_study(spec: ScalingSpec, progress: bool = True, sequences: Sequences | None = None) -> list[Path]:
    """Measure, fit, write the outputs; returns the paths written. `sequences` replaces the dataset (tests).

    With `progress`, every phase says on stderr what it does before it starts, and the two long ones (the
    sweep and the real epochs) show how far they are in a bar of their own.
    """
    from tqdm.auto import tqdm

    say = _announcer(progress)
    plan = plan_study(spec)
    with _threads(spec.threads):
        say(f"set-up: {spec.dataset}'s users, a pool of {spec.pool_users:,}, ICLRec and ELCRec with their first "
            "E-step on every user")
        setup = set_up(spec, plan, sequences)
        say("warm-up: 2 untimed steps per method" + (", then each step's memory in a fresh process"
                                                     if plan.device.type == "cpu" else ""))
        step_memory = warm_up(spec, plan, setup)
        bar = tqdm(repeat_plan(spec, plan.users), desc="scaling: sweep", disable=not progress, unit="run")
        samples = sweep(spec, plan, setup, bar)
        bar.close()
        estimate = step_estimates(plan.users, samples)
        checks = validation_epochs(spec, plan, setup, estimate, progress)
        ctx = finish_context(setup, samples, estimate, checks)
        n_max = int(setup.sequences.lengths.max())
        rows = study_rows(spec, plan, samples.per_n, estimate, step_memory, checks, n_max)
    say(f"writing {CSV_NAME}, the table and the plots under {spec.results}")
    return write_study(spec, plan.device, rows, ctx)


def _announcer(progress: bool) -> Callable[[str], None]:
    """`say(text)`: one stderr line per phase when `progress`, else nothing."""
    import sys

    def say(text: str) -> None:
        if progress:
            print(f"scaling: {text}", file=sys.stderr, flush=True)

    return say


# ----------------------------------------------------------------------------------------------- setup
@contextmanager
def _threads(count: int | None):
    """torch's (and faiss's) CPU threads set to `count` for the block, torch's put back after it."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
        try:  # faiss's k-means runs on OpenMP threads of its own
            import faiss

            faiss.omp_set_num_threads(count)
        except ImportError:
            pass
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _faiss_threads_and_gpus() -> tuple[int | None, int]:
    try:
        import faiss
    except ImportError:
        return None, 0
    return faiss.omp_get_max_threads(), (faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)


def study_context(spec: ScalingSpec, plan: Plan, machine: dict) -> dict:
    """What context.json keeps of a run at its start: the machine (bench.core.context), threads, spec, configs."""
    faiss_threads, faiss_gpus = _faiss_threads_and_gpus()
    return {
        "dataset": spec.dataset, "started_at": _now(), "load_average_start": machine["loadavg_start"],
        "device": plan.device.type, "device_name": context.machine(machine), "cpu_model": machine["cpu_model"],
        "cpu_count": machine["cpu_count"], "torch_threads": machine["threads"], "faiss_threads": faiss_threads,
        "faiss_gpus": faiss_gpus, "torch": machine["torch"], "faiss": machine["faiss"],
        "python": platform.python_version(),
        "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items() if k != "results"},
        "kmeans_sample_cap": plan.kmeans_cap, "configs": {m: c.to_dict() for m, c in plan.configs.items()},
    }


def set_up(spec: ScalingSpec, plan: Plan, sequences: Sequences | None) -> Setup:
    """The dataset's users and the batch pool on the device, and both methods, built as a run builds them,
    with their intents as after initialisation (`on_epoch_start(0)` on the real users), so that the timed
    steps are realistic."""
    icl, device = plan.iclrec, plan.device
    if sequences is None:
        sequences = parse_sequences(dataset_path(spec.dataset))
    item_size = int(sequences.items.max()) + 2
    real = SequenceData(spec.dataset, sequences, item_size, max_len=icl.max_len, device="cpu")
    pool_seqs = build_population(sequences, spec.pool_users, spec.seed + 1)
    pool = SequenceData(spec.dataset, pool_seqs, item_size, max_len=icl.max_len, device=str(device))
    machine = context.start(spec, device)
    ctx = study_context(spec, plan, machine)
    runs = {name: RunSpec(method=name, dataset=spec.dataset, config=plan.configs[name], seed=spec.seed + 1,
                          device=spec.device, num_threads=spec.threads) for name in METHODS}
    methods = {name: build_method(runs[name], runs[name].config, real, device) for name in METHODS}
    real_on_device = _TrainingUsers(real.num_users, real.train_input.to(device))
    for method in methods.values():
        method.on_epoch_start(0, real_on_device)
    runners = {name: StepRunner(m, runs[name], pool, device, spec.seed + 2) for name, m in methods.items()}
    return Setup(sequences, item_size, real, pool_seqs, methods, runs, runners, machine, ctx)


def warm_up(spec: ScalingSpec, plan: Plan, setup: Setup) -> dict[str, int]:
    """Two untimed steps per method (first calls allocate and pick kernels); returns each method's step
    working memory: on a CPU measured in a fresh process (see `step_memory_fresh`), on a GPU the warm-up's
    own peak, which torch's allocator statistics give exactly."""
    memory = {}
    for name, runner in setup.runners.items():
        with Peak(plan.device) as warm:
            runner.timed_steps(2)
        memory[name] = warm.extra
        if plan.device.type == "cpu":
            memory[name] = step_memory_fresh(setup.runs[name], plan.configs[name], setup.pool_seqs, setup.item_size,
                                             spec.seed + 2)
    return memory


# ----------------------------------------------------------------------------------------------- sweep
def repeat_plan(spec: ScalingSpec, users: tuple[int, ...]) -> list[tuple[int, int]]:
    """(N, repeat) of every pass of the sweep, smallest N first."""
    return [(n, rep) for n in users for rep in range(spec.repeats if n < spec.large_from else spec.repeats_large)]


def sweep(spec: ScalingSpec, plan: Plan, setup: Setup, bar) -> Samples:
    """Every (N, repeat) of `bar`: the E-step, both methods' steps, ELCRec's clustering terms."""
    samples = Samples()
    raw_path = Path(spec.results) / f"samples_{spec.dataset}_{plan.device.type}.json"
    for n, rep in bar:
        label = f"N={n:,} repeat {rep + 1}"
        bar.set_postfix_str(label)
        s = samples.per_n.setdefault(n, {})
        measure_estep(spec, plan, setup, n, s, lambda what, label=label: bar.set_postfix_str(f"{label} {what}"))
        bar.set_postfix_str(f"{label} steps")
        # The order of the two methods alternates between repeats (and between steps, inside).
        measure_steps(spec, plan, setup, (rep + plan.users.index(n)) % 2 == 0, s, samples.steps)
        batch = setup.runners["elcrec"].next_batch()
        s.setdefault("cluster_terms", []).append((cluster_terms_seconds(setup.methods["elcrec"], batch, plan.device), 0))
        # The raw samples so far (seconds, bytes), kept beside the results: a sweep cut short loses nothing.
        raw = {"device": plan.device.type, "samples": {str(k): v for k, v in samples.per_n.items()}, "steps": samples.steps}
        write_text_atomic(raw_path, json.dumps(raw) + "\n")
    return samples


def measure_estep(spec: ScalingSpec, plan: Plan, setup: Setup, n: int, s: dict, note: Callable[[str], None]) -> None:
    """ICLRec's E-step at N, into `s`: encoding, the device-to-host copy (for faiss), k-means per backend."""
    device = plan.device
    idx = resample_users(setup.real.num_users, n, spec.seed)
    inputs = population_train_input(setup.real.train_input, idx, device)
    del idx
    method = setup.methods["iclrec"]
    with Peak(device) as enc_peak, Clock(device) as enc:
        pooled = encode_population(method, inputs)
    s.setdefault("encode", []).append((enc.seconds, enc_peak.extra))
    host = None
    if "faiss" in spec.backends:
        with Peak(device) as copy_peak, Clock(device) as copy:
            host = pooled.to("cpu")
            if host.data_ptr() != pooled.data_ptr():  # a real copy: count it
                np.ascontiguousarray(host.numpy())
        s.setdefault("copy", []).append((copy.seconds, copy_peak.extra if device.type == "cuda" else 0))
    for backend in spec.backends:
        note(f"k-means {backend}")
        with Peak(device) as km_peak, Clock(device) as km:
            run_kmeans(method, pooled, host, backend)
        # k-means runs while [N, H] is held: its peak above the E-step's start counts that matrix.
        held = pooled.numel() * pooled.element_size()
        s.setdefault(f"kmeans_{backend}", []).append((km.seconds, km_peak.extra + held))


def measure_steps(spec: ScalingSpec, plan: Plan, setup: Setup, forward: bool, s: dict,
                  all_steps: dict[str, list[float]]) -> None:
    """`spec.step_sample` training steps per method into `s` (mean seconds, peak bytes) and `all_steps`.

    Step by step, alternating, so that both methods see the same background load; `forward` says which
    method goes first.
    """
    order = METHODS if forward else METHODS[::-1]
    seconds = dict.fromkeys(METHODS, 0.0)
    memory = dict.fromkeys(METHODS, 0)
    for i in range(spec.step_sample):
        for name in order if i % 2 == 0 else order[::-1]:
            with Peak(plan.device) as step_peak:
                one = setup.runners[name].timed_steps(1)
            seconds[name] += one
            all_steps[name].append(one)
            memory[name] = max(memory[name], step_peak.extra)
    for name in METHODS:
        s.setdefault(f"step_{name}", []).append((seconds[name] / spec.step_sample, memory[name]))


def step_estimates(users: tuple[int, ...], samples: Samples) -> dict[str, Spread]:
    """Per method, one step's seconds: the median of every step timed at every N and repeat (a step's cost
    does not depend on N, and the median resists load spikes), with the range of the per-repeat means."""
    means = {m: [x[0] for n in users for x in samples.per_n[n][f"step_{m}"]] for m in METHODS}
    return {m: Spread(float(np.median(samples.steps[m])), min(means[m]), max(means[m])) for m in METHODS}


def validation_epochs(spec: ScalingSpec, plan: Plan, setup: Setup, estimate: dict[str, Spread],
                      progress: bool = False) -> list[EpochCheck]:
    """Real full epochs at the smallest N, against the estimate (steps x step seconds); with `progress`, a bar
    of their steps (the timed steps around each epoch included)."""
    from tqdm.auto import tqdm

    checks = []
    checked = plan.users[: spec.validate_smallest]
    batch = {name: setup.runs[name].config.batch_size for name in METHODS}
    # Steps of a real epoch at N: one per batch of users (ICLRec and ELCRec train on one example per user).
    total = sum(2 * spec.step_sample + -(-n // batch[name]) for n in checked for name in METHODS)
    bar = tqdm(total=total, desc="scaling: real epochs", unit="step", disable=not progress or not checked)
    for n in checked:
        seqs = build_population(setup.sequences, n, spec.seed)
        data = SequenceData(spec.dataset, seqs, setup.item_size, max_len=plan.iclrec.max_len, device=str(plan.device))
        for name in METHODS:
            runner = setup.runners[name]
            bar.set_postfix_str(f"N={n:,} {name}")
            # The estimate's recipe with steps sampled right before and after the real epoch, so that both see
            # the same load; the study-wide median is reported beside it (the load can drift between the sweep
            # and these epochs).
            before = runner.timed_steps(spec.step_sample)
            bar.update(spec.step_sample)
            seconds, steps = runner.real_epoch(data, on_step=bar.update)
            after = runner.timed_steps(spec.step_sample)
            bar.update(spec.step_sample)
            local = 0.5 * (before + after) * steps
            study = estimate[name].mid * steps
            checks.append(EpochCheck(
                N=n, method=name, real_s=seconds, estimated_s=local, steps=steps,
                error_pct=100.0 * (local - seconds) / seconds, study_median_estimate_s=study,
                study_median_error_pct=100.0 * (study - seconds) / seconds,
            ))
        del data
    bar.close()
    return checks


def finish_context(setup: Setup, samples: Samples, estimate: dict[str, Spread], checks: list[EpochCheck]) -> dict:
    """The run's context with its end, the real-epoch checks and the step statistics."""
    ratios = [e / i for i, e in zip(samples.steps["iclrec"], samples.steps["elcrec"])]  # consecutive steps, paired
    return {
        **setup.context,
        "load_average_end": context.load_average(),
        "finished_at": _now(),
        "validation": [asdict(c) for c in checks],
        "step_samples": {m: len(v) for m, v in samples.steps.items()},
        "step_median_s": {m: v.mid for m, v in estimate.items()},
        "step_ratio_elcrec_over_iclrec": {
            "median": float(np.median(ratios)), "q25": float(np.quantile(ratios, 0.25)),
            "q75": float(np.quantile(ratios, 0.75)),
        },
    }


# ---------------------------------------------------------------------------------------------- output
def merge_into_table(csv_path: Path, frame: pd.DataFrame, dataset: str, device: str) -> pd.DataFrame:
    """`frame` after the rows of scaling.csv's other (dataset, device) runs; extrapolations are redone later."""
    if not csv_path.is_file():
        return frame
    old = read_table(csv_path)
    keep = ~((old["device"] == device) & (old["dataset"] == dataset)) & (old["kind"] != "extrapolated")
    return pd.concat([old[keep], frame], ignore_index=True)


def write_study(spec: ScalingSpec, device: torch.device, rows: list[Row], ctx: dict) -> list[Path]:
    """Merge the rows into scaling.csv (with fresh extrapolations), the context into context.json, and
    regenerate the table and plots; returns the paths written."""
    results = Path(spec.results)
    csv_path = results / CSV_NAME
    frame = merge_into_table(csv_path, frame_of(rows), spec.dataset, device.type)
    contexts = read_contexts(results)
    contexts[f"{spec.dataset}/{device.type}"] = ctx
    ctx_path = results / CONTEXT_NAME
    write_text_atomic(ctx_path, json.dumps(contexts, indent=1) + "\n")
    write_text_atomic(csv_path, table_text(with_extrapolation(frame)))
    return [ctx_path, *write_outputs(results)]
