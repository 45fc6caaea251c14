"""Full-ranking evaluation: hand-computed cases, the history-set-to-zero quirk, the published checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.data import SequenceData, Sequences
from bench.core.errors import BenchError
from bench.core.evaluate import METRICS, evaluate, rank_metrics
from bench.reporting.published import (
    PUBLISHED_CHECKPOINTS,
    RELEASED_ENCODER_CHECKPOINTS,
    RELEASED_ENCODER_TAGS,
)
from tests.conftest import REFERENCE_CHECKPOINT, run_cli

PUBLISHED_ROW = {"HR@5": 0.0500, "NDCG@5": 0.0326, "HR@10": 0.0744, "NDCG@10": 0.0403, "HR@20": 0.1058, "NDCG@20": 0.0483}


class FixedScores(torch.nn.Module):
    """A 'method' whose scores are given: row u of `table` for the user whose last input item is u."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def score_items(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.table[inputs[:, -1]].clone()

    def item_table(self) -> None:  # the contract: a method with its own scoring has no item table
        return None

    def cuts_leading_padding(self) -> bool:  # it reads the last column only
        return True


def _from_checkpoint(method: str, beauty: SequenceData):
    """`method` with its Beauty paper config and the published ICLRec checkpoint's weights (an ELCRec keeps
    its own cluster centers, which the checkpoint lacks)."""
    from bench.core import configs
    from methods import DatasetInfo

    state = torch.load(REFERENCE_CHECKPOINT, map_location="cpu")
    cls = configs.method_class(method)
    values = {**configs.paper_values(method, "Beauty"), **cls.config_from_checkpoint(state)}
    model = cls(configs.build_config(cls.Config, values, "test"), DatasetInfo("Beauty", beauty.item_size, beauty.num_users))
    model.load_state_dict(state, strict=False)
    return model


def _one_user(history: list[int], answer: int, item_size: int = 30) -> SequenceData:
    items = np.array(history + [answer])
    return SequenceData("hand", Sequences(items, np.array([0, len(items)])), item_size=item_size, max_len=5)


def test_rank_metrics_by_hand():
    ranks = torch.tensor([0, 7, 25])  # rank 0, rank 7, miss
    got = dict(zip(METRICS, rank_metrics(ranks).tolist()))
    assert got["HR@5"] == 1 and got["HR@10"] == 2 and got["HR@20"] == 2
    assert got["NDCG@5"] == pytest.approx(1.0)
    assert got["NDCG@10"] == pytest.approx(1.0 + 1 / math.log2(9))
    assert got["NDCG@20"] == pytest.approx(1.0 + 1 / math.log2(9))


def test_history_scores_are_set_to_zero_not_minus_inf():
    # test input s[:-1] = [3, 4, 5]; history (masked) = {3, 4, 5}; answer 9.
    data = _one_user([3, 4, 5], 9)
    scores = torch.full((30, 30), -5.0)
    row = scores[5]
    row[:] = -1.0 - torch.arange(30) * 0.01  # all negative, decreasing with id
    row[4] = 10.0  # a history item with the best score: masked to 0, still above every negative score
    row[9] = -0.5  # the answer: best non-history score... but below the masked history items' 0
    method = FixedScores(scores)
    ref = evaluate(method, data, "test", "reference")
    # Ranking under the reference quirk: 3, 4, 5 (score 0) first, then the answer 9: rank 3.
    assert ref["HR@5"] == 1.0 and ref["NDCG@5"] == pytest.approx(1 / math.log2(5))
    strict = evaluate(method, data, "test", "strict")
    assert strict["NDCG@5"] == pytest.approx(1.0)  # history gone: the answer is first


def test_reference_keeps_padding_and_mask_ids_rankable():
    data = _one_user([3, 4, 5], 9)
    scores = torch.full((30, 30), -1.0)
    scores[5, 0] = 5.0  # padding id
    scores[5, 29] = 4.0  # the mask id (item_size - 1)
    scores[5, 9] = 3.0
    method = FixedScores(scores)
    assert evaluate(method, data, "test", "reference")["NDCG@5"] == pytest.approx(1 / math.log2(4))
    assert evaluate(method, data, "test", "strict")["NDCG@5"] == pytest.approx(1.0)


