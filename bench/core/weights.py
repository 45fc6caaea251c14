"""Published-layout weights: write a run's best parameters, read a published checkpoint into our encoder.

The published code saves `model.state_dict()` of its encoder (SASRec, or ICSRec's GRU4Rec); a run can save
its best parameters in the same layout (`--save-checkpoint`), and `bench evaluate` builds a method from
such a file, on the encoder whose layout its keys have, with the config values its tensor shapes fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.core.configs import build_config, check_values, method_class, paper_values
from bench.core.data import SequenceData
from bench.core.devices import resolve_device
from bench.core.errors import BenchError
from bench.core.files import write_torch_atomic
from bench.core.spec import make_spec
from bench.core.step import build_method
from methods import Method, encoder_class, encoder_of_state


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
        raise BenchError(f"cannot read checkpoint {path}: {_load_failure(path, exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"checkpoint {path} is not a state_dict of tensors")
    # A model saved while wrapped in nn.DataParallel / DistributedDataParallel has every key under "module.".
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        encoder = encoder_of_state(state)
    except ValueError as exc:
        raise BenchError(f"checkpoint {path} is not in a published layout: {exc}") from None
    for key in encoder.required_keys:
        if key not in state:
            raise BenchError(f"checkpoint {path} is not in the published layout of {encoder.name}: it has no {key}")
    return state


def _load_failure(path: str, exc: Exception) -> str:
    """Why torch.load failed, in one line. Its weights-only message opens with advice to load with
    weights_only=False, which would run whatever code the file pickles: the reason is given instead. A file
    that is neither of torch.save's formats (a text file, an archive of something else) makes torch fail
    deep in its parser ("list index out of range"), so the file's first bytes say what it is not."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        return "not a file of tensors: torch.save writes a zip archive or a pickle, and this file begins with neither"
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[-1].splitlines() if line.strip()]
        reason = f" ({detail[0][:120]})" if detail else ""
        return f"not a file of tensors that torch.load reads without running pickled code{reason}"
    lines = text.splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def method_from_checkpoint(
    method: str, dataset: str, path: str, device: str = "auto", overrides: dict[str, str] | None = None
) -> tuple[Method, SequenceData]:
    """A method built as a run builds it (`build_method`), with a published-layout checkpoint loaded.

    Its config is the paper config with `overrides` (`--set` pairs) and the values the checkpoint's keys
    and shapes fix (its encoder, layers, K, ...): an override that contradicts one of those (a SASRec file
    with encoder=gru4rec) is an error, not silently replaced. The data is the whole dataset, loaded once
    the checkpoint is known to be readable.
    """
    cls = method_class(method)
    given = check_values(cls.Config, overrides, "--set") if overrides else {}
    if "encoder" in given:
        try:
            encoder_class(given["encoder"])
        except ValueError as exc:
            raise BenchError(f"--set: {exc}") from None
    state = load_checkpoint(path)
    spec = make_spec(method, dataset, device=device)
    torch_device = resolve_device(spec.device)
    try:
        from_shapes = cls.config_from_checkpoint(state)
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"checkpoint {path} does not fit {method}: cannot read its shapes ({exc})") from None
    for key, value in given.items():
        if key in from_shapes and from_shapes[key] != value:
            what = "is in the layout of encoder" if key == "encoder" else f"has {key} ="
            raise BenchError(f"checkpoint {path} {what} {from_shapes[key]}, not the {key}={value} given")
    values = {**paper_values(method, dataset), **given, **from_shapes}
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
