"""Bring your own dataset (`bench data add`, bench/core/userdata.py): every format, the processing rule (time
order, duplicates, iterative k-core, numbering), the round trip of a shipped dataset, the one-line errors,
`data list` / `data info`, and the commands that take an added dataset where they take a shipped one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core import data, userdata
from bench.core.errors import BenchError
from tests.conftest import SHARED, run_cli


@pytest.fixture(autouse=True)
def data_folder(tmp_path, monkeypatch):
    """A data folder of the test's own: nothing is added to the real cache. Shipped datasets still come
    from the mirror into it on first use."""
    folder = tmp_path / "data"
    monkeypatch.setenv("BENCH_DATA_DIR", str(folder))
    return folder


def reference(rows: list[tuple], k: int) -> str:
    """The processing rule written plainly (loops over rows, users and items): what the vectorised code
    must give. `rows` are (user, item, time) in file order."""
    seen, kept = set(), []
    for row in rows:
        if row not in seen:
            seen.add(row)
            kept.append(row)
    user_min, item_min = max(k, 3), k
    while True:
        users, items = defaultdict(int), defaultdict(int)
        for u, i, _ in kept:
            users[u] += 1
            items[i] += 1
        left = [r for r in kept if users[r[0]] >= user_min and items[r[1]] >= item_min]
        if len(left) == len(kept):
            break
        kept = left
    order = list(dict.fromkeys(u for u, _, _ in kept))
    seqs = {u: [] for u in order}
    for u, i, t in kept:
        seqs[u].append((t, len(seqs[u]), i))  # ties in file order
    item_ids: dict = {}
    lines = []
    for n, u in enumerate(order, start=1):
        ids = [item_ids.setdefault(i, len(item_ids) + 1) for _, _, i in sorted(seqs[u])]
        lines.append(" ".join(map(str, [n, *ids])))
    return "".join(line + "\n" for line in lines)


# Crafted for k = 3: u1's first row is repeated (a duplicate), u2 has two items at one time (kept in file
# order), i9 and i4 are too rare; u4 has 3 rows and falls below 3 only once i4 is gone (round 2).
CRAFTED = [
    ("u1", "i1", 10), ("u1", "i1", 10), ("u1", "i2", 20), ("u1", "i3", 30),
    ("u2", "i2", 5), ("u2", "i1", 5), ("u2", "i3", 7),
    ("u3", "i3", 1), ("u3", "i9", 2), ("u3", "i2", 3), ("u3", "i1", 4),
    ("u4", "i1", 1), ("u4", "i2", 2), ("u4", "i4", 3),
]
CRAFTED_EXPECTED = "1 1 2 3\n2 2 1 3\n3 3 2 1\n"


def write(path: Path, rows: list[tuple], fmt: str) -> Path:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if fmt == "csv":
        frame.assign(rating=4).to_csv(path, index=False)
    elif fmt == "tsv":
        frame.assign(rating=4)[["rating", "timestamp", "item_id", "user_id"]].to_csv(path, sep="\t", index=False)
    elif fmt == "inter":
        frame.assign(rating=4.0)[["user_id", "item_id", "rating", "timestamp"]].to_csv(
            path, sep="\t", index=False, header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    elif fmt == "amazon":
        frame.assign(rating=5.0)[["user_id", "item_id", "rating", "timestamp"]].to_csv(path, index=False, header=False)
    elif fmt == "movielens":  # MovieLens 1M's ratings.dat: "::" between the fields, no header
        lines = frame.assign(rating=3)[["user_id", "item_id", "rating", "timestamp"]].astype(str).agg("::".join, axis=1)
        path.write_text("".join(line + "\n" for line in lines))
    else:
        raise ValueError(fmt)
    return path


EXTENSION = {"csv": ".csv", "tsv": ".tsv", "inter": ".inter", "amazon": ".csv", "movielens": ".dat"}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "inter", "amazon", "movielens"])
def test_every_table_format_gives_the_rule_on_crafted_rows(tmp_path, fmt):
    path = write(tmp_path / f"log{EXTENSION[fmt]}", CRAFTED, fmt)
    added = userdata.add_dataset("mine", path, k_core=3)
    assert added.manifest["options"]["format"] == fmt  # detected from the extension and the first line
    assert added.path.read_text() == CRAFTED_EXPECTED == reference(CRAFTED, 3)
    p = added.manifest["processing"]
    assert p["duplicates_dropped"] == 1
    assert p["k_core_rounds"] == [{"users_removed": 0, "items_removed": 2, "interactions_removed": 2},
                                  {"users_removed": 1, "items_removed": 0, "interactions_removed": 2}]
    s = added.statistics
    assert (s["users"], s["items"], s["interactions"], s["median_length"]) == (3, 3, 9, 3.0)
    assert s["density"] == 1.0 and added.manifest["sha256"] == data.sha256_of(added.path)
    assert added.manifest["source"]["sha256"] == data.sha256_of(path)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "inter", "amazon", "movielens", "sequence"])
def test_random_logs_match_the_plain_reference_in_every_format(tmp_path, fmt):
    rng = np.random.default_rng(7)
    n = 3000
    users = rng.integers(0, 120, n)
    items = rng.zipf(1.6, n) % 90
    times = rng.integers(0, 40, n)  # few distinct times: many ties within a user
    rows = [(f"u{u}", f"i{i}", int(t)) for u, i, t in zip(users, items, times)]
    rows += rows[:200]  # exact duplicates, later in the file
    if fmt == "sequence":  # the harness's own format has no times: a line's positions are its order
        frame = pd.DataFrame(rows, columns=["u", "i", "t"]).drop_duplicates()
        frame = frame.sort_values(["u", "t"], kind="stable")
        lines = frame.groupby("u", sort=False)["i"].agg(" ".join)
        path = tmp_path / "log.txt"
        path.write_text("".join(f"{u} {items}\n" for u, items in lines.items()))
        rows = [(u, i, pos) for u, items in lines.items() for pos, i in enumerate(items.split())]
    else:
        path = write(tmp_path / f"log{EXTENSION[fmt]}", rows, fmt)
    for k in (0, 2, 5):
        added = userdata.add_dataset(f"r{k}", path, k_core=k)
        assert added.manifest["options"]["format"] == fmt
        assert added.path.read_text() == reference(rows, k), k
        data.parse_sequences(added.path)  # a valid dataset file: every user has the split's 3 items


@pytest.mark.parametrize("sep, ext", [(",", ".csv"), ("\t", ".tsv"), ("\t", ".txt")])
def test_a_file_without_header_is_read_with_the_columns_named(tmp_path, capsys, sep, ext):
    """--columns names the columns of a headerless file (in any order, with others beside them); without it
    the command says the first line looks like a row, and how to name the columns."""
    frame = pd.DataFrame(CRAFTED, columns=["u", "i", "t"]).assign(stars=4)[["t", "stars", "i", "u"]]
    path = tmp_path / f"log{ext}"
    frame.to_csv(path, sep=sep, index=False, header=False)
    refused = run_cli(["data", "add", "mine", path, "--k-core", "3"], capsys)
    _one_line_error(refused, "has no user column among 10, 4, i1, u1")
    assert "name its columns with --columns (such as --columns user,item,rating,time)" in refused.err
    added = userdata.add_dataset("mine", path, columns="time,stars,item,user", k_core=3)
    assert added.path.read_text() == CRAFTED_EXPECTED
    assert added.manifest["options"] == {"format": "csv" if sep == "," else "tsv", "columns": "time,stars,item,user",
                                         "user_col": "user", "item_col": "item", "time_col": "time", "k_core": 3}
    assert added.manifest["source"]["rows"] == len(CRAFTED)  # the first line is a row, not a header
    chosen = userdata.add_dataset("mine2", path, columns=["a", "b", "c", "d"], user_col="d", item_col="c",
                                  time_col="a", k_core=3)
    assert chosen.path.read_text() == CRAFTED_EXPECTED
    # a headerless file that looks like Amazon's, columns named: a csv of those columns, not the amazon format
    amazon_like = write(tmp_path / "ratings.csv", CRAFTED, "amazon")
    assert userdata.detect_format(amazon_like)[0] == "amazon"
    assert userdata.detect_format(amazon_like, named_columns=True)[0] == "csv"
    named = userdata.add_dataset("mine3", amazon_like, columns="user,item,rating,time", k_core=3)
    assert named.manifest["options"]["format"] == "csv" and named.path.read_text() == CRAFTED_EXPECTED


def test_movielens_ratings_are_detected_whatever_the_extension(tmp_path):
    path = write(tmp_path / "ratings", CRAFTED, "movielens")
    assert userdata.detect_format(path)[0] == "movielens"
    assert userdata.add_dataset("ml", path, k_core=3).path.read_text() == CRAFTED_EXPECTED


def test_sequence_format_round_trips_and_is_detected(tmp_path):
    path = tmp_path / "seqs.txt"
    path.write_text("7 a b c d e\n3 c d e f g\n9 a c e g b\n")
    added = userdata.add_dataset("seq", path, k_core=0)
    assert added.manifest["options"] == {"format": "sequence", "k_core": 0}
    assert added.path.read_text() == "1 1 2 3 4 5\n2 3 4 5 6 7\n3 1 3 5 7 2\n"
    again = userdata.add_dataset("seq2", added.path, k_core=0)
    assert again.path.read_bytes() == added.path.read_bytes()


def shipped_as_ratings(name: str, path: Path, seed: int = 0) -> Path:
    """A shipped dataset written out as an Amazon ratings file: one row per interaction, its position as
    the timestamp, the rows of each user shuffled (users in file order)."""
    seqs = data.parse_sequences(SHARED / "datasets" / f"{name}.txt")
    users = np.repeat(np.arange(1, seqs.num_users + 1), seqs.lengths)
    position = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], seqs.lengths)
    order = np.lexsort((np.random.default_rng(seed).random(len(users)), users))
    pd.DataFrame({"user": users[order], "item": seqs.items[order], "rating": 5.0, "time": position[order]}).to_csv(
        path, index=False, header=False)
    return path


def test_a_shipped_dataset_written_as_ratings_and_added_back_is_its_own_file_byte_for_byte(tmp_path):
    ratings = shipped_as_ratings("Beauty", tmp_path / "beauty_ratings.csv")
    added = userdata.add_dataset("BeautyAgain", ratings)
    assert added.manifest["options"] == {"format": "amazon", "k_core": 5}
    assert added.path.read_bytes() == (SHARED / "datasets" / "Beauty.txt").read_bytes()
    assert added.manifest["sha256"] == data.load_manifest("Beauty").sha256
    assert added.manifest["processing"]["k_core_rounds"] == []  # already 5-core


def test_the_same_file_and_options_again_is_a_no_op_other_ones_need_force(tmp_path, capsys):
    path = write(tmp_path / "log.csv", CRAFTED, "csv")
    first = run_cli(["data", "add", "mine", path, "--k-core", "3"], capsys)
    assert first.code == 0, first.err
    assert "1 duplicate (user, item, time) rows dropped" in first.err and "3-core round 2: removed 1 users" in first.err
    toml = data.added_dir() / "mine.toml"
    stamp = toml.stat().st_mtime_ns
    again = run_cli(["data", "add", "mine", path, "--k-core", "3"], capsys)
    assert again.code == 0 and "nothing to do" in again.err and toml.stat().st_mtime_ns == stamp
    other = run_cli(["data", "add", "mine", path, "--k-core", "2"], capsys)
    assert other.code == 2 and other.err.startswith("error: dataset mine already exists") and "other options" in other.err
    assert toml.stat().st_mtime_ns == stamp
    forced = run_cli(["data", "add", "mine", path, "--k-core", "2", "--force"], capsys)
    assert forced.code == 0, forced.err
    assert data.read_added_manifest("mine")["options"]["k_core"] == 2


def test_list_and_info(tmp_path, capsys):
    path = write(tmp_path / "log.inter", CRAFTED, "inter")
    assert run_cli(["data", "add", "mine", path, "--k-core", "3"], capsys).code == 0
    listed = run_cli(["data", "list", "--json"], capsys)
    rows = {r["dataset"]: r for r in json.loads(listed.out)}
    assert set(rows) == {*data.dataset_names(), "mine"}
    assert rows["mine"]["kind"] == "added" and rows["Beauty"]["kind"] == "shipped" and rows["mine"]["users"] == 3
    table = run_cli(["data", "list"], capsys)
    assert table.code == 0 and "mine" in table.out and "Beauty" in table.out
    info = run_cli(["data", "info", "mine"], capsys)
    assert info.code == 0
    for word in ("median length", "density", "source sha256", "k-core rounds", "duplicates dropped", "user_id:token"):
        assert word in info.out, word
    shipped = run_cli(["data", "info", "Beauty", "--json"], capsys)
    assert json.loads(shipped.out)["statistics"]["users"] == 22363
    stats = run_cli(["data", "stats", "mine", "--json"], capsys)
    assert json.loads(stats.out)[0]["matches_manifest"] is True


def _one_line_error(result, message: str):
    assert result.code == 2, result
    assert result.err.startswith(f"error: {message}") or message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err


@pytest.mark.parametrize(
    "content, extra, message",
    [
        (None, [], "no file"),
        ("user_id,item_id,timestamp\na,b,1\n", ["--format", "parquet"], "unknown format 'parquet'"),
        ("usr,item_id,timestamp\na,b,1\n", [], "has no user column among usr, item_id, timestamp"),
        ("user_id,item_id,timestamp\na,b,1\n", ["--item-col", "product"], "has no column 'product' (--item-col)"),
        ("user_id,item_id,timestamp\na,b,1\n,c,2\n", [], ":3: empty user id"),
        ("user_id,item_id,timestamp\na,b,1\na, ,2\n", [], ":3: empty item id"),
        ("user_id,item_id,timestamp\na,b,1\na,c,yesterday\n", [], ":3: timestamp 'yesterday' does not parse"),
        ("user_id,item_id,timestamp\na,b,1\na,c,\n", [], ":3: timestamp '' does not parse"),
        ("user_id,item_id,timestamp\n", [], "has no rows"),
        ("", [], "has no rows"),
        ("user_id,item_id,timestamp\na,b,1\na,c,2\nb,b,3\n", [], "no user is left after 5-core filtering"),
        ("a,b,5.0,1\na,c,5.0\n", [], "cannot read it as amazon"),
        ("a b c d\n7\n", ["--format", "sequence"], ":2: user 7 has no items"),
        ("user_id,item_id,timestamp\na,b,1\n", ["--format", "amazon", "--user-col", "u"], "--user-col applies to"),
        ("a,b,1\na,c,2\n", ["--columns", "user,item"], "--columns names 2 column(s), but the first line"),
        ("a,b,1\na,c,2\n", ["--columns", "user,item,user"], "--columns needs distinct, non-empty names"),
        ("a,b,1\na,c,2\n", ["--columns", "user,,time"], "--columns needs distinct, non-empty names"),
        ("a,b,1\n", ["--format", "sequence", "--columns", "user,item,time"], "--columns names the columns of a csv"),
        ("1::2::5::10\n1:2:::5::11\n", ["--format", "movielens"], ":2: not four fields separated by '::'"),
        ("1::2::5::10\n1:2::5::11\n", ["--format", "movielens"], "a row that is not four fields separated by '::': 1:2"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, data_folder, content, extra, message):
    path = tmp_path / "log.csv"
    if content is not None:
        path.write_text(content)
    result = run_cli(["data", "add", "mine", path, *extra], capsys)
    _one_line_error(result, message)
    assert not (data_folder / "added").exists() or not any((data_folder / "added").iterdir())


def test_k_core_leaving_nobody_says_what_each_round_removed(tmp_path):
    rows = [(f"u{u}", f"i{(u + j) % 9}", j) for u in range(6) for j in range(4)]
    path = write(tmp_path / "log.csv", rows, "csv")
    with pytest.raises(BenchError, match=r"round 1: \d+ users and \d+ items removed"):
        userdata.add_dataset("mine", path, k_core=5)


@pytest.mark.parametrize("name, message", [("Beauty", "shipped dataset Beauty"), ("yelp", "shipped dataset Yelp"),
                                            ("../x", "not a plain name"), ("a/b", "not a plain name"),
                                            (".hidden", "not a plain name"), ("", "not a plain name")])
def test_shipped_or_non_plain_names_are_refused(tmp_path, capsys, name, message):
    path = write(tmp_path / "log.csv", CRAFTED, "csv")
    _one_line_error(run_cli(["data", "add", name, path, "--k-core", "3"], capsys), "")
    with pytest.raises(BenchError, match=message):
        userdata.check_name(name)


def test_iso_dates_order_like_their_times(tmp_path):
    rows = [("u", "a", "2024-01-03T10:00:00"), ("u", "b", "2024-01-01"), ("u", "c", "2024-01-02T23:59:59Z")]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user", "item", "date"]).to_csv(path, index=False)
    added = userdata.add_dataset("dates", path, k_core=0)
    assert added.manifest["options"] == {"format": "csv", "user_col": "user", "item_col": "item", "time_col": "date",
                                         "k_core": 0}
    assert added.path.read_text() == "1 1 2 3\n"  # b, c, a


# ------------------------------------------------------------------------------- commands on added data
def walks(users: int = 150, items: int = 40) -> list[tuple]:
    """Users walking through items in steps of 1 from a random start: a log a model learns in an epoch."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(users):
        start, n = rng.integers(0, items), rng.integers(5, 12)
        rows += [(f"user{u}", f"item{(start + j) % items}", 1000 + 10 * j) for j in range(n)]
    return rows


