"""`python -m bench profile`: where a method's time goes.

Two views of the same method and dataset:

1. a short run through the one training loop (`train.run`), printed as seconds per epoch in each timed
   phase (estep / train / eval) and the run's peak memory: the numbers a run record holds;
2. S training steps of a freshly built method under `torch.profiler`: the top operators by self time;
   then S more steps timed part by part with the device synchronised at each part's edges: the share of a
   step spent building the batch, in the encoder passes (found by forward hooks on the method module, so
   the methods' code needs no profiling calls of its own), in the rest of the forward (losses, cluster
   assignment), in backward and in the optimiser.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.core.costs import PHASES, PhaseTimer, synchronize
from bench.core.data import SequenceData
from bench.core.devices import resolve_device
from bench.core.step import epoch_batches
from methods import Batch

ENCODER = "encoder pass"
FORWARD = "training_step (forward)"


def profile_run(spec, steps: int) -> int:
    """Both views of `spec`'s method (module doc): the timed run's phases, then `steps` profiled steps."""
    from bench.core import train

    device = resolve_device(spec.device)
    data = SequenceData.load(spec.dataset, max_users=spec.max_users, device=str(device))
    record = train.run(spec, progress=False, data=data)
    print_phases(record)
    print()
    profile_steps(spec, data, device, steps)
    return 0


# ------------------------------------------------------------------------------------------------ phases
def print_phases(record: dict) -> None:
    print(f"{record['method']} on {record['dataset']}: {record['num_users']:,} users, device {record['device']}")
    header = f"{'epoch':>6}" + "".join(f"{p + ' s':>10}" for p in PHASES) + f"{'total s':>10}{'valid NDCG@20':>15}"
    print(header)
    for row in record["epochs"]:
        total = sum(row[f"{p}_s"] for p in PHASES)
        print(
            f"{row['epoch']:>6}" + "".join(f"{row[f'{p}_s']:>10.3f}" for p in PHASES)
            + f"{total:>10.3f}{row['valid']['NDCG@20']:>15.4f}"
        )
    n = len(record["epochs"])
    means = {p: sum(row[f"{p}_s"] for row in record["epochs"]) / n for p in PHASES}
    print(f"{'mean':>6}" + "".join(f"{means[p]:>10.3f}" for p in PHASES) + f"{sum(means.values()):>10.3f}")
    memory = record.get("memory") or {}
    line = f"peak memory: {record['peak_memory_bytes'] / 2**20:.0f} MiB ({memory.get('kind', 'unknown')})"
    if memory.get("torch_allocated_peak_bytes"):
        line += f", torch allocated peak {memory['torch_allocated_peak_bytes'] / 2**20:.0f} MiB"
    print(line)
    if memory.get("gpu_utilisation_mean_percent") is not None:
        print(f"GPU utilisation (NVML, whole device, sampled over the run): "
              f"{memory['gpu_utilisation_mean_percent']:.0f}% mean of {memory['gpu_utilisation_samples']} samples")
    print(f"test eval: {record['totals']['test_eval_s']:.3f} s, wall: {record['totals']['wall_s']:.1f} s")


# ------------------------------------------------------------------------------------------------- steps
def _batches(data: SequenceData, method, generator: torch.Generator) -> Iterator[Batch]:
    """Training batches for as many steps as asked: a new epoch's order whenever one is used up."""
    while True:
        yield from epoch_batches(method, data, generator)


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence native code's writes to stderr (fd 2) for the block: the profiler's library prints "USDT:"
    lines at start and stop that no setting turns off. Python's own sys.stderr is flushed around it."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_steps(spec, data: SequenceData, device: torch.device, steps: int) -> None:
    from bench.core.step import build_method, make_optimizer, step_function

    method = build_method(spec, spec.config, data, device)
    method.train()
    method.on_epoch_start(0, data)  # ICLRec / ELCRec need their intents before a step
    optimizer = make_optimizer(method)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    batches = _batches(data, method, generator)
    training_step = step_function(method, spec, device)  # as the run would execute it

    def step(timer: PhaseTimer | None = None) -> None:
        """One training step; with `timer`, each part's seconds (device synchronised at its edges) are added."""

        def part(name: str):
            return timer.phase(name) if timer is not None else contextlib.nullcontext()

        with record_function("step"):
            with part("batch construction"), record_function("batch construction"):
                batch = next(batches)
            with part("forward"), record_function(FORWARD):
                terms = training_step(batch)
            optimizer.zero_grad(set_to_none=True)
            with part("backward"), record_function("backward"):
                terms["loss"].backward()
            with part("optimizer step"), record_function("optimizer step"):
                optimizer.step()

    for _ in range(3 if spec.compile != "off" else 1):  # warm-up: allocations, lazy init, compilation
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU]
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with quiet_native_stderr(), profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"torch.profiler: {steps} training steps of {spec.method} (batch {method.config.batch_size}), "
          f"top operators by {sort_by}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15))

    # The split of a step comes from plain timers with the device synchronised at each part's edges (the
    # profiler's ranges cannot give it on CUDA: kernels run after their range has closed on the host).
    timer = PhaseTimer(device)
    with encoder_timer(method, timer):
        for _ in range(steps):
            step(timer)
    print_step_shares(timer.current, steps, device)


@contextlib.contextmanager
def encoder_timer(module: torch.nn.Module, timer: PhaseTimer):
    """Time every call of `module` (the encoder forward) as the phase ENCODER of `timer`, via forward hooks."""
    open_phases: list[contextlib.AbstractContextManager] = []

    def enter(_module, _inputs) -> None:
        phase = timer.phase(ENCODER)
        phase.__enter__()
        open_phases.append(phase)

    def leave(_module, _inputs, _output) -> None:
        open_phases.pop().__exit__(None, None, None)
        timer.current["encoder calls"] += 1

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def print_step_shares(timed: dict[str, float], steps: int, device: torch.device) -> None:
    """Each part's share of a step, from `steps` steps timed with the device synchronised at part edges.

    The synchronisations cost a little on CUDA (the host can no longer run ahead), so the parts sum to a
    bit more than an unsynchronised step takes; the shares are what to read.
    """
    parts = ["batch construction", "forward", "backward", "optimizer step"]
    total = sum(timed[p] for p in parts)
    calls = int(timed["encoder calls"]) // steps
    rows = [
        ("batch construction", timed["batch construction"]),
        (f"encoder passes ({calls} calls per step)", timed[ENCODER]),
        ("losses and rest of forward", timed["forward"] - timed[ENCODER]),
        ("backward", timed["backward"]),
        ("optimizer step", timed["optimizer step"]),
    ]
    print(f"share of a training step ({1e3 * total / steps:.1f} ms per step, {device.type}, timed with the "
          "device synchronised at each part)")
    print(f"{'part':<36}{'ms/step':>10}{'share':>8}")
    for name, seconds in rows:
        print(f"{name:<36}{1e3 * seconds / steps:>10.2f}{_share(seconds, total):>8}")


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"
