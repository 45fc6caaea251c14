"""`python -m bench profile`: where a method's time goes.

Two views of the same method and dataset:

1. a short run through the one training loop (`train.run`), printed as seconds per epoch in each timed
   phase (estep / train / eval) and the run's peak memory: the numbers a run record holds;
2. S training steps of a freshly built method under `torch.profiler`: the top operators by self time, and
   the share of a step spent building the batch, in the encoder passes, in the rest of the forward (losses,
   cluster assignment), in backward and in the optimiser. The encoder passes are marked with forward
   hooks on the method module, so the methods' code needs no profiling calls of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.configs import method_class, parse_overrides
from bench.data import Batch, SequenceData
from bench.errors import BenchError

PHASES = ("estep", "train", "eval")
ENCODER = "encoder pass"
FORWARD = "training_step (forward)"
# Ranges that partition a step: construction, forward (containing the encoder passes), backward, optimiser.
STEP_RANGES = ("batch construction", FORWARD, "backward", "optimizer step")


def profile_from_args(args) -> int:
    from bench import train

    if args.epochs is None or args.epochs < 1:
        raise BenchError("--epochs must be >= 1")
    if args.steps is None or args.steps < 1:
        raise BenchError("--steps must be >= 1")
    method_class(args.method)  # fail fast on an unknown method, before loading data
    spec = train.RunSpec(
        method=args.method,
        dataset=args.dataset,
        profile="custom",
        epochs=args.epochs,
        patience=args.epochs,  # never stop early: every asked epoch is timed
        max_users=args.max_users,
        overrides=parse_overrides(args.overrides),
        device=args.device,
    )
    device = train.resolve_device(spec.device)
    data = SequenceData.load(spec.dataset, max_users=spec.max_users, device=str(device))
    record = train.run(spec, progress=False, data=data)
    print_phases(record)
    print()
    profile_steps(spec, data, device, args.steps)
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
    print(f"test eval: {record['totals']['test_eval_s']:.3f} s, wall: {record['totals']['wall_s']:.1f} s")


# ------------------------------------------------------------------------------------------------- steps
@contextlib.contextmanager
def encoder_ranges(module: torch.nn.Module):
    """Wrap every call of `module` (the encoder forward) in a profiler range, via forward hooks."""
    open_ranges: list[record_function] = []

    def enter(_module, _inputs) -> None:
        rf = record_function(ENCODER)
        rf.__enter__()
        open_ranges.append(rf)

    def leave(_module, _inputs, _output) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _batches(data: SequenceData, method, generator: torch.Generator) -> Iterator[Batch]:
    """Training batches for as many steps as asked: a new epoch's order whenever one is used up."""
    args = method.config.augment_args() if method.num_views else None
    while True:
        yield from data.train_batches(method.config.batch_size, generator, method.num_views, args)


def profile_steps(spec, data: SequenceData, device: torch.device, steps: int) -> None:
    from bench import train
    from bench.configs import resolve_config

    config, _ = resolve_config(spec.method, spec.dataset, spec.config_source, spec.overrides)
    method = train.build_method(spec, config, data, device)
    method.train()
    method.on_epoch_start(0, data)  # ICLRec / ELCRec need their intents before a step
    optimizer = torch.optim.Adam(method.parameters(), lr=method.config.lr, weight_decay=method.config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    batches = _batches(data, method, generator)

    def step() -> None:
        with record_function("step"):
            with record_function("batch construction"):
                batch = next(batches)
            with record_function(FORWARD):
                terms = method.training_step(batch)
            optimizer.zero_grad(set_to_none=True)
            with record_function("backward"):
                terms["loss"].backward()
            with record_function("optimizer step"):
                optimizer.step()

    step()  # warm-up: first-call allocations and lazy initialisation stay out of the profile
    _synchronize(device)
    activities = [ProfilerActivity.CPU]
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with encoder_ranges(method), profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            step()
        _synchronize(device)
    averages = prof.key_averages()
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"torch.profiler: {steps} training steps of {spec.method} (batch {method.config.batch_size}), "
          f"top operators by {sort_by}")
    print(averages.table(sort_by=sort_by, row_limit=15))
    print_step_shares(averages, steps, cuda)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_step_shares(averages, steps: int, cuda: bool) -> None:
    """Inclusive time of each range as a share of the whole step (CPU time; device time too on CUDA)."""
    by_key = {evt.key: evt for evt in averages}

    def times(key: str) -> tuple[float, float, int]:
        evt = by_key.get(key)
        if evt is None:
            return 0.0, 0.0, 0
        return evt.cpu_time_total / 1e3, getattr(evt, "device_time_total", 0.0) / 1e3, evt.count  # ms

    step_cpu, step_dev, _ = times("step")
    enc_cpu, enc_dev, enc_count = times(ENCODER)
    fwd_cpu, fwd_dev, _ = times(FORWARD)
    rows = [
        ("batch construction", *times("batch construction")[:2]),
        (f"encoder passes ({enc_count // steps} per step)", enc_cpu, enc_dev),
        ("losses and rest of forward", fwd_cpu - enc_cpu, fwd_dev - enc_dev),
        ("backward", *times("backward")[:2]),
        ("optimizer step", *times("optimizer step")[:2]),
    ]
    rows.append(("other (zero_grad, profiler)", step_cpu - sum(r[1] for r in rows), step_dev - sum(r[2] for r in rows)))
    print(f"share of a training step ({step_cpu / steps:.1f} ms CPU per step"
          + (f", {step_dev / steps:.1f} ms device" if cuda else "") + ")")
    print(f"{'part':<34}{'CPU ms/step':>12}{'share':>8}" + (f"{'device ms/step':>16}{'share':>8}" if cuda else ""))
    for name, cpu_ms, dev_ms in rows:
        line = f"{name:<34}{cpu_ms / steps:>12.2f}{_share(cpu_ms, step_cpu):>8}"
        if cuda:
            line += f"{dev_ms / steps:>16.2f}{_share(dev_ms, step_dev):>8}"
        print(line)
    if cuda:
        # Kernels that autograd launches from its own device thread belong to no range of this thread, so the
        # ranges' device times can miss part of backward: the total over all kernels says how much.
        ranges = {"step", ENCODER, *STEP_RANGES}
        kernels = sum(evt.self_device_time_total for evt in averages if evt.key not in ranges) / 1e3
        print(f"device kernels: {kernels / steps:.1f} ms per step in all, {step_dev / steps:.1f} ms inside the step's ranges")


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"