@pytest.fixture
def added_small(tmp_path):
    """An added dataset of 150 users walking through 40 items (enough for a one-epoch smoke run)."""
    return userdata.add_dataset("mini", write(tmp_path / "mini.csv", walks(), "csv"))


def test_run_grid_status_and_evaluate_take_an_added_dataset(tmp_path, capsys, added_small):
    results = tmp_path / "results"
    budget = ["--profile", "smoke", "--epochs", "1", "--patience", "1", "--device", "cpu"]
    ckpt = tmp_path / "mini.pt"
    one = run_cli(["run", "--method", "sasrec", "--dataset", "mini", *budget, "--results", results, "--json",
                   "--save-checkpoint", ckpt], capsys)
    assert one.code == 0, one.err
    record = json.loads(one.out)
    assert record["dataset"] == "mini" and record["status"] == "ok"
    grid = run_cli(["run", "--all", "--methods", "sasrec", "--datasets", "mini", "--seeds", "1", *budget,
                    "--executor", "local", "--results", results], capsys)
    assert grid.code == 0, grid.err
    assert "1 skipped" in grid.out  # the same run, the same id: done already
    status = run_cli(["status", "--datasets", "mini", "--methods", "sasrec", "--seeds", "1", "--profile", "smoke",
                      "--epochs", "1", "--patience", "1", "--device", "cpu", "--results", results, "--json"], capsys)
    assert status.code == 0, status.err
    assert json.loads(status.out)["counts"]["ok"] == 1
    evaluated = run_cli(["evaluate", "--method", "sasrec", "--dataset", "mini", "--checkpoint", ckpt,
                         "--device", "cpu", "--json"], capsys)
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["NDCG@20"] == pytest.approx(record["test"]["NDCG@20"], abs=1e-6)
    # the leaderboard's tables of an added dataset (no published columns, a note saying so): test_install.py


