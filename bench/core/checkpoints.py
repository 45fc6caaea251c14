"""Mid-run checkpoints: everything a run needs to continue exactly where it stopped.

A run with a checkpoint folder (`--checkpoint-every E`, or any grid under `--time-budget`) keeps one file,
`<folder>/<run_id>/last.pt`. The default folder is a persistent cache outside any working copy,
`$BENCH_CHECKPOINTS`, else `${XDG_CACHE_HOME:-~/.cache}/intent-bench/checkpoints`: a run id names the same
run in every checkout, so a fresh clone on the same machine continues a campaign where the last one stopped. It is written
atomically (torch.save to a temporary file in the same folder, then os.replace) every E epochs and when the
run is interrupted, and holds:

- the run id it belongs to (a checkpoint of another spec is refused with one line),
- the next epoch to run,
- the model's and the optimiser's state, and the model's non-persistent buffers (ICLRec's centroids, from
  which its next E-step warm-starts),
- the random streams: the batch generator (order, negatives, augmentations), torch's global CPU stream
  (dropout on the CPU) and the CUDA stream of the run's device (dropout on a GPU), Python's and numpy's,
- the early-stopping state so far (`train.Fit`: every epoch's row, best score, epoch, valid metrics,
  parameters and the time it took to reach them) and the wall time spent before the checkpoint.

ICLRec's k-means (the E-step) is seeded by the run's seed at every epoch and warm-starts from the
centroids buffer (methods/clustering.py); ELCRec's cluster centres are parameters. Running the same spec again with the same
folder continues from the file; the valid curve is then bit-identical to an uninterrupted run's on the CPU
(tests/test_campaign.py). A run that finishes removes its checkpoint: its record is what is kept.

One process at a time trains a run from its checkpoint: the run holds `<folder>/<run_id>/lock` (an
exclusive `flock`, which the kernel releases when the process ends however it ends) from before it reads
the checkpoint until its record is made. A second process asked for the same run, from any results folder
(the checkpoint folder is shared by them all), stops with one line naming the holder instead of both
resuming from one file and overwriting each other's epochs; `bench status` shows such a run as running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.core.files import lock_holder, read_holder, write_torch_atomic
from bench.core.paths import cache_folder

CHECKPOINT_NAME = "last.pt"
LOCK_NAME = "lock"
FORMAT = 1


def default_folder() -> Path:
    """Where mid-run checkpoints go unless --checkpoint-dir says otherwise (see the module doc)."""
    return cache_folder("BENCH_CHECKPOINTS", "checkpoints")


def checkpoint_path(folder: str | Path, run_id: str) -> Path:
    """Where the checkpoint of run `run_id` lives under `folder`."""
    return Path(folder).expanduser().resolve() / run_id / CHECKPOINT_NAME


@dataclass
class Resume:
    """What a checkpoint restores: the loop goes on at `next_epoch`."""

    next_epoch: int
    model: dict
    buffers: dict  # non-persistent buffers, absent from `model`
    optimizer: dict
    generator: torch.Tensor
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    python_rng: tuple
    numpy_rng: dict
    fit: dict
    elapsed_s: float


def _cpu(value):
    """Tensors moved to the CPU at any depth (optimiser states hold nested dicts of device tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu(v) for v in value)
    return value


def snapshot(
    run_id: str,
    next_epoch: int,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    fit_state: dict,
    elapsed_s: float,
) -> dict:
    """Everything a checkpoint holds, copied to host memory now (an epoch boundary): `write` saves it later,
    for example when a SIGTERM arrives in the middle of the next epoch."""
    device = generator.device
    return {
        "format": FORMAT,
        "run_id": run_id,
        "next_epoch": next_epoch,
        "model": _cpu(method.state_dict()),
        "buffers": _cpu(non_persistent_buffers(method)),
        "optimizer": _cpu(optimizer.state_dict()),
        "generator": generator.get_state().cpu(),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(legacy=False),
        "fit": _cpu(fit_state),
        "elapsed_s": float(elapsed_s),
    }


def write(path: Path, state: dict) -> Path:
    """Write a `snapshot` to `path`, atomically: readers see the previous file or this one."""
    path = Path(path)
    try:
        write_torch_atomic(path, state)
    except BenchError as exc:  # a full disk, a file-size limit: say how much room there is
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        raise BenchError(f"{exc} ({free / 2**20:.1f} MiB free there)") from None
    return path


