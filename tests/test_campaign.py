"""Campaigns on a GPU block (issue 15), checked on the CPU in seconds: mid-run checkpoints and resume parity,
the interrupted state, the time-boxed scheduler's order and refusals, the budget stop, `bench status`, and
fractional-GPU packing through Ray with logical GPUs.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from bench import checkpoints, train
from bench.data import SequenceData
from bench.errors import BenchError
from tests.conftest import synthetic_sequences

MAX_LEN = 20
TINY = {"num_layers": 1, "hidden_size": 32, "batch_size": 64, "max_len": MAX_LEN}
METHODS = ("sasrec", "cl4srec", "iclrec", "elcrec")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data() -> SequenceData:
    seqs = synthetic_sequences(num_users=300)
    return SequenceData("synthetic", seqs, item_size=int(seqs.items.max()) + 2, max_len=MAX_LEN)


def tiny_spec(method: str, epochs: int = 4, **kwargs) -> train.RunSpec:
    intents = {"num_intents": 16} if method in ("iclrec", "elcrec") else {}
    return train.RunSpec(method=method, dataset="synthetic", epochs=epochs, patience=epochs, device="cpu",
                         overrides={**TINY, **intents}, **kwargs)


def stop_after(n: int):
    return lambda epochs_done, _seconds: f"stopped after {n}" if epochs_done == n else None


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("method", METHODS)
def test_two_epochs_resume_two_epochs_gives_the_uninterrupted_curve(method, tiny_data, tmp_path):
    whole = train.run(tiny_spec(method), data=tiny_data, progress=False)
    spec = tiny_spec(method, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    first = train.run(spec, data=tiny_data, progress=False, stop_when=stop_after(2))
    assert first["status"] == "interrupted" and first["test"] is None
    assert first["interrupted"]["epochs_done"] == 2 and first["interrupted"]["max_epochs"] == 4
    path = checkpoints.checkpoint_path(tmp_path, first["run_id"])
    assert path.is_file() and checkpoints.epochs_done(tmp_path, first["run_id"]) == 2
    torch.manual_seed(12345)  # whatever happened in between, the checkpoint restores every stream
    second = train.run(spec, data=tiny_data, progress=False)
    assert second["status"] == "ok" and second["resumed_from_epoch"] == 2
    assert second["run_id"] == whole["run_id"] == first["run_id"]
    # to the bit: valid metrics and mean losses of every epoch, the best epoch and its test metrics
    assert [e["valid"] for e in second["epochs"]] == [e["valid"] for e in whole["epochs"]]
    assert [e["losses"] for e in second["epochs"]] == [e["losses"] for e in whole["epochs"]]
    assert (second["best_epoch"], second["test"]) == (whole["best_epoch"], whole["test"])
    assert not path.exists()  # a finished run keeps its record, not its checkpoint


def test_a_checkpoint_of_another_spec_is_refused(tiny_data, tmp_path):
    a = tiny_spec("sasrec", epochs=2, checkpoint_dir=str(tmp_path))
    rec = train.run(a, data=tiny_data, progress=False, stop_when=stop_after(1))
    b = tiny_spec("sasrec", epochs=3, checkpoint_dir=str(tmp_path))
    other_id = train.run_identity(b)[0]
    target = checkpoints.checkpoint_path(tmp_path, other_id)
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoints.checkpoint_path(tmp_path, rec["run_id"]), target)
    with pytest.raises(BenchError, match=f"belongs to run {rec['run_id']}, not to this spec's run {other_id}"):
        train.run(b, data=tiny_data, progress=False)
    target.write_bytes(b"garbage")
    with pytest.raises(BenchError, match="cannot read checkpoint"):
        train.run(b, data=tiny_data, progress=False)