def test_run_ids_of_added_datasets_follow_their_content_and_shipped_ids_do_not_change(tmp_path, added_small):
    from bench.core.spec import make_spec

    first = make_spec("sasrec", "mini", profile="smoke").run_id
    rows = [(u, i, t) for u, i, t in pd.read_csv(tmp_path / "mini.csv")[["user_id", "item_id", "timestamp"]]
            .itertuples(index=False)][:-3]
    userdata.add_dataset("mini", write(tmp_path / "mini2.csv", rows, "csv"), force=True)
    assert make_spec("sasrec", "mini", profile="smoke").run_id != first  # replaced data, new runs
    # a shipped dataset's id is what it was before datasets could be added (see test_run_identity.py)
    spec = make_spec("sasrec", "Beauty", profile="paper")
    from bench.core import records

    plain = records.run_id("sasrec", "Beauty", spec.seed, spec.profile, spec.protocol,
                           {k: v for k, v in spec.config.to_dict().items()
                            if not (k in records.faithful_values("sasrec") and records.faithful_values("sasrec")[k] == v)
                            and k != "encoder"},
                           {"epochs": spec.epochs, "patience": spec.patience, "max_users": spec.max_users})
    assert spec.run_id == plain


def test_unknown_dataset_names_the_shipped_and_the_added(added_small):
    with pytest.raises(BenchError, match="added: mini"):
        data.load_manifest("nope")