def test_valid_history_excludes_the_valid_answer():
    # s = [3, 4, 5, 9, 11]: valid input [3, 4, 5], answer 9; valid history {3, 4, 5}; test history adds 9.
    items = np.array([3, 4, 5, 9, 11])
    data = SequenceData("hand", Sequences(items, np.array([0, 5])), item_size=30, max_len=5)
    scores = torch.full((30, 30), -1.0)
    scores[5, 9] = 2.0
    scores[9, 9] = 2.0  # in test, 9 is history: masked
    scores[9, 11] = 1.0
    method = FixedScores(scores)
    assert evaluate(method, data, "valid")["NDCG@5"] == pytest.approx(1.0)
    test = evaluate(method, data, "test", "strict")
    assert test["NDCG@5"] == pytest.approx(1.0)


def test_an_answer_in_its_history_ranks_behind_the_tied_history_ids():
    # Reference protocol: the answer 4 is also in the history {3, 4, 5}, so it scores 0 like 3 and 5.
    data = _one_user([3, 4, 5], 4)
    scores = torch.full((30, 30), -1.0)
    scores[5, 7] = 2.0  # one id ahead of every 0 (rows are picked by the last input item, 5)
    method = FixedScores(scores)
    # Ahead of the answer: id 7, then the two tied history ids 3 and 5: rank 3.
    assert evaluate(method, data, "test")["NDCG@5"] == pytest.approx(1 / math.log2(5))


