"""Published-layout weights: write a run's best parameters, read a published checkpoint into our encoder.

The published code saves `model.state_dict()` of its SASRec encoder; a run can save its best parameters in
the same layout (`--save-checkpoint`), and `bench evaluate` builds a method from such a file, with the
config values its tensor shapes fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.core.configs import build_config, method_class, paper_values
from bench.core.data import SequenceData
from bench.core.devices import resolve_device
from bench.core.errors import BenchError
from bench.core.files import write_torch_atomic
from bench.core.spec import make_spec
from bench.core.step import build_method
from methods import Method


def save_checkpoint(state: dict, path: str) -> None:
    """Write a state_dict in the published layout, atomically."""
    write_torch_atomic(Path(path).resolve(), {k: v.cpu() for k, v in state.items()})


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a published-layout state_dict; any unreadable file is a user error (one line)."""
    if not os.path.isfile(path):
        raise BenchError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise BenchError(f"checkpoint {path} is empty (0 bytes)")
    try:
        # weights_only reads both the zip format and the legacy one (the published ICSRec checkpoints)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise BenchError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"checkpoint {path} is not a state_dict of tensors")
    # A model saved while wrapped in nn.DataParallel / DistributedDataParallel has every key under "module.".
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in ("item_embeddings.weight", "position_embeddings.weight"):
        if key not in state:
            raise BenchError(f"checkpoint {path} is not in the published layout: it has no {key}")
    return state


def _load_failure(exc: Exception) -> str:
    """Why torch.load failed, in one line. Its weights-only message opens with advice to load with
    weights_only=False, which would run whatever code the file pickles: the reason is given instead."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[-1].splitlines() if line.strip()]
        reason = f" ({detail[0][:120]})" if detail else ""
        return f"not a file of tensors that torch.load reads without running pickled code{reason}"
    lines = text.splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def method_from_checkpoint(method: str, dataset: str, path: str, device: str = "auto") -> tuple[Method, SequenceData]:
    """A method built as a run builds it (`build_method`), with a published-layout checkpoint loaded.

    Its config is the paper config with the values the checkpoint's shapes fix (layers, K, ...); the data
    is the whole dataset, loaded once the checkpoint is known to be readable.
    """
    cls = method_class(method)
    state = load_checkpoint(path)
    spec = make_spec(method, dataset, device=device)
    torch_device = resolve_device(spec.device)
    try:
        from_shapes = cls.config_from_checkpoint(state)
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"checkpoint {path} does not fit {method}: cannot read its shapes ({exc})") from None
    values = {**paper_values(method, dataset), **from_shapes}
    config = build_config(cls.Config, values, f"checkpoint {path}")
    data = SequenceData.load(dataset, device=str(torch_device))
    rows = state["item_embeddings.weight"].shape[0]
    if rows != data.item_size:
        raise BenchError(
            f"checkpoint {path} has {rows} item rows but {dataset} needs {data.item_size}: "
            "was it trained on another dataset?"
        )
    if config.max_len != data.max_len:
        raise BenchError(f"checkpoint {path} has {config.max_len} position rows; {dataset} needs {data.max_len}")
    built = build_method(spec, config, data, torch_device)
    try:
        missing, unexpected = built.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = str(exc).strip().splitlines()
        raise BenchError(f"checkpoint {path} does not fit {method}: {first[-1].strip()[:200] if first else exc}") from None
    if missing or unexpected:
        raise BenchError(
            f"checkpoint {path} does not fit {method}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return built, data