def test_a_damaged_added_file_is_a_one_line_error(added_small, capsys):
    added_small.path.write_text("1 2 3 4\n")
    result = run_cli(["data", "stats", "mini"], capsys)
    _one_line_error(result, "added dataset mini")


# ------------------------------------------------------------------------------------- a real dataset
@pytest.mark.slow
def test_movielens_100k_from_recbole_wheel(tmp_path):
    """MovieLens-100K as RecBole ships it (atomic .inter file in its wheel), through the package registry."""
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "recbole==1.2.1", "-d",
                           str(wheels)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    found = list(wheels.glob("recbole-*.whl"))
    if proc.returncode != 0 or not found:
        pytest.skip(f"recbole's wheel is not obtainable from the package registry: {proc.stderr.strip()[-200:]}")
    inter = tmp_path / "ml-100k.inter"
    with zipfile.ZipFile(found[0]) as wheel:
        inter.write_bytes(wheel.read("recbole/dataset_example/ml-100k/ml-100k.inter"))
    added = userdata.add_dataset("ml-100k", inter)
    assert added.manifest["options"] == {"format": "inter", "user_col": "user_id:token", "item_col": "item_id:token",
                                         "time_col": "timestamp:float", "k_core": 5}
    s = added.statistics
    # MovieLens-100K: 943 users of 20+ ratings, 1,682 movies, 100,000 ratings; 5-core keeps every user
    assert added.manifest["source"]["rows"] == 100_000 and s["users"] == 943
    assert 1300 < s["items"] < 1682 and 95_000 < s["interactions"] < 100_000
    frame = pd.read_csv(inter, sep="\t")
    rows = list(frame.iloc[:, [0, 1, 3]].astype({"timestamp:float": "int64"}).itertuples(index=False, name=None))
    assert added.path.read_text() == reference(rows, 5)


