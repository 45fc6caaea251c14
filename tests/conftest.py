"""Shared fixtures. Tests read the datasets from the local mirror (../shared/datasets by default)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
REFERENCE_CHECKPOINT = SHARED / "reference" / "ICLRec-Beauty-1.pt"


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
