"""The Python API (bench/api.py): README's notebook example runs as written, `import bench` stays cheap, the
API and the command line give the same run and the same one-line errors, and `records` reads a folder, a
grid's runs and a damaged file the way `leaderboard` does."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, run_cli

TINY = ["--profile", "smoke", "--epochs", "1", "--max-users", "150", "--threads", "1"]


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    [example] = _readme_python_blocks()  # one notebook example, the one docs/api.md points at
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp lands here, removed with the test
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    run, table, folder = namespace["run"], namespace["table"], namespace["folder"]
    assert folder.startswith(str(tmp_path))
    assert run.status == "ok" and run.seed == 2 and run.path.is_file() and run.epochs == 1
    assert list(table["method"]) == ["sasrec", "cl4srec"] and set(table["status"]) == {"ok"}
    assert table["loss"].tolist() == ["bce", "bce"] and table["test_NDCG@20"].notna().all()
    assert (tmp_path / folder / "index.html").is_file() and "leaderboard.csv" in out
    # three runs under the folder: the one of bench.run and the two of the grid
    assert len(list((tmp_path / folder / "runs").glob("*.json"))) == 3


def test_import_bench_loads_neither_torch_nor_pandas():
    code = "import sys, bench; print(sorted(m for m in ('torch', 'pandas', 'ray') if m in sys.modules)); print(bench.run)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]" and "function run" in out


def test_the_api_and_the_command_line_give_the_same_run(tmp_path, capsys):
    import bench

    cli = run_cli(["run", "--method", "sasrec", "--dataset", "Beauty", *TINY, "--json", "--results",
                   tmp_path / "cli"], capsys)
    assert cli.code == 0, cli.err
    by_cli = json.loads(cli.out.splitlines()[-1])
    run = bench.run("sasrec", "Beauty", profile="smoke", epochs=1, max_users=150, threads=1,
                    results=tmp_path / "api", progress=False)
    assert run.run_id == by_cli["run_id"] and run.profile == by_cli["profile"] == "custom"
    assert run.test == by_cli["test"] and run.valid == by_cli["best_valid"]
    assert run.path == tmp_path / "api" / "runs" / f"sasrec-Beauty-s1-custom-{run.run_id}.json"
    assert run.curves["valid_NDCG@20"] == [by_cli["epochs"][0]["valid"]["NDCG@20"]]
    assert run.costs["epochs_run"] == 1 and run.costs["peak_memory_bytes"] > 0
    # a config override is a keyword (--set lr=0.002): another run id, a custom config
    custom = bench.run("sasrec", "Beauty", profile="smoke", epochs=1, max_users=150, threads=1, lr=0.002,
                       results=tmp_path / "api", progress=False)
    assert custom.run_id != run.run_id and custom.raw["config_source"] == "custom"
    assert custom.config["lr"] == 0.002
    table = bench.records(tmp_path / "api")
    assert sorted(table["run_id"]) == sorted([run.run_id, custom.run_id])
    assert table.loc[table["run_id"] == run.run_id, "test_NDCG@20"].item() == run.test["NDCG@20"]
    # counts read as integers in a notebook, not 7.1e+08
    assert table.loc[table["run_id"] == run.run_id, "peak_memory_bytes"].item() == run.costs["peak_memory_bytes"]
    assert all(str(table[c].dtype) == "Int64" for c in ("seed", "best_epoch", "epochs", "peak_memory_bytes"))
    # `records list` is the same table on the command line: a line per run, --csv every column
    listed = run_cli(["records", "list", "--results", tmp_path / "api"], capsys)
    assert listed.code == 0 and "2 record(s)" in listed.err
    lines = listed.out.splitlines()
    assert lines[0].split()[:3] == ["method", "dataset", "seed"] and len(lines) == 3
    assert sorted(line.split()[-1] for line in lines[1:]) == sorted(p.name for p in table["path"].map(Path))
    assert all(f"{run.test['NDCG@20']:.4f}" in line for line in lines[1:] if run.run_id in line)
    as_csv = run_cli(["records", "list", "--results", tmp_path / "api", "--csv"], capsys)
    from_csv = pd.read_csv(io.StringIO(as_csv.out))
    assert list(from_csv.columns) == list(table.columns) and sorted(from_csv["run_id"]) == sorted(table["run_id"])
    none = run_cli(["records", "list", "--results", tmp_path / "api", "--methods", "elcrec"], capsys)
    assert none.code == 0 and none.out == "" and "no record" in none.err


@pytest.mark.parametrize(
    "call, argv",
    [
        (lambda bench, r: bench.run("nope", "Beauty", results=r), ["run", "--method", "nope", "--dataset", "Beauty"]),
        (lambda bench, r: bench.run("sasrec", "Beauty", profile="fast", results=r),
         ["run", "--method", "sasrec", "--dataset", "Beauty", "--profile", "fast"]),
        (lambda bench, r: bench.run("sasrec", "Beauty", results=r, hidden_dropout=2),
         ["run", "--method", "sasrec", "--dataset", "Beauty", "--set", "hidden_dropout=2"]),
        (lambda bench, r: bench.grid(methods=["sasrec"], results=r, executor="local", num_intents=8),
         ["run", "--all", "--methods", "sasrec", "--executor", "local", "--set", "num_intents=8"]),
        (lambda bench, r: bench.leaderboard(r), ["leaderboard"]),
        (lambda bench, r: bench.records(r), ["leaderboard"]),
    ],
    ids=["method", "profile", "config", "grid-override", "leaderboard", "records"],
)
def test_the_api_raises_bench_error_with_the_command_lines_message(tmp_path, capsys, call, argv):
    import bench

    with pytest.raises(bench.BenchError) as raised:
        call(bench, tmp_path)
    cli = run_cli([*argv, "--results", tmp_path], capsys)
    assert cli.code == 2 and cli.err.strip() == f"error: {raised.value}"
    assert "\n" not in str(raised.value)


def test_records_reads_a_grid_and_names_an_unreadable_record(tmp_path, capsys):
    import bench

    runs = bench.grid(methods=["sasrec"], datasets=["Beauty"], seeds=[1, 2], profile="smoke", epochs=1,
                      max_users=150, threads=1, executor="local", results=tmp_path, progress=False)
    assert [r.seed for r in runs] == [1, 2] and runs.folder == tmp_path and runs.summary.ok == 2
    again = bench.grid(methods=["sasrec"], datasets=["Beauty"], seeds=[1, 2], profile="smoke", epochs=1,
                       max_users=150, threads=1, executor="local", results=tmp_path, progress=False)
    assert again.summary.skipped == 2 and [r.run_id for r in again] == [r.run_id for r in runs]
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    capsys.readouterr()
    table = bench.records(tmp_path)
    assert len(table) == 2 and list(bench.records(runs)["seed"]) == [1, 2]
    assert f"warning: skipped unreadable record {tmp_path / 'runs' / 'broken.json'}" in capsys.readouterr().err
