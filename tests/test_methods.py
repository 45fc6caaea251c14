"""The method interface and the methods: contract, E-step, learnable centers, configs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.core import configs
from bench.core.errors import BenchError
from bench.core.evaluate import evaluate
from methods import REGISTRY, DatasetInfo
from tests.conftest import REPO, run_cli


def build(name: str, data, **overrides):
    cls = REGISTRY[name]
    values = {**configs.paper_values(name, "Beauty"), "num_intents": 16, **overrides}
    values = {k: v for k, v in values.items() if k in configs.field_types(cls.Config)}
    torch.manual_seed(0)
    return cls(configs.build_config(cls.Config, values, "test"), DatasetInfo("synthetic", data.item_size, data.num_users))


def batches(method, data, batch_size: int, generator: torch.Generator):
    """An epoch of the batches `method` trains on (its kind of examples, its views or positives)."""
    return data.train_batches(batch_size, generator, method.view_maker, examples=method.training_examples,
                              same_target=method.positive_maker)


def train_epochs(method, data, epochs: int, lr: float = 1e-3) -> None:
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        method.train()
        method.on_epoch_start(epoch, data)
        for batch in batches(method, data, 64, g):
            terms = method.training_step(batch)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_learns_in_two_epochs(name, small_data, one_torch_thread):
    # One torch thread: steps this small lose more to thread hand-offs than they gain (on a loaded machine, a
    # step on 2 threads took 6x its time on one)
    method = build(name, small_data)
    untrained = evaluate(method, small_data, "valid")["NDCG@20"]
    train_epochs(method, small_data, 2)
    trained = evaluate(method, small_data, "valid")["NDCG@20"]
    assert trained > untrained + 0.01, (untrained, trained)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_training_step_contract(name, small_data):
    method = build(name, small_data)
    method.on_epoch_start(0, small_data)
    batch = next(batches(method, small_data, 32, torch.Generator().manual_seed(0)))
    terms = method.training_step(batch)
    assert "loss" in terms and "rec" in terms
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    expected = {"sasrec": {"rec"}, "cl4srec": {"rec", "instance"}, "iclrec": {"rec", "instance", "intent"},
                "elcrec": {"rec", "instance", "cluster", "intent"}, "icsrec": {"rec", "coarse", "fine"},
                "duorec": {"rec", "contrastive"}}[name]
    assert set(terms) - {"loss"} == expected
    assert method.score_items(batch.input_ids).shape == (32, small_data.item_size)


def test_iclrec_estep_every_epoch_with_unit_prototypes(small_data, monkeypatch):
    import methods.intent as intent  # the intent family's E-step calls the k-means it imported

    calls = []
    real = intent.kmeans
    monkeypatch.setattr(intent, "kmeans", lambda *a, **k: calls.append(1) or real(*a, **k))
    method = build("iclrec", small_data)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):  # as the loop calls it: before every epoch, with training steps in between
        method.on_epoch_start(epoch, small_data)
        batch = next(batches(method, small_data, 64, g))
        optimizer.zero_grad()
        method.training_step(batch)["loss"].backward()
        optimizer.step()
    assert len(calls) == 3
    norms = method.prototypes.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert not torch.allclose(method.centroids.norm(dim=1), torch.ones(16), atol=1e-3)  # raw centroids kept


def test_elcrec_kmeans_only_once_and_centers_learn(small_data, monkeypatch):
    import methods.intent as intent  # the intent family's E-step calls the k-means it imported

    calls = []
    real = intent.kmeans
    monkeypatch.setattr(intent, "kmeans", lambda *a, **k: calls.append(1) or real(*a, **k))
    method = build("elcrec", small_data)
    method.on_epoch_start(0, small_data)
    before = method.cluster_centers.detach().clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(16), atol=1e-5)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for batch in list(batches(method, small_data, 64, g))[:3]:
        terms = method.training_step(batch)
        # projected in place before the clustering term: unit norm when the losses were computed
        assert torch.allclose(method.cluster_centers.norm(dim=1), torch.ones(16), atol=1e-5)
        optimizer.zero_grad()
        terms["loss"].backward()
        assert method.cluster_centers.grad is not None and method.cluster_centers.grad.abs().sum() > 0
        optimizer.step()
    method.on_epoch_start(1, small_data)
    assert len(calls) == 1
    assert not torch.allclose(method.cluster_centers.detach(), before)


@pytest.mark.parametrize("mode, width", [("shift", 64), ("concat", 128)])
def test_elcrec_prototype_shapes(small_data, mode, width):
    method = build("elcrec", small_data, prototype=mode)
    method.on_epoch_start(0, small_data)
    encoded = torch.randn(6, 50, 64)
    out = method.with_prototypes(encoded)
    assert out.shape == (6, 50, width)
    centers = method.cluster_centers.detach()
    nearest = torch.cdist(encoded.flatten(0, 1), centers).argmin(dim=1)
    gathered = out[..., :64] - encoded if mode == "shift" else out[..., 64:]
    assert torch.allclose(gathered.flatten(0, 1), centers[nearest], atol=1e-5)


def test_paper_configs_are_picked_per_dataset():
    cfg, label = configs.resolve_config("elcrec", "Sports_and_Outdoors")
    assert (cfg.num_layers, cfg.num_intents, cfg.trade_off, cfg.prototype, label) == (2, 512, 1.0, "concat", "paper")
    cfg, _ = configs.resolve_config("elcrec", "Beauty")
    assert (cfg.num_layers, cfg.num_intents, cfg.trade_off, cfg.prototype) == (1, 256, 10.0, "shift")
    cfg, _ = configs.resolve_config("iclrec", "Toys_and_Games")
    assert (cfg.num_layers, cfg.num_intents) == (3, 256)
    cfg, label = configs.resolve_config("iclrec", "Yelp", overrides={"lr": "0.002", "num_intents": "64"})
    assert (cfg.lr, cfg.num_intents, label) == (0.002, 64, "custom")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": "0.1"}, "unknown key(s) learning_rate"),
        ({"num_layers": "two"}, "num_layers='two' is not a valid int"),
        ({"hidden_dropout": "1.5"}, "hidden_dropout must be in [0, 1)"),
        ({"prototype": "sum"}, "prototype must be shift or concat"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(BenchError) as err:
        configs.resolve_config("elcrec", "Beauty", overrides=overrides)
    assert message in str(err.value)


def test_python_m_bench_says_a_user_error_in_one_line_and_exits_2_without_traceback():
    # The real entry point, end to end: `python -m bench` (bench/__main__.py) turns main's 2 into the exit status,
    # and the interpreter prints nothing more. The other CLI tests call bench.cli.main in the test process.
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--method", "gru4rec", "--dataset", "Beauty"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: unknown method 'gru4rec'") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["run", "--method", "gru4rec", "--dataset", "Beauty"], "error: unknown method 'gru4rec'"),
    (["run", "--method", "sasrec", "--dataset", "MovieLens"], "error: unknown dataset 'MovieLens'"),
    (["run", "--method", "sasrec", "--dataset", "Beauty", "--set", "lr=fast"], "error: --set: lr='fast'"),
    (["run", "--methods", "sasrec", "--datasets", "Beauty"], "error: --methods belongs to the grid: add --all"),
    (["run", "--method", "sasrec"], "error: run needs --method and --dataset (or --all for the grid)"),
])
def test_cli_user_errors_exit_2_without_traceback(capsys, args, message):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.startswith(message), err
    assert "Traceback" not in err


def test_an_in_process_command_leaves_no_process_state_behind(tmp_path, capsys):
    # `run` installs a SIGTERM handler and points the tuned configs at its --results (bench/cli.py); run_cli
    # (tests/conftest.py) puts both back, so that no later test sees them.
    import signal

    handler, tuned = signal.getsignal(signal.SIGTERM), configs.tuned_dir()
    code, _, _ = run_cli(["run", "--method", "gru4rec", "--dataset", "Beauty", "--results", tmp_path], capsys)
    assert code == 2
    assert signal.getsignal(signal.SIGTERM) is handler and configs.tuned_dir() == tuned != tmp_path / "tuned"


@pytest.mark.usefixtures("one_torch_thread")
def test_run_json_record_and_elcrec_checkpoint_roundtrip(tmp_path, capsys):
    ckpt = tmp_path / "elcrec.pt"
    code, out, err = run_cli(["run", "--method", "elcrec", "--dataset", "Beauty", "--epochs", "1", "--max-users", "300",
                              "--set", "num_intents=32", "--json", "--save-checkpoint", ckpt], capsys)
    assert code == 0, err[-2000:]
    record = json.loads(out.strip().splitlines()[-1])
    for key in ("method", "dataset", "seed", "status", "best_epoch", "test", "epochs", "peak_memory_bytes",
                "device", "config"):
        assert key in record
    assert record["status"] == "ok" and record["config"]["num_intents"] == 32 and record["config"]["num_layers"] == 1
    epoch = record["epochs"][0]
    assert {"epoch", "valid", "estep_s", "train_s", "eval_s", "losses"} <= set(epoch)
    assert {"rec", "instance", "cluster", "intent", "loss"} == set(epoch["losses"])
    assert epoch["estep_s"] > 0 and record["env"]["kmeans_backend"] == "faiss"
    state = torch.load(ckpt)
    assert state["cluster_centers"].shape == (32, 64)
    code, out, err = run_cli(["evaluate", "--method", "elcrec", "--dataset", "Beauty", "--checkpoint", ckpt, "--json"],
                             capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads(out.strip().splitlines()[-1])
    assert set(metrics) == set(record["test"]) and all(0 <= v <= 1 for v in metrics.values())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_trains_with_every_rec_loss_its_examples_allow(name, small_data):
    prefixes = REGISTRY[name].training_examples == "prefixes"
    assert REGISTRY[name].Config().rec_loss == ("ce_last" if prefixes else "bce")  # the published loss
    for rec_loss in ("bce", "ce", "ce_last"):
        if rec_loss == "ce_last" and not prefixes:
            with pytest.raises(BenchError, match="rec_loss ce_last needs prefix examples"):
                configs.resolve_config(name, "Beauty", overrides={"rec_loss": rec_loss})
            with pytest.raises(ValueError, match="needs prefix examples"):
                build(name, small_data, rec_loss=rec_loss)
            continue
        method = build(name, small_data, rec_loss=rec_loss)
        method.on_epoch_start(0, small_data)
        batch = next(batches(method, small_data, 32, torch.Generator().manual_seed(0)))
        terms = method.training_step(batch)
        terms["loss"].backward()
        assert torch.isfinite(terms["rec"]) and method.item_embeddings.weight.grad.abs().sum() > 0, rec_loss
