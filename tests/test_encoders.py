"""The encoder as a part of every method: GRU4Rec as ICSRec publishes it, checkpoints of either layout,
every method trained on each encoder, the published GRU checkpoint's row, and the errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.core import configs, train
from bench.core.errors import BenchError
from bench.core.identity import identity_of
from methods import ENCODERS, REGISTRY, DatasetInfo
from methods.gru4rec import GRU4RecEncoder
from tests.conftest import SHARED, run_cli, synthetic_spec

# One torch thread for the in-process training: two OpenMP threads on a busy 2-core machine spin against
# each other (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRU_CHECKPOINT = SHARED / "reference" / "ICSRec-GRU-Beauty-0.pt"
SAS_CHECKPOINT = SHARED / "reference" / "ICSRec-SAS-Beauty-0.pt"
# What the published code prints for the GRU file on a CPU (../shared/reference/README.md).
GRU_ROW = {"HR@5": 0.0514, "NDCG@5": 0.0364, "HR@10": 0.0739, "NDCG@10": 0.0437, "HR@20": 0.1014, "NDCG@20": 0.0506}
TINY = {"hidden_size": 16, "batch_size": 64, "max_len": 20}
GRU_KEYS = ["item_embeddings.weight", "gru_layers.weight_ih_l0", "gru_layers.weight_hh_l0", "dense.weight", "dense.bias"]


def build(method: str, encoder: str, **values):
    cls = REGISTRY[method]
    resolved = {**configs.paper_values(method, "Beauty"), "encoder": encoder, "num_layers": 2, **values}
    resolved = {k: v for k, v in resolved.items() if k in configs.field_types(cls.Config)}
    if "num_intents" in resolved:
        resolved["num_intents"] = 8
    torch.manual_seed(0)
    return cls(configs.build_config(cls.Config, resolved, "test"), DatasetInfo("synthetic", 40, 30))


def gru_by_hand(encoder: GRU4RecEncoder, ids: torch.Tensor) -> torch.Tensor:
    """The published GRU4Rec written out step by step from the GRU equations (PyTorch's gate order r, z, n)."""
    x = encoder.item_embeddings.weight[ids]  # [B, L, H]
    for layer in range(encoder.gru_layers.num_layers):
        w_ih = getattr(encoder.gru_layers, f"weight_ih_l{layer}")
        w_hh = getattr(encoder.gru_layers, f"weight_hh_l{layer}")
        h = x.new_zeros(x.shape[0], w_hh.shape[1])
        outputs = []
        for t in range(x.shape[1]):
            ri, zi, ni = (x[:, t] @ w_ih.T).chunk(3, dim=1)
            rh, zh, nh = (h @ w_hh.T).chunk(3, dim=1)
            r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
            n = torch.tanh(ni + r * nh)
            h = (1 - z) * n + z * h
            outputs.append(h)
        x = torch.stack(outputs, dim=1)
    return F.linear(x, encoder.dense.weight, encoder.dense.bias)


@pytest.mark.parametrize("layers", [2, 3])
def test_gru4rec_is_the_published_encoder(layers):
    method = build("icsrec", "gru4rec", num_layers=layers, hidden_size=16).eval()
    state = method.state_dict()
    # The published layout: no biases in the GRU, hidden 2H, num_layers - 1 GRU layers, no position or norm.
    assert [k for k in state if k not in ("centroids", "prototypes")][:3] == GRU_KEYS[:3]
    assert set(state) == set(GRU_KEYS) | {f"gru_layers.weight_{w}_l{i}" for w in ("ih", "hh") for i in range(layers - 1)}
    assert state["gru_layers.weight_hh_l0"].shape == (3 * 32, 32) and state["dense.weight"].shape == (16, 32)
    assert not state["item_embeddings.weight"][0].any()  # PyTorch's default init: padding row 0, others N(0, 1)
    ids = torch.tensor([[0, 0, 3, 7, 1], [5, 2, 9, 9, 4]])
    expected = gru_by_hand(method, ids)
    assert torch.allclose(method(ids), expected, atol=1e-5)
    assert torch.allclose(method.encode_last(ids), expected[:, -1], atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_a_cut_gru_input_gives_the_outputs_of_its_full_width(training):
    method = build("sasrec", "gru4rec", hidden_size=16, max_len=5, hidden_dropout=0.0).train(training)
    with torch.no_grad():
        method.item_embeddings.weight[0] = 1.0  # as in the published file, whose padding row was trained
    ids = torch.tensor([[0, 0, 0, 3, 7], [0, 0, 2, 9, 4]])
    full = method(ids)
    assert method.cuts_leading_padding()
    assert torch.allclose(method(ids[:, 2:]), full[:, 2:], atol=1e-6)
    assert torch.allclose(method.encode_last(ids[:, 2:]), full[:, -1], atol=1e-6)
    # The padding does move the state: a GRU started from zero on the cut input gives other numbers.
    from_zero = method.dense(method.gru_layers(method.item_embeddings(ids[:, 2:]))[0][:, -1])
    assert not torch.allclose(from_zero, full[:, -1], atol=1e-3)


@pytest.mark.parametrize("encoder, layers, hidden", [("gru4rec", 3, 24), ("gru4rec", 2, 16), ("sasrec", 2, 16)])
def test_any_checkpoint_tells_its_encoder_and_sizes(encoder, layers, hidden):
    # Nothing keyed to one file: the encoder from the keys, the sizes and layers from the shapes.
    saved = build("iclrec", encoder, num_layers=layers, hidden_size=hidden, num_heads=2).state_dict()
    fixed = REGISTRY["iclrec"].config_from_checkpoint(saved)
    assert fixed["encoder"] == encoder and fixed["num_layers"] == layers and fixed["hidden_size"] == hidden
    loaded = build("iclrec", fixed.pop("encoder"), **fixed)
    assert type(loaded).__name__ == "ICLRec" and isinstance(loaded, ENCODERS[encoder])
    loaded.load_state_dict(saved)  # strict: the same keys, as they are


def test_a_method_file_never_names_an_encoder():
    # The encoder is chosen by config; a method is written once for all of them.
    import inspect

    for cls in REGISTRY.values():
        source = inspect.getsource(inspect.getmodule(cls))
        assert "gru" not in source.lower() and "SASRecEncoder" not in source, cls.name


@pytest.fixture(scope="module")
def micro_data():
    """80 synthetic users (about 750 prefix examples), max_len 20: a whole run in seconds."""
    from bench.core.data import SequenceData
    from tests.conftest import synthetic_sequences

    seqs = synthetic_sequences(num_users=80, num_items=60)
    return SequenceData("synthetic", seqs, item_size=int(seqs.items.max()) + 2, max_len=20)


@pytest.mark.parametrize("method", list(REGISTRY))
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_every_method_trains_an_epoch_on_every_encoder(method, encoder, micro_data):
    # The whole run path (train.run: E-step, training, validation, test, record) for one epoch.
    overrides = {**TINY, "encoder": encoder, "num_layers": 2, **({"num_intents": 8} if "num_intents" in
                 configs.field_types(REGISTRY[method].Config) else {})}
    record = train.run(synthetic_spec(method, epochs=1, patience=1, overrides=overrides), data=micro_data, progress=False)
    assert record["status"] == "ok", record.get("error")
    assert record["config"]["encoder"] == encoder and record["epochs"][0]["train_s"] > 0
    assert all(0 <= v <= 1 for v in record["test"].values())


def test_the_default_encoder_keeps_run_ids_and_another_changes_them():
    sasrec = synthetic_spec("icsrec", epochs=1, patience=1, overrides={"num_layers": 2})
    explicit = synthetic_spec("icsrec", epochs=1, patience=1, overrides={"num_layers": 2, "encoder": "sasrec"})
    gru = synthetic_spec("icsrec", epochs=1, patience=1, overrides={"num_layers": 2, "encoder": "gru4rec"})
    without_key = {k: v for k, v in sasrec.config.to_dict().items() if k != "encoder"}  # a config from before the option
    assert identity_of(sasrec, sasrec.config) == identity_of(explicit, explicit.config) == identity_of(sasrec, without_key)
    assert identity_of(gru, gru.config) != identity_of(sasrec, sasrec.config)


@pytest.mark.parametrize("overrides, message", [
    ({"encoder": "lstm"}, "unknown encoder 'lstm'; known: sasrec, gru4rec"),
    ({"encoder": "gru4rec", "num_layers": "1"}, "encoder gru4rec needs num_layers >= 2"),
])
def test_bad_encoder_configs_are_one_line_errors(overrides, message):
    with pytest.raises(BenchError, match=message):
        configs.resolve_config("iclrec", "Beauty", overrides=overrides)


@pytest.mark.skipif(not GRU_CHECKPOINT.is_file(), reason="the published ICSRec GRU checkpoint is not in ../shared")
def test_the_published_gru_checkpoint_gives_its_row(capsys):
    code, out, err = run_cli(["evaluate", "--method", "icsrec", "--dataset", "Beauty", "--checkpoint", GRU_CHECKPOINT,
                              "--json"], capsys)
    assert code == 0, err[-2000:]
    assert {k: round(v, 4) for k, v in json.loads(out.strip().splitlines()[-1]).items()} == GRU_ROW


@pytest.mark.skipif(not (GRU_CHECKPOINT.is_file() and SAS_CHECKPOINT.is_file()), reason="no ICSRec checkpoints")
@pytest.mark.parametrize("path, given, message", [
    (SAS_CHECKPOINT, "encoder=gru4rec", "is in the layout of encoder sasrec, not the encoder=gru4rec given"),
    (GRU_CHECKPOINT, "encoder=sasrec", "is in the layout of encoder gru4rec, not the encoder=sasrec given"),
    (GRU_CHECKPOINT, "encoder=lstm", "--set: unknown encoder 'lstm'; known: sasrec, gru4rec"),
    (GRU_CHECKPOINT, "num_layers=3", "has num_layers = 2, not the num_layers=3 given"),
])
def test_a_checkpoint_and_an_encoder_that_disagree_are_one_line_errors(capsys, path, given, message):
    code, _, err = run_cli(["evaluate", "--method", "icsrec", "--dataset", "Beauty", "--checkpoint", path,
                            "--set", given], capsys)
    assert code == 2 and err.strip().startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_tables_keep_encoders_apart_and_show_published_rows_beside_sasrec_only(tmp_path):
    import numpy as np
    import pandas as pd

    from bench.core.records import read_record, record_path, write_record_atomic
    from bench.reporting.leaderboard import write_leaderboard
    from bench.reporting.tables import _published
    from tests.test_leaderboard import FIXTURES, QUICK, _row

    record = read_record(next((FIXTURES / "runs").glob("iclrec-Beauty-s1-quick-*.json")))
    assert "encoder" not in record["config"]  # a record from before the option: on SASRec
    write_record_atomic(record_path(tmp_path, record), record)
    gru = {**record, "run_id": "bbbbbbbbbbbb", "config": {**record["config"], "encoder": "gru4rec"},
           "test": {k: v / 2 for k, v in record["test"].items()}}
    write_record_atomic(record_path(tmp_path, gru), gru)
    write_leaderboard(tmp_path, tmp_path / "out")
    row = _row((tmp_path / "out" / "leaderboard.md").read_text(), QUICK, "dataset | metric", ("Beauty", "NDCG@20"))
    # Two columns of one seed each, never one column averaged over both encoders.
    assert row["ICLRec"] == "0.0480 (n=1)" and row["ICLRec (on gru4rec)"] == "0.0240 (n=1)"
    frame = pd.DataFrame({"profile": "paper", "dataset": "Beauty", "method": "iclrec", "metric": "NDCG@20",
                          "rec_loss": "bce", "encoder": ["sasrec", "gru4rec"]})
    values, _ = _published(frame)
    assert not np.isnan(values[0]) and np.isnan(values[1])


@pytest.mark.parametrize("overrides, source", [
    ({"rec_loss": "ce"}, "paper"),  # the loss-matched baseline: the paper's SASRec, another loss
    ({"encoder": "gru4rec", "num_layers": "2"}, "paper"),  # SASRec's paper config has 2 layers already
    ({"rec_loss": "ce", "lr": "0.01"}, "custom"),  # a hyperparameter changed too
])
def test_a_config_set_only_in_loss_or_encoder_keeps_its_paper_source_in_the_tables(overrides, source):
    config, recorded = configs.resolve_config("sasrec", "Beauty", overrides=overrides)
    assert recorded == "custom"  # the record says --set was used
    assert configs.hyperparameter_source("sasrec", "Beauty", recorded, config.to_dict()) == source
    # A key a record from before its option lacks stands at the paper's value.
    older = {k: v for k, v in config.to_dict().items() if k != "weight_decay"}
    assert configs.hyperparameter_source("sasrec", "Beauty", recorded, older) == source
