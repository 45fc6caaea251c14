"""A run's method, its training batches, its optimiser and its training step, as the loop, the profiler
and the scaling study all build them: one place, so that what the tools time is what a run executes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from bench.core.configs import method_class
from bench.core.data import SequenceData
from bench.core.errors import BenchError
from bench.core.spec import RunSpec
from methods import Batch, DatasetInfo, Method, MethodConfig


def build_method(spec: RunSpec, config: MethodConfig, data: SequenceData, device: torch.device) -> Method:
    """The method of `spec` with `config`, initialised from the spec's seed, on `device`."""
    if config.max_len != data.max_len:
        raise BenchError(f"config max_len {config.max_len} differs from the data's {data.max_len}")
    info = DatasetInfo(name=data.name, item_size=data.item_size, num_users=data.num_users)
    torch.manual_seed(spec.seed)  # parameter initialisation and dropout
    try:
        method = method_class(spec.method)(config, info, seed=spec.seed).to(device)
    except ValueError as exc:
        raise BenchError(f"{spec.method} on {spec.dataset}: {exc}") from None
    return method


def epoch_batches(method: Method, data: SequenceData, generator: torch.Generator) -> Iterator[Batch]:
    """One epoch of the batches `method` trains on: its kind of examples, with its views or positives."""
    return data.train_batches(
        method.config.batch_size, generator, method.view_maker,
        examples=method.training_examples, same_target=method.positive_maker,
    )


def steps_per_epoch(method: Method, data: SequenceData, max_steps: int | None = None) -> int:
    """Batches in one epoch: every example once (the last batch smaller), or `max_steps` of them at most
    (a budget's cap: each epoch then trains on a fresh random sample of the examples)."""
    steps = -(-data.num_examples(method.training_examples) // method.config.batch_size)  # ceil
    return steps if max_steps is None else min(steps, max_steps)


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


def make_optimizer(method: Method) -> torch.optim.Optimizer:
    """Adam with the method config's learning rate and weight decay, as the published code."""
    return torch.optim.Adam(method.parameters(), lr=method.config.lr, weight_decay=method.config.weight_decay)


def optimise(terms: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Backpropagate the step's total loss ("loss") and take one optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