def load(path: Path, run_id: str) -> Resume | None:
    """The checkpoint at `path` for run `run_id`; None when there is none. Refuses (BenchError, one line) a
    file that cannot be read or that belongs to another run."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        lines = str(exc).strip().splitlines()
        raise BenchError(f"cannot read checkpoint {path}: {(lines[0] if lines else type(exc).__name__)[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BenchError(f"checkpoint {path} is not a mid-run checkpoint of this version of intent-bench")
    if state.get("run_id") != run_id:
        raise BenchError(
            f"checkpoint {path} belongs to run {state.get('run_id')}, not to this spec's run {run_id}: "
            "remove it or point --checkpoint-dir elsewhere"
        )
    return Resume(
        next_epoch=int(state["next_epoch"]),
        model=state["model"],
        buffers=state.get("buffers", {}),
        optimizer=state["optimizer"],
        generator=state["generator"],
        cpu_rng=state["cpu_rng"],
        cuda_rng=state["cuda_rng"],
        python_rng=state["python_rng"],
        numpy_rng=state["numpy_rng"],
        fit=state["fit"],
        elapsed_s=float(state["elapsed_s"]),
    )


def non_persistent_buffers(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers that `state_dict` leaves out (registered with persistent=False), by name."""
    persistent = method.state_dict().keys()
    return {name: buf for name, buf in method.named_buffers() if name not in persistent}


def restore_model(resume: Resume, method: torch.nn.Module, device: torch.device) -> None:
    """Load the checkpoint's parameters, persistent and non-persistent buffers into `method` on `device`."""
    method.load_state_dict({k: v.to(device) for k, v in resume.model.items()})
    for name, value in resume.buffers.items():
        method.get_buffer(name).copy_(value.to(device))


def restore_streams(resume: Resume, generator: torch.Generator) -> None:
    """Put every random stream back where the checkpoint left it (after the model and optimiser are built)."""
    generator.set_state(resume.generator.to(generator.get_state().device))
    torch.set_rng_state(resume.cpu_rng)
    if resume.cuda_rng is not None and generator.device.type == "cuda":
        torch.cuda.set_rng_state(resume.cuda_rng, generator.device)
    random.setstate(resume.python_rng)
    np.random.set_state(resume.numpy_rng)


def epochs_done(folder: str | Path, run_id: str) -> int | None:
    """Epochs a run's checkpoint holds (for `bench status`), or None when it has none or it is unreadable."""
    found = progress(folder, run_id)
    return None if found is None else found["epochs_done"]


def progress(folder: str | Path, run_id: str) -> dict | None:
    """How far a checkpointed run got: epochs done, its best valid score so far and the epoch it came at
    (`bench status`); None when it has no readable checkpoint."""
    try:
        resume = load(checkpoint_path(folder, run_id), run_id)
    except BenchError:
        return None
    if resume is None:
        return None
    best_epoch = resume.fit.get("best_epoch", -1)
    return {"epochs_done": resume.next_epoch, "best_epoch": best_epoch if best_epoch >= 0 else None,
            "best_valid": resume.fit.get("best_score") if best_epoch >= 0 else None}


def remove(path: Path) -> None:
    """Delete a finished run's checkpoint (and its folder when empty)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def _lock_path(folder: str | Path, run_id: str) -> Path:
    return checkpoint_path(folder, run_id).parent / LOCK_NAME


@contextlib.contextmanager
def held(folder: str | Path, run_id: str):
    """Hold run `run_id`'s lock for the block (see the module doc); BenchError when another process holds it."""
    path = _lock_path(folder, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_within(fd, seconds=2.0):  # a status reader holds it shared for an instant; a run, for hours
            holder = read_holder(fd)
            os.close(fd)
            raise BenchError(
                f"run {run_id} is already training in another process ({holder or 'unknown'}), from checkpoint"
                f" folder {path.parent.parent}: wait for it to finish, or stop it (it checkpoints on SIGTERM)"
            ) from None
        # The previous holder may have removed the file between our open and our lock: lock the live one.
        try:
            live = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            live = False
        if live:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        if not checkpoint_path(folder, run_id).exists():  # finished (or never checkpointed): nothing to guard
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        os.close(fd)  # releases the lock


def _lock_within(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def in_training(folder: str | Path, run_id: str) -> str | None:
    """The holder ("pid N on HOST") of a run being trained now by a live process, else None."""
    return lock_holder(_lock_path(folder, run_id))