@pytest.mark.slow  # seconds of k-means and encoder set-up; the default suite keeps to its budget
def test_scaling_sets_up_on_an_added_dataset(tmp_path, added_small):
    """The scaling study's set-up (the real users, the resampled pool, both methods) reads the added
    dataset's file; the timed sweep after it is the study's own (tests/test_scaling.py)."""
    from bench.tools.scaling.spec import ScalingSpec, plan_study
    from bench.tools.scaling.sweep import set_up
    from tests.test_scaling import TINY

    study = ScalingSpec(dataset="mini", users=(40,), device="cpu", backends=("torch",), repeats=1, step_sample=1,
                        pool_users=32, results=tmp_path / "scaling", overrides=TINY)
    setup = set_up(study, plan_study(study), None)
    assert setup.real.num_users == added_small.statistics["users"] == 150


def test_a_large_file_shows_each_step_as_it_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(userdata, "LARGE_BYTES", 0)  # this small file counts as large
    lines = []

    def log(line):
        lines.append((line, (data.added_dir() / "mine.toml").exists()))

    userdata.add_dataset("mine", write(tmp_path / "log.csv", CRAFTED, "csv"), k_core=3, progress=True, log=log)
    said = [line for line, _ in lines]
    assert said[0].startswith("format: csv") and said[1] == "read 14 rows of log.csv"
    assert [s.split(":")[0] for s in said[3:5]] == ["3-core round 1", "3-core round 2"]
    assert not any(written for _, written in lines[:-1])  # said as each step ended, before anything was written


