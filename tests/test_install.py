"""The harness installed as a library (not an editable checkout), run from another folder.

`pip install --no-deps --target` puts a real (non-editable) build of the package in a folder of its own;
the test environment's interpreter, which has every dependency, then runs it with that folder first on
the path and a working directory outside the checkout, so nothing can be read from the repository by
accident: manifests and method configs must come from package data, results go to ./results of the
working directory. The slow variant builds a fresh virtual environment with every dependency.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED

COMMANDS = [
    ["--help"], ["data", "--help"], ["data", "download", "--help"], ["data", "stats", "--help"], ["data", "add", "--help"],
    ["data", "list", "--help"], ["data", "info", "--help"], ["run", "--help"],
    ["evaluate", "--help"], ["tune", "--help"], ["leaderboard", "--help"], ["status", "--help"], ["packing", "--help"],
    ["profile", "--help"], ["scaling", "--help"], ["records", "--help"], ["records", "migrate", "--help"],
]


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """A non-editable install of the package into a folder of its own (built once per test run)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=build, env={**os.environ, "TMPDIR": str(build)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _bench(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _installed_python(installed, cwd, "-m", "bench", *args)


def _bench_python(installed: Path, cwd: Path, script: str) -> subprocess.CompletedProcess:
    return _installed_python(installed, cwd, "-c", script)


def _installed_python(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(PYTHONPATH=str(installed), OMP_NUM_THREADS="1", BENCH_DATA_MIRROR=str(SHARED / "datasets"),
               BENCH_DATA_DIR=str(cwd / "data"), BENCH_CHECKPOINTS=str(cwd / "checkpoints"),
               BENCH_IN_FLIGHT=str(cwd / "in-flight"))  # never the user's cache, where real runs count each other
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_is_the_one_that_runs(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run([sys.executable, "-c", "import bench, methods; print(bench.__file__); print(methods.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(line.startswith(str(installed)) for line in out.stdout.split()), out.stdout


HELP_ALL = """
import contextlib, io, sys
from bench.cli import main
for args in {commands!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit as exc:  # argparse exits 0 after printing help
            assert exc.code == 0, (args, exc.code)
    assert out.getvalue().startswith("usage:"), args
print(len({commands!r}), "commands")
"""


def test_every_command_has_help_from_another_folder(installed, tmp_path):
    # one interpreter for all of them: the installed package's parser, without a process start per command
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run([sys.executable, "-c", HELP_ALL.format(commands=COMMANDS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"{len(COMMANDS)} commands" in proc.stdout, proc.stderr[-1000:]


def test_a_tiny_run_and_its_tables_from_another_folder(installed, tmp_path):
    stats = _bench(installed, tmp_path, "data", "stats", "Beauty")
    assert stats.returncode == 0 and "22,363" in stats.stdout, stats.stderr  # the manifest is package data
    run = _bench(installed, tmp_path, "run", "--method", "sasrec", "--dataset", "Beauty", "--max-users", "200",
                 "--epochs", "1", "--threads", "1")
    assert run.returncode == 0, run.stderr[-1000:]
    [record] = (tmp_path / "results" / "runs").glob("sasrec-Beauty-*.json")  # ./results of the working directory
    assert record.is_file()
    tables = _bench(installed, tmp_path, "leaderboard")
    assert tables.returncode == 0, tables.stderr[-1000:]
    assert (tmp_path / "results" / "leaderboard.md").is_file()


def test_added_datasets_run_and_tabulate_from_another_folder(installed, tmp_path):
    """`data add` of a generated CSV, a RecBole .inter file and a shipped dataset's round trip, then a run on
    an added dataset and its tables, all from the installed package: the added data live in the data folder
    ($BENCH_DATA_DIR), not in the package."""
    from tests.test_userdata import shipped_as_ratings, walks, write

    write(tmp_path / "walks.csv", walks(), "csv")
    write(tmp_path / "walks.inter", walks(), "inter")
    shipped_as_ratings("Beauty", tmp_path / "beauty.csv")
    # one interpreter for the five commands (each exit code checked), without a process start per command
    script = ("import sys\nfrom bench.cli import main\nfor args in ("
              "['data', 'add', 'walks', 'walks.csv'], ['data', 'add', 'walks_inter', 'walks.inter'], "
              "['data', 'add', 'beauty_again', 'beauty.csv'], "
              "['run', '--method', 'sasrec', '--dataset', 'walks', '--profile', 'smoke', '--epochs', '1', '--threads', '1'], "
              "['leaderboard']):\n    code = main(args)\n    assert code == 0, (args, code)\n")
    proc = _bench_python(installed, tmp_path, script)
    assert proc.returncode == 0, proc.stderr[-1000:]
    added = tmp_path / "data" / "added"
    assert (added / "beauty_again.txt").read_bytes() == (SHARED / "datasets" / "Beauty.txt").read_bytes()
    assert (added / "walks.txt").read_bytes() == (added / "walks_inter.txt").read_bytes()
    assert list((tmp_path / "results" / "runs").glob("sasrec-walks-s1-*.json"))
    table = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "Added with `bench data add`: walks" in table
    assert "all users, 1 epoch (patience 2) on walks" in table  # its 150 users, fewer than smoke's 1,200


@pytest.mark.slow
def test_a_fresh_virtual_environment_installs_and_runs(tmp_path):
    """`pip install .` into a new venv with every dependency (minutes: torch, ray, optuna)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0", str(REPO)], check=True, timeout=1800)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(BENCH_DATA_MIRROR=str(SHARED / "datasets"), BENCH_DATA_DIR=str(tmp_path / "data"),
               BENCH_CHECKPOINTS=str(tmp_path / "checkpoints"), BENCH_IN_FLIGHT=str(tmp_path / "in-flight"))
    for args in COMMANDS:
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "bench", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr[-500:])
    run = subprocess.run([str(venv / "bin" / "python"), "-m", "bench", "run", "--method", "sasrec", "--dataset",
                          "Beauty", "--max-users", "200", "--epochs", "1", "--threads", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-1000:]