class DotScores(torch.nn.Module):
    """Wraps a method so that evaluation sees only `score_items` (the whole score matrix path)."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def score_items(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.method.score_items(inputs)

    def item_table(self) -> None:
        return None

    def cuts_leading_padding(self) -> bool:
        return self.method.cuts_leading_padding()


@pytest.mark.parametrize("protocol, first_chunk", [("reference", 32), ("strict", 32), ("reference", 10**9)])
def test_item_scan_gives_the_whole_matrix_metrics(beauty_sample, monkeypatch, protocol, first_chunk):
    # The chunked scan (users leave once 20 ids are ahead) must give exactly the ranks of the whole score
    # matrix. Small chunks make most users leave early, so the early exit is exercised on many users; one
    # chunk of all items is what a GPU runs.
    from bench.core import evaluate as evaluate_module

    beauty = beauty_sample  # 4,000 real users: the property does not need all 22,363
    method = _from_checkpoint("iclrec", beauty)  # realistic ranks: hits and long tails
    assert method.item_table() is not None
    monkeypatch.setattr(evaluate_module, "FIRST_CHUNK", first_chunk)
    for split in ("valid", "test"):
        scanned = evaluate(method, beauty, split, protocol)
        whole = evaluate(DotScores(method), beauty, split, protocol)
        assert scanned["HR@20"] > 0.05
        for key in METRICS:
            assert scanned[key] == pytest.approx(whole[key], abs=1e-9), (split, key)


def test_a_method_with_its_own_scoring_is_ranked_by_its_scores(small_data):
    from methods import REGISTRY
    from tests.test_methods import build

    class Reversed(REGISTRY["sasrec"]):
        def score_items(self, inputs):
            return -super().score_items(inputs)

    plain = build("sasrec", small_data)
    reversed_scores = Reversed(plain.config, plain.info)
    reversed_scores.load_state_dict(plain.state_dict())
    assert plain.item_table() is not None and reversed_scores.item_table() is None  # the contract says so
    # Same weights, opposite scores: the evaluation must follow the override, not the item table.
    whole = evaluate(DotScores(reversed_scores), small_data, "valid")
    assert evaluate(reversed_scores, small_data, "valid") == whole
    assert whole != evaluate(plain, small_data, "valid")


def test_nan_scores_are_never_a_hit(small_data):
    assert all(v == 0.0 for v in evaluate(FixedScores(torch.full((200, 200), float("nan"))), small_data).values())


def test_unknown_protocol(small_data):
    with pytest.raises(BenchError, match="unknown evaluation protocol"):
        evaluate(FixedScores(torch.zeros(200, 200)), small_data, "test", "lenient")


def test_published_checkpoint_gives_published_scores(capsys):
    code, out, err = run_cli(["evaluate", "--method", "iclrec", "--dataset", "Beauty",
                              "--checkpoint", REFERENCE_CHECKPOINT, "--json"], capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads(out.strip().splitlines()[-1])
    assert set(metrics) == set(PUBLISHED_ROW)
    for key, value in PUBLISHED_ROW.items():
        assert round(metrics[key], 4) == value, key


def _released_row(stem: str) -> tuple[str, str, dict | None]:
    """(method, dataset, recorded row) of a released file's name: `<Method>-<dataset>-<seed>` (ICLRec, ELCRec)
    or `<Method>-<SAS|GRU>-<dataset>-<idx>` (ICSRec, one model per encoder)."""
    method, *middle, _ = stem.split("-")
    method = method.lower()
    if middle and middle[0] in RELEASED_ENCODER_TAGS:
        dataset = "-".join(middle[1:])
        return method, dataset, RELEASED_ENCODER_CHECKPOINTS.get((method, RELEASED_ENCODER_TAGS[middle[0]], dataset))
    dataset = "-".join(middle)
    return method, dataset, PUBLISHED_CHECKPOINTS.get(dataset, {}).get(method)


def _published_checkpoints() -> list:
    """Released checkpoints in the folder $BENCH_PUBLISHED_CHECKPOINTS (e.g. the `src/output/` folder of the
    ELCRec or ICSRec repository) whose row bench/reporting/published.py records. Nothing when the variable
    is unset: these files are not part of ../shared."""
    folder = os.environ.get("BENCH_PUBLISHED_CHECKPOINTS")
    if not folder:
        return [pytest.param(None, None, None, None, marks=pytest.mark.skip(reason="BENCH_PUBLISHED_CHECKPOINTS unset"))]
    out = []
    for path in sorted(Path(folder).glob("*-*-*.pt")):
        method, dataset, row = _released_row(path.stem)
        if row is not None and path.stat().st_size > 0:
            out.append(pytest.param(method, dataset, path, row, id=path.stem))
    assert out, f"no published checkpoint with a recorded row in {folder}"
    return out


@pytest.mark.parametrize("method, dataset, path, row", _published_checkpoints())
def test_released_checkpoints_give_their_published_rows(method, dataset, path, row, capsys):
    # Every released checkpoint whose row published.py records, not only the ones ../shared carries; the
    # encoder is read from the file's keys, never from its name.
    code, out, err = run_cli(["evaluate", "--method", method, "--dataset", dataset, "--checkpoint", str(path),
                              "--json"], capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads(out.strip().splitlines()[-1])
    assert {key: round(metrics[key], 4) for key in row} == row


@pytest.mark.parametrize("method", ["sasrec", "cl4srec", "elcrec"])
def test_checkpoint_loads_into_every_method(beauty_sample, method):
    # Every method shares the encoder: the published checkpoint ranks exactly as it does in ICLRec (whose
    # published scores test_published_checkpoint_gives_published_scores checks on all users).
    got = evaluate(_from_checkpoint(method, beauty_sample), beauty_sample, "test")
    assert got == evaluate(_from_checkpoint("iclrec", beauty_sample), beauty_sample, "test")
    assert got["HR@20"] > 0.05


def test_a_checkpoint_saved_from_a_data_parallel_model_loads(tmp_path):
    from bench.core.weights import load_checkpoint

    plain = load_checkpoint(str(REFERENCE_CHECKPOINT))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({f"module.{k}": v for k, v in plain.items()}, wrapped)
    got = load_checkpoint(str(wrapped))
    assert list(got) == list(plain) and all(torch.equal(got[k], plain[k]) for k in plain)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(REFERENCE_CHECKPOINT.read_bytes()[:5000])
    code, _, err = run_cli(["evaluate", "--method", "iclrec", "--dataset", "Beauty", "--checkpoint", bad], capsys)
    assert code == 2
    assert err.startswith(f"error: cannot read checkpoint {bad}") and "Traceback" not in err


def test_a_file_of_neither_torch_format_says_so(tmp_path, capsys):
    """A text file makes torch fail deep in its parser ("list index out of range"): the error says instead
    what the file is not."""
    notes = tmp_path / "notes.pt"
    notes.write_text("user item\n1 2\n3 4\n")
    code, _, err = run_cli(["evaluate", "--method", "iclrec", "--dataset", "Beauty", "--checkpoint", notes], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot read checkpoint {notes}: not a file of tensors: torch.save writes a zip")


def test_per_user_ranks_give_the_metrics(small_data):
    """The stored per-user ranks (clipped at 20, user order) reproduce every metric of the evaluation."""
    from bench.core.evaluate import RANK_CLIP, rank_gains
    from tests.test_methods import build

    method = build("sasrec", small_data)
    metrics, ranks = evaluate(method, small_data, "valid", return_ranks=True)
    assert ranks.dtype == np.uint8 and ranks.shape == (small_data.num_users,) and ranks.max() <= RANK_CLIP
    assert metrics == evaluate(method, small_data, "valid")
    for name, value in metrics.items():
        assert rank_gains(ranks, name).mean() == pytest.approx(value, abs=1e-12)