def test_an_unreadable_manifest_is_refused_then_replaced_with_force(tmp_path, added_small, capsys):
    (data.added_dir() / "mini.toml").write_text("not = [toml")
    path = tmp_path / "mini.csv"
    _one_line_error(run_cli(["data", "add", "mini", path], capsys), "cannot read the manifest")
    assert run_cli(["data", "add", "mini", path, "--force"], capsys).code == 0
    assert data.load_manifest("mini").expected["users"] == 150


def test_the_python_api_adds_as_the_command_line_does(tmp_path, capsys):
    import bench

    path = write(tmp_path / "log.csv", CRAFTED, "csv")
    lines: list[str] = []
    added = bench.add_dataset("mine", path, k_core=3, log=lines.append)
    assert not added.unchanged and any("3-core round 2: removed 1 users" in line for line in lines)
    cli = run_cli(["data", "add", "theirs", path, "--k-core", "3"], capsys)
    assert cli.code == 0 and data.read_added_manifest("theirs")["sha256"] == added.manifest["sha256"]
    assert bench.add_dataset("mine", path, k_core=3).unchanged
    with pytest.raises(bench.BenchError) as raised:
        bench.add_dataset("mine", path, k_core=2)
    refused = run_cli(["data", "add", "mine", path, "--k-core", "2"], capsys)
    assert refused.err.strip() == f"error: {raised.value}"
