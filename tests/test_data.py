"""Datasets: statistics, parsing errors, download from a mirror and over HTTP, the split, negatives."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import urllib.error

import numpy as np
import pytest
import torch

from bench.core import data
from bench.core.data import SequenceData, Sequences, parse_sequences
from bench.core.errors import BenchError
from methods.augment import augment
from tests.conftest import SHARED, run_cli

# docs/methods.md, "Data": the statistics, recounted from the files.
SPEC_STATS = {
    "Beauty": (22363, 12101, 198502, 8.88, 204),
    "Sports_and_Outdoors": (35598, 18357, 296337, 8.32, 296),
    "Toys_and_Games": (19412, 11924, 167597, 8.63, 550),
    "Yelp": (30431, 20033, 316354, 10.40, 350),
}


def test_data_stats_cli_matches_spec(capsys):
    code, out, err = run_cli(["data", "stats", "--json"], capsys)
    assert code == 0, err
    rows = {r["dataset"]: r for r in json.loads(out)}
    assert set(rows) == set(SPEC_STATS)
    for name, (users, items, interactions, avg, longest) in SPEC_STATS.items():
        r = rows[name]
        assert (r["users"], r["items"], r["interactions"], r["longest"]) == (users, items, interactions, longest)
        assert r["avg_length"] == pytest.approx(avg, abs=0.005)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "empty"),
        (b"1 2 3 4\n2 5 x 7\n", ":2: 'x' is not an integer"),
        (b"1 2 3 4\n2 5 0 7\n", ":2: item id 0 < 1"),
        (b"1 2 3 4\n2 5 -3 7\n", ":2: item id -3 < 1"),
        (b"1 2 3 4\n2 5 6\n", ":2: user 2 has 2 item(s)"),
        (b"1 2 3 4\n2\n", ":2: truncated line"),
        (b"1 2 3 4\n\n3 4 5 6\n", ":2: empty line"),
        (b"1 2 3 4\n2 5 6 7", "truncated"),
        (b"1 2 3 4\n2 5 6 7.5\n", ":2: '7.5' is not an integer"),
    ],
)
def test_parse_errors_name_file_line_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(BenchError) as err:
        parse_sequences(path)
    message = str(err.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_parse_good_file(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_bytes(b"1 5 6 7\n2 8 9 10 11\n")
    seqs = parse_sequences(path)
    assert seqs.items.tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert seqs.offsets.tolist() == [0, 3, 7]


def _env_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_DATA_DIR", str(cache))
    return cache


def test_download_from_mirror_directory(monkeypatch, tmp_path):
    cache = _env_cache(monkeypatch, tmp_path)
    path = data.download("Beauty", mirror=str(SHARED / "datasets"))
    assert path == cache / "Beauty.txt"
    assert data.sha256_of(path) == data.load_manifest("Beauty").sha256
    assert sorted(p.name for p in cache.iterdir()) == ["Beauty.txt"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a directory; yields (dir, base_url)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_over_http(monkeypatch, tmp_path, http_mirror):
    cache = _env_cache(monkeypatch, tmp_path)
    root, url = http_mirror
    shutil.copyfile(SHARED / "datasets" / "Toys_and_Games.txt", root / "Toys_and_Games.txt")
    path = data.download("Toys_and_Games", mirror=url)
    assert data.sha256_of(path) == data.load_manifest("Toys_and_Games").sha256
    assert sorted(p.name for p in cache.iterdir()) == ["Toys_and_Games.txt"]


def test_checksum_mismatch_over_http_leaves_nothing(monkeypatch, tmp_path, http_mirror):
    cache = _env_cache(monkeypatch, tmp_path)
    root, url = http_mirror
    good = (SHARED / "datasets" / "Beauty.txt").read_bytes()
    (root / "Beauty.txt").write_bytes(good[:-100] + b"1 2 3\n")
    with pytest.raises(BenchError, match="checksum mismatch for Beauty.txt"):
        data.download("Beauty", mirror=url)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_checksum_mismatch_cli_exit_code_and_no_traceback(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "Yelp.txt").write_bytes(b"1 2 3 4\n")
    cache = _env_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("BENCH_DATA_MIRROR", str(mirror))  # both read at each call (bench/core/data.py)
    code, _, err = run_cli(["data", "download", "Yelp"], capsys)
    assert code == 2
    assert err.startswith("error: checksum mismatch for Yelp.txt") and "Traceback" not in err
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_without_mirror_says_what_to_do(monkeypatch, tmp_path):
    _env_cache(monkeypatch, tmp_path)
    monkeypatch.delenv("BENCH_DATA_MIRROR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(BenchError, match="BENCH_DATA_MIRROR"):
        data.download("Beauty")


def test_unknown_dataset():
    with pytest.raises(BenchError, match="unknown dataset 'Movies'.*Beauty"):
        data.load_manifest("Movies")


def _tiny():
    # user 0: 1..7 (n=7); user 1: 10 11 12 13 (n=4); user 2: 20 21 22 (n=3, empty training input)
    items = np.array([1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 20, 21, 22])
    return SequenceData("tiny", Sequences(items, np.array([0, 7, 11, 14])), item_size=30, max_len=5)


def test_split_matches_spec():
    d = _tiny()
    assert d.train_input.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 10], [0, 0, 0, 0, 0]]
    assert d.train_target.tolist() == [[0, 2, 3, 4, 5], [0, 0, 0, 0, 11], [0, 0, 0, 0, 0]]
    assert d.valid_input.tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 10, 11], [0, 0, 0, 0, 20]]
    assert d.valid_answer.tolist() == [6, 12, 21]
    assert d.test_input.tolist() == [[2, 3, 4, 5, 6], [0, 0, 10, 11, 12], [0, 0, 0, 20, 21]]
    assert d.test_answer.tolist() == [7, 13, 22]


def test_split_keeps_most_recent_50_on_real_data(beauty):
    lengths = beauty.lengths
    u = int(torch.argmax(lengths))  # the longest user (204 items)
    seq = beauty.full[u, : lengths[u]].tolist()
    assert beauty.test_input[u].tolist() == seq[:-1][-50:]
    assert beauty.valid_input[u].tolist() == seq[:-2][-50:]
    assert beauty.train_input[u].tolist() == seq[:-3][-50:]
    assert beauty.train_target[u].tolist() == seq[1:-2][-50:]
    assert beauty.item_size == 12101 + 2


def test_negatives_avoid_the_whole_sequence_and_cover_the_rest():
    d = _tiny()
    g = torch.Generator().manual_seed(0)
    users = torch.tensor([0, 1, 2]).repeat_interleave(200)
    neg = d.sample_negatives(users, 50, g)
    assert neg.min() >= 1 and neg.max() <= d.item_size - 1  # 1..item_size-1 inclusive, as the reference
    for u, own in enumerate([set(range(1, 8)), {10, 11, 12, 13}, {20, 21, 22}]):
        drawn = set(neg[users == u].flatten().tolist())
        assert not drawn & own
        assert drawn == set(range(1, d.item_size)) - own  # every allowed id appears in 10,000 draws


def test_negatives_are_uniform_over_allowed_ids():
    d = _tiny()
    g = torch.Generator().manual_seed(1)
    neg = d.sample_negatives(torch.zeros(2000, dtype=torch.long), 50, g).flatten()
    counts = torch.bincount(neg, minlength=d.item_size)[8:].float()  # user 0 owns 1..7; allowed 8..29
    expected = len(neg) / 22
    assert (counts - expected).abs().max() < 0.1 * expected


def test_batches_cover_every_user_once_per_epoch(small_data):
    g = torch.Generator().manual_seed(0)
    users = torch.cat([b.users for b in small_data.train_batches(256, g)])
    assert sorted(users.tolist()) == list(range(small_data.num_users))
    sizes = [len(b.users) for b in small_data.train_batches(256, g)]
    assert sizes == [256, 256, small_data.num_users - 512]


def test_batch_negatives_only_where_targets(small_data):
    g = torch.Generator().manual_seed(0)
    seen = []

    def two_views(seqs, lengths, max_len, generator):  # any method's augmentation: data.py calls it per batch
        seen.append((seqs.shape, lengths.shape))
        return tuple(augment(seqs, lengths, max_len, generator) for _ in range(2))

    batch = next(small_data.train_batches(64, g, two_views))
    assert torch.equal(batch.target_neg > 0, batch.target_pos > 0)
    assert len(batch.views) == 2 and all(v.shape == batch.input_ids.shape for v in batch.views)
    assert seen == [(torch.Size([64, small_data.full.shape[1]]), torch.Size([64]))]


def test_sample_users_is_deterministic():
    seqs = Sequences(np.arange(1, 101), np.arange(0, 101, 5))
    a, b = data.sample_users(seqs, 7), data.sample_users(seqs, 7)
    assert a.num_users == 7 and np.array_equal(a.items, b.items)
    for s, e in zip(a.offsets[:-1], a.offsets[1:]):  # each sampled user is one whole original user
        first = a.items[s]
        assert first % 5 == 1 and a.items[s:e].tolist() == list(range(first, first + 5))
