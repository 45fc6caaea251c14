"""Leaderboard and run-record tests on hand-written fixture records.

Fixtures (tests/fixtures/records/runs/): profile `quick`, protocol `reference`, Beauty with 2 seeds for each of
the four methods and Toys_and_Games with 1 seed each; one failed ELCRec Toys run (seed 2, absurd timings that
would show if it leaked in); one truncated JSON file; and one `smoke` profile SASRec Beauty run, which must
land in its own table. Expected numbers below are worked out by hand from those files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.core.errors import BenchError
from bench.core.records import (
    COLUMNS,
    faithful_values,
    find_corrupt,
    load_records,
    read_record,
    record_path,
    run_id,
    write_record_atomic,
)
from bench.reporting.leaderboard import write_leaderboard
from bench.reporting.runs import completed_runs

FIXTURES = Path(__file__).parent / "fixtures" / "records"
CORRUPT = FIXTURES / "runs" / "iclrec-Toys_and_Games-s3-quick-0123456789ab.json"
QUICK = "profile `quick`, protocol `reference`, device `cpu`, variant `faithful`"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    # Generated once for the module: plotting dominates the run time of these tests.
    out = tmp_path_factory.mktemp("board")
    return out, write_leaderboard(FIXTURES, out)


def _row(md: str, section: str, header_start: str, first_cells: tuple[str, ...]) -> dict[str, str]:
    """The markdown table row under `## section` whose table header starts with `header_start`."""
    body = md.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header: list[str] = []
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith(f"| {header_start}"):
            header = cells
        elif header and tuple(cells[: len(first_cells)]) == first_cells:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {first_cells} under {section!r}")


def test_accuracy_markdown_without_tests_marks_nothing(board: tuple[Path, list[Path]]) -> None:
    md = (board[0] / "leaderboard.md").read_text()
    # NDCG@20 Beauty, seeds (0.0380, 0.0400), (0.0440, 0.0460), (0.0480, 0.0500), (0.0500, 0.0520):
    # means 0.0390/0.0450/0.0490/0.0510, sample std sqrt(2 * 0.001**2 / 1) = 0.0014 for all four. The fixture
    # records carry no per-user ranks and 2 seeds: no test is possible, so no method is marked best.
    row = _row(md, QUICK, "dataset | metric", ("Beauty", "NDCG@20"))
    assert row["SASRec"] == "0.0390 ± 0.0014"
    assert row["ICLRec"] == "0.0490 ± 0.0014"
    assert row["ELCRec"] == "0.0510 ± 0.0014"
    assert row["ELCRec vs best baseline"] == "+0.0020 vs ICLRec (+4.1%)"  # (0.0510 - 0.0490) / 0.0490
    # The same "test unavailable" in every row is said once, under the table, not in a column.
    assert "ELCRec p (paired test)" not in row
    body = md.split(f"## {QUICK}\n", 1)[1].split("\n## ", 1)[0]
    assert "In every row: `ELCRec p (paired test)` test unavailable (no per-user ranks" in body
    # HR@5 Beauty: ICLRec (0.0510) beats ELCRec (0.0500), so the gain is negative; SASRec has two equal seeds.
    row = _row(md, QUICK, "dataset | metric", ("Beauty", "HR@5"))
    assert row["ICLRec"] == "0.0510 ± 0.0014" and row["SASRec"] == "0.0370 ± 0.0000"
    assert row["ELCRec vs best baseline"] == "-0.0010 vs ICLRec (-2.0%)"  # -1.96%
    # Not the paper's budget: no published or diff column, and the section opens with its budget.
    assert "ELCRec published" not in row and "ELCRec diff" not in row
    body = md.split(f"## {QUICK}\n", 1)[1]
    assert body.lstrip().startswith("> **Budget: quick profile, pipeline check at a few epochs, not converged"
                                    " (no verdict on which method is more accurate): all users")


def test_single_seed_and_failed_run_excluded(board: tuple[Path, list[Path]]) -> None:
    md = (board[0] / "leaderboard.md").read_text()
    row = _row(md, QUICK, "dataset | metric", ("Toys_and_Games", "NDCG@20"))
    # Only seed 1 of ELCRec on Toys is ok; the failed seed 2 must not turn this into a two-seed cell.
    assert row["ELCRec"] == "0.0560 (n=1)"
    assert row["ICLRec"] == "0.0550 (n=1)"
    assert _row(md, QUICK, "dataset | SASRec", ("Toys_and_Games",))["ELCRec"] == "1"
    assert _row(md, QUICK, "dataset | SASRec", ("Beauty",))["ELCRec"] == "2"
    cost = pd.read_csv(board[0] / "cost.csv")
    toys = cost[(cost["dataset"] == "Toys_and_Games") & (cost["method"] == "elcrec")].iloc[0]
    assert toys["n_seeds"] == 1 and toys["train_s_first"] == pytest.approx(16.5)  # not the failed 999 s


def test_groups_header_and_skipped_files(board: tuple[Path, list[Path]]) -> None:
    for name in ("leaderboard.md", "cost.md"):
        md = (board[0] / name).read_text()
        assert "Generated by `python -m bench leaderboard` from 13 run records (`runs/`); do not edit by hand." in md
        assert str(FIXTURES) not in md and "/tmp" not in md  # no absolute path in a generated file
        assert "1 failed run(s)" in md and "1 unreadable file(s)" in md
        assert f"## {QUICK}" in md and "## profile `smoke`, protocol `reference`, device `cpu`, variant `faithful`" in md
    smoke = _row(
        (board[0] / "leaderboard.md").read_text(),
        "profile `smoke`, protocol `reference`, device `cpu`, variant `faithful`",
        "dataset | metric",
        ("Beauty", "NDCG@20"),
    )
    assert smoke["SASRec"] == "0.0120 (n=1)"  # a lone method gets no bold
    assert find_corrupt(FIXTURES) == [CORRUPT]
    records = load_records(FIXTURES)
    assert len(records) == 14 and str(CORRUPT) not in set(records["path"])


def test_leaderboard_csv_is_long_and_complete(board: tuple[Path, list[Path]]) -> None:
    acc = pd.read_csv(board[0] / "leaderboard.csv")
    keys = ["profile", "protocol", "config_source", "dataset", "metric", "method"]
    assert not acc.duplicated(keys).any()
    assert len(acc) == 2 * 6 * 4 + 6  # quick: 2 datasets x 6 metrics x 4 methods; smoke: 6 metrics x SASRec
    cell = acc.set_index(keys).loc[("quick", "reference", "paper", "Beauty", "NDCG@20", "elcrec")]
    assert cell["mean"] == pytest.approx(0.051) and cell["std"] == pytest.approx(0.0014142, abs=1e-6)
    assert cell["n_seeds"] == 2 and pd.isna(cell["published"])  # published numbers: paper profile only
    assert cell["elcrec_vs_best_baseline_pct"] == pytest.approx(100 * 0.002 / 0.049)
    assert cell["best_baseline"] == "ICLRec" and pd.isna(cell["p_users"]) and pd.isna(cell["p_seeds"])
    toys = acc.set_index(keys).loc[("quick", "reference", "paper", "Toys_and_Games", "HR@10", "sasrec")]
    assert pd.isna(toys["std"]) and pd.isna(toys["published"])


def test_cost_tables(board: tuple[Path, list[Path]]) -> None:
    cost = pd.read_csv(board[0] / "cost.csv").set_index(["profile", "method", "dataset"])
    # ICLRec Beauty: seed 1 = 2 epochs of (E-step 2, train 8, eval 1) s, 200 MiB; seed 2 = 2 x (2, 10, 1), 220 MiB.
    icl = cost.loc[("quick", "iclrec", "Beauty")]
    steady = (icl["estep_s_steady_median"], icl["train_s_steady_median"], icl["eval_s_steady_median"])
    assert steady == (2.0, 9.0, 1.0)  # the second epoch of each seed, mean over the two seeds
    assert (icl["training_s_first"], icl["training_s_steady_median"]) == (11.0, 11.0)
    assert (icl["training_s"], icl["peak_memory_mb"]) == (22.0, 210.0)
    # ELCRec Beauty: both seeds 3 epochs of (0, 5.5, 1) s, 168 MiB.
    elc = cost.loc[("quick", "elcrec", "Beauty")]
    assert (elc["training_s"], elc["training_s_steady_median"], elc["epochs_run"]) == (16.5, 5.5, 3.0)
    assert elc["in_flight"].startswith("unknown")  # fixture records predate the execution context
    comp = pd.read_csv(board[0] / "cost_comparison.csv").set_index("dataset")
    beauty = comp.loc["Beauty"]
    # No context in these records and overlapping start/finish times: the pair is not compared.
    assert beauty["not_compared"].startswith("context unknown")
    md = (board[0] / "cost.md").read_text()
    vs = _row(md, QUICK, "dataset | compared", ("Beauty",))
    assert vs["change per epoch after the 1st"] == "not compared"
    assert "- Beauty: ELCRec vs ICLRec: not compared: context unknown" in md
    assert "saves" not in md and "paper change" not in md  # no verdict, no paper column outside `paper`
    assert "1st epoch s" in md and "E-step s/epoch" in md and "in flight" in md


def test_plots_and_no_temp_files(board: tuple[Path, list[Path]]) -> None:
    out, written = board
    names = {p.name for p in written}
    # Plot names depend on their group alone: profile, protocol, device, variant.
    kinds = ("accuracy", "cost", "convergence", "tradeoff")
    plots = {f"plot_{k}_{p}_reference_cpu_faithful.png" for k in kinds for p in ("quick", "smoke")}
    assert plots <= names
    assert {"leaderboard.csv", "leaderboard.md", "cost.csv", "cost.md", "index.html"} <= names
    for name in plots:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing else, no temp files


def test_plot_names_do_not_depend_on_other_groups(tmp_path: Path) -> None:
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for path in (FIXTURES / "runs").glob("*-Beauty-s1-quick-*.json"):
        shutil.copy(path, runs)
    written = write_leaderboard(tmp_path / "results")  # out_dir defaults to the results directory
    names = {p.name for p in written}
    assert {"plot_accuracy_quick_reference_cpu_faithful.png", "plot_cost_quick_reference_cpu_faithful.png"} <= names
    assert all(p.parent == tmp_path / "results" for p in written)
    assert "(n=1)" in (tmp_path / "results" / "leaderboard.md").read_text()


def test_a_run_within_one_second_is_in_flight_at_its_start() -> None:
    # Record times are to the second: a run under a second (a tiny run, one epoch) has started_at == finished_at.
    from bench.reporting.runs import in_flight_from_times

    def times(*runs: tuple[str, str]) -> pd.DataFrame:
        return pd.DataFrame({"started_at": [f"2024-01-01T00:{a}+00:00" for a, _ in runs],
                             "finished_at": [f"2024-01-01T00:{b}+00:00" for _, b in runs], "hostname": "h"})

    assert in_flight_from_times(times(("00:05", "00:05"))).tolist() == [1]
    assert in_flight_from_times(times(("00:05", "00:05"), ("00:00", "01:00"))).tolist() == [2, 2]
    assert in_flight_from_times(times(("00:00", "00:30"), ("00:10", "01:00"), ("00:40", "00:50"))).tolist() == [2, 2, 2]


def test_no_completed_records(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no completed run records in"):
        write_leaderboard(tmp_path)
    failed = FIXTURES / "runs" / "elcrec-Toys_and_Games-s2-quick-e77d72f29119.json"
    (tmp_path / "runs").mkdir()
    shutil.copy(failed, tmp_path / "runs")
    shutil.copy(CORRUPT, tmp_path / "runs")
    with pytest.raises(BenchError, match="no completed run records in"):
        write_leaderboard(tmp_path)
    assert not list(tmp_path.glob("*.md"))


def test_load_records_columns(tmp_path: Path) -> None:
    empty = load_records(tmp_path)
    assert empty.empty and list(empty.columns) == COLUMNS
    records = load_records(FIXTURES).set_index("path")
    failed = records.loc[str(FIXTURES / "runs" / "elcrec-Toys_and_Games-s2-quick-e77d72f29119.json")]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: out of memory"
    assert pd.isna(failed["test_NDCG@20"]) and failed["epochs_run"] == 1  # no totals: counted from epochs
    icl = records.loc[str(next((FIXTURES / "runs").glob("iclrec-Beauty-s2-*.json")))]
    assert (icl["estep_s_per_epoch"], icl["train_s_per_epoch"], icl["train_s"]) == (2.0, 10.0, 20.0)
    assert icl["test_NDCG@20"] == 0.05 and icl["best_valid_NDCG@20"] == 0.055
    assert icl["device_name"] == "cpu" and icl["peak_memory_bytes"] == 220 * 2**20


def test_rerun_supersedes_older_record() -> None:
    records = load_records(FIXTURES)
    rerun = records[records["path"].str.contains("elcrec-Beauty-s1-")].assign(
        run_id="ffffffffffff", finished_at="2027-01-01T00:00:00+00:00", **{"test_NDCG@20": 0.09}
    )
    runs = completed_runs(pd.concat([records, rerun], ignore_index=True))
    elc = runs[(runs["method"] == "elcrec") & (runs["dataset"] == "Beauty")]
    assert sorted(elc["test_NDCG@20"]) == [0.052, 0.09]  # the newer seed-1 record replaced the older one


def test_write_record_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs" / "r.json"
    write_record_atomic(
        path,
        {"schema": 1, "method": "sasrec", "dataset": "Beauty", "seed": 1, "profile": "smoke", "status": "ok"},
    )
    assert json.loads(path.read_text())["method"] == "sasrec"
    assert path.read_text().startswith('{\n "schema": 1,\n "method"')  # indent 1, insertion order
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]

    def fail(*args: object) -> None:
        raise OSError("disk full")

    # A failure at the rename must leave the old record intact and remove the temp file; it is one line
    # naming the file (BenchError), as a full disk is.
    monkeypatch.setattr("bench.core.files.os.replace", fail)
    with pytest.raises(BenchError, match=re.escape(f"cannot write {path}: disk full")):
        write_record_atomic(path, {"schema": 1, "method": "elcrec"})
    assert json.loads(path.read_text())["method"] == "sasrec"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_read_record_tolerates_damage(tmp_path: Path) -> None:
    assert read_record(CORRUPT) is None
    assert read_record(tmp_path / "missing.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_record(tmp_path / "list.json") is None
    good = FIXTURES / "runs" / "sasrec-Beauty-s1-smoke-938084f358e3.json"
    temp = tmp_path / ".sasrec.json.abc123.tmp"
    shutil.copy(good, temp)
    assert read_record(temp) is None and read_record(good)["profile"] == "smoke"


def test_run_id_and_record_path(tmp_path: Path) -> None:
    config = {"lr": 0.001, "model": {"layers": 2, "heads": 1}}
    reordered = {"model": {"heads": 1, "layers": 2}, "lr": 0.001}
    rid = run_id("elcrec", "Beauty", 1, "quick", "reference", config)
    assert len(rid) == 12 and int(rid, 16) >= 0
    assert rid == run_id("elcrec", "Beauty", 1, "quick", "reference", reordered)
    assert rid != run_id("elcrec", "Beauty", 1, "quick", "reference", {**config, "lr": 0.002})
    assert rid != run_id("elcrec", "Beauty", 2, "quick", "reference", config)
    assert rid != run_id("elcrec", "Beauty", 1, "quick", "strict", config)
    meta = {
        "method": "elcrec",
        "dataset": "Beauty",
        "seed": 1,
        "profile": "quick",
        "protocol": "reference",
        "config": config,
    }
    assert record_path(tmp_path, meta) == tmp_path / "runs" / f"elcrec-Beauty-s1-quick-{rid}.json"
    assert record_path(tmp_path, {**meta, "run_id": "abc"}).name == "elcrec-Beauty-s1-quick-abc.json"
    # The fixture file names were produced by record_path: the name's id is the record's own run_id, computed
    # from the config without the faithful values the id leaves out (filled in by the schema-3 upgrade).
    for path in (FIXTURES / "runs").glob("*.json"):
        record = read_record(path)
        if record is not None:
            assert record_path(FIXTURES, record) == path
            faithful = faithful_values(record["method"])
            config = {k: v for k, v in record["config"].items() if not (k in faithful and faithful[k] == v)}
            assert record["run_id"] == run_id(
                record["method"],
                record["dataset"],
                record["seed"],
                record["profile"],
                record["protocol"],
                config,
            )


def test_several_config_sources_get_their_own_columns(tmp_path: Path) -> None:
    for method in ("iclrec", "elcrec"):  # seed 1 on Beauty only
        record = read_record(next((FIXTURES / "runs").glob(f"{method}-Beauty-s1-quick-*.json")))
        assert record is not None
        write_record_atomic(record_path(tmp_path, record), record)
    tuned = {**record, "config_source": "tuned", "run_id": "aaaaaaaaaaaa"}  # an ELCRec run with tuned config
    write_record_atomic(record_path(tmp_path, tuned), tuned)
    out = tmp_path / "out"
    write_leaderboard(tmp_path, out)
    row = _row((out / "leaderboard.md").read_text(), QUICK, "dataset | metric", ("Beauty", "NDCG@20"))
    assert row["ELCRec (paper)"] == row["ELCRec (tuned)"] == "0.0500 (n=1)"  # a tie: no mark
    assert row["ICLRec"] == "0.0480 (n=1)"
    vs = _row(
        (out / "cost.md").read_text(), QUICK, "dataset | compared", ("Beauty", "ELCRec (tuned) vs ICLRec")
    )
    assert vs["change per epoch after the 1st"] == "not compared"  # no recorded context


def test_gpu_and_fast_variant_runs_get_their_own_groups(tmp_path: Path) -> None:
    """A GPU run or a fast variant of the same spec must never be averaged with the faithful CPU runs."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for path in (FIXTURES / "runs").glob("*-Beauty-s1-quick-*.json"):
        shutil.copy(path, runs)
    base = json.loads((FIXTURES / "runs" / "iclrec-Beauty-s1-quick-7cd9decbd8ff.json").read_text())
    variants = {
        "gpu": {"device": "cuda"},
        "fast": {"variant": {"mode": "fast", "precision": "bf16", "compile": "off", "view_encoding": "separate"}},
    }
    for name, change in variants.items():
        record = {**base, **change, "run_id": f"{name:0>12}"}
        record["test"] = {k: 0.9 for k in record["test"]}  # absurd scores that would show if averaged in
        write_record_atomic(record_path(runs.parent, record), record)
    written = {p.name for p in write_leaderboard(tmp_path, tmp_path / "out")}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    cpu = "profile `quick`, protocol `reference`, device `cpu`, variant `faithful`"
    gpu = "profile `quick`, protocol `reference`, device `cuda`, variant `faithful`"
    fast = "profile `quick`, protocol `reference`, device `cpu`, variant `fast (precision=bf16)`"
    faithful_ndcg = f"{base['test']['NDCG@20']:.4f} (n=1)"
    assert faithful_ndcg in _row(md, cpu, "dataset | metric", ("Beauty", "NDCG@20"))["ICLRec"]  # may be bold
    for section in (gpu, fast):  # alone in their groups: no bold, no underline
        assert _row(md, section, "dataset | metric", ("Beauty", "NDCG@20"))["ICLRec"] == "0.9000 (n=1)"
    # Plot names carry the key parts that differ between groups: device and variant here.
    assert {
        "plot_cost_quick_reference_cpu_faithful.png",
        "plot_cost_quick_reference_cuda_faithful.png",
        "plot_cost_quick_reference_cpu_fast-precision-bf16.png",
    } <= written


