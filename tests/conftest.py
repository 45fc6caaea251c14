"""Shared fixtures. Tests read the datasets from the local mirror (../shared/datasets by default)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared")).resolve()
os.environ.setdefault("BENCH_DATA_MIRROR", str(SHARED / "datasets"))
os.environ.setdefault("BENCH_DATA_DIR", str(REPO / ".cache" / "datasets"))
# Commands that save by default (a single `bench run`, `tune`) must never write into the committed results/.
os.environ["BENCH_RESULTS"] = tempfile.mkdtemp(prefix="bench-results-")
# ... nor into the user's persistent checkpoint cache, where a real campaign's checkpoints live.
os.environ["BENCH_CHECKPOINTS"] = tempfile.mkdtemp(prefix="bench-checkpoints-")
# ... and each test process counts its own runs in flight, not the host's (bench/core/context.py).
os.environ["BENCH_IN_FLIGHT"] = tempfile.mkdtemp(prefix="bench-in-flight-")
REFERENCE_CHECKPOINT = SHARED / "reference" / "ICLRec-Beauty-1.pt"


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


def run_cli(argv, capsys=None) -> CliResult:
    """`python -m bench ARGV` in this process: `bench.cli.main`'s exit code and what it printed, read with
    pytest's `capsys` (without one, e.g. in a module-scoped fixture, from sys.stdout/sys.stderr redirected).

    What a process start would give a test, without one: argparse's SystemExit becomes its exit code, as at
    the process boundary; any other exception propagates (a traceback fails the test). The process-wide state
    that `main` sets for `run`/`tune` (the tuned-configs folder, the SIGTERM and SIGINT handlers, a signal seen) is put
    back afterwards, so that a later test sees none of it. Tests that need the real entry point (a signal, a
    killed process, a traceback printed by the interpreter, environment read at import) start a subprocess.
    """
    from bench import cli
    from bench.core import configs, termination

    results_folder = configs.results_folder()
    seen = termination.requested()
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    out, err = io.StringIO(), io.StringIO()
    if capsys is not None:
        capsys.readouterr()  # what the test printed before is not the command's
    try:
        with contextlib.ExitStack() as redirected:
            if capsys is None:
                redirected.enter_context(contextlib.redirect_stdout(out))
                redirected.enter_context(contextlib.redirect_stderr(err))
            code = cli.main([str(arg) for arg in argv])
    except SystemExit as exc:  # argparse: a usage error exits 2, --help 0
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        configs.use_results_folder(results_folder)
        if not seen:
            termination.reset()
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if capsys is None:
        return CliResult(code, out.getvalue(), err.getvalue())
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def synthetic_sequences(num_users: int = 600, num_items: int = 120, seed: int = 0):
    """Users walk through items in steps of 1 from a random start: next-item structure a model can learn."""
    from bench.core.data import Sequences

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 20, size=num_users)
    starts = rng.integers(1, num_items + 1, size=num_users)
    items = np.concatenate([(s - 1 + np.arange(n)) % num_items + 1 for s, n in zip(starts, lengths)])
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(items=items.astype(np.int64), offsets=offsets)


@pytest.fixture(scope="session")
def small_data():
    from bench.core.data import SequenceData

    seqs = synthetic_sequences()
    return SequenceData("synthetic", seqs, item_size=int(seqs.items.max()) + 2)


@pytest.fixture(scope="session")
def beauty():
    from bench.core.data import SequenceData

    return SequenceData.load("Beauty")


@pytest.fixture(scope="session")
def beauty_sample():
    """4,000 Beauty users (the item table of the whole file): real sequences where the full data adds nothing."""
    from bench.core.data import SequenceData

    return SequenceData.load("Beauty", max_users=4000)


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process training on one torch thread for a module (opt in with `usefixtures`); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data():
    """300 synthetic users of 5-19 items, max_len 20: the smallest data a whole run goes through."""
    from bench.core.data import SequenceData

    seqs = synthetic_sequences(num_users=300)
    return SequenceData("synthetic", seqs, item_size=int(seqs.items.max()) + 2, max_len=20)


def synthetic_spec(method: str, *, overrides: dict | None = None, **fields):
    """A RunSpec on the synthetic data of these fixtures (no manifest, so not `make_spec`): the config
    resolved as `make_spec` resolves it (the method's defaults plus `overrides`), on the CPU."""
    from bench.core.configs import resolve_config
    from bench.core.spec import RunSpec

    config, label = resolve_config(method, "synthetic", "paper", dict(overrides or {}))
    return RunSpec(method=method, dataset="synthetic", config=config, config_source=label, **{"device": "cpu", **fields})