def test_a_fifth_method_is_compared_as_a_baseline(tmp_path: Path) -> None:
    # A method added to methods/ needs no change in the leaderboard: it is one of ELCRec's baselines.
    runs = tmp_path / "runs"
    runs.mkdir()
    for path in sorted((FIXTURES / "runs").glob("*-Beauty-*-quick-*.json")):
        record = read_record(path)
        if record is None or record["status"] != "ok":
            continue
        shutil.copy(path, runs / path.name)
        if record["method"] == "iclrec":  # a "toy" method that beats every other one on every metric
            toy = {**record, "method": "toy", "run_id": record["run_id"][:-4] + "beef"}
            toy["test"] = {k: v * 3 for k, v in record["test"].items()}
            write_record_atomic(record_path(tmp_path, toy), toy)
    write_leaderboard(tmp_path, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert "toy" in set(table["method"])
    assert set(table.loc[table["method"] == "elcrec", "best_baseline"].dropna()) == {"toy"}


def test_a_second_run_writes_the_same_bytes(board: tuple[Path, list[Path]], tmp_path: Path) -> None:
    # Tables, plots and the page are committed: regenerating them from the same records must change nothing.
    for path in write_leaderboard(FIXTURES, tmp_path):
        assert path.read_bytes() == (board[0] / path.name).read_bytes(), path.name
