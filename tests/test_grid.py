"""The grid runner (`python -m bench run --all`): executors, resume, failures, interruption, name checks.

Runs are tiny (150 users of Beauty, 1 epoch) because what is tested is the bookkeeping around them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.campaign import grid
from bench.core import outcomes
from bench.core.errors import BenchError
from tests.conftest import CliResult, run_cli

REPO = Path(__file__).resolve().parent.parent
TINY = ["--datasets", "Beauty", "--max-users", "150", "--epochs", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process runs: one torch thread (tests/conftest.py)


def grid_cli(capsys, results: Path, *extra: str) -> CliResult:
    """`python -m bench run --all EXTRA --results RESULTS`, in this process (capsys None: in a fixture)."""
    return run_cli(["run", "--all", *extra, "--results", results], capsys)


def bench_grid(results: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The same in a process of its own: for grids that start a local Ray, whose driver is that process."""
    cmd = [sys.executable, "-m", "bench", "run", "--all", *extra, "--results", str(results)]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def record_files(results: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def mtimes(results: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory, one_torch_thread) -> Path:
    results = tmp_path_factory.mktemp("local")
    done = grid_cli(None, results, "--executor", "local", "--methods", "sasrec", "cl4srec", "--seeds", "1", *TINY)
    assert done.code == 0, done.err
    assert "grid: 2 ok, 0 failed, 0 skipped" in done.out
    return results


@pytest.mark.slow  # the same grid again through Ray: half a minute; a Ray grid stays in the default suite (the failing-run test)
def test_local_and_ray_records_share_a_schema(local_grid, tmp_path):
    proc = bench_grid(tmp_path, "--executor", "ray", "--methods", "sasrec", "cl4srec", "--seeds", "1", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "grid: 2 ok, 0 failed, 0 skipped" in proc.stdout
    local, ray = record_files(local_grid), record_files(tmp_path)
    # The run id ignores how a run is executed, so both executors name the same files.
    assert sorted(local) == sorted(ray) and len(local) == 2
    for name in local:
        a, b = local[name], ray[name]
        assert a["status"] == b["status"] == "ok"
        assert list(a) == list(b)
        assert a["epochs"][0].keys() == b["epochs"][0].keys()
        assert a["totals"].keys() == b["totals"].keys()
        assert a["memory"].keys() == b["memory"].keys()
        assert a["totals"]["epochs_run"] == b["totals"]["epochs_run"] == 1
        # Execution context and per-user ranks travel from the Ray worker to the driver's record as well.
        assert a["context"].keys() == b["context"].keys() and b["context"]["threads"] == 1
        assert a["ranks"]["encoding"] == b["ranks"]["encoding"] and b["ranks"]["test"]
    # Ray runs get one thread per reserved CPU, and the CPU device on a machine without GPUs.
    assert all(r["spec"]["num_threads"] == 1 and r["device"] == "cpu" for r in ray.values())


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_second_invocation_skips_everything(local_grid, capsys, executor):
    # in this process for Ray too: a grid with nothing to run starts no Ray (bench/campaign/grid.py)
    before = mtimes(local_grid)
    done = grid_cli(capsys, local_grid, "--executor", executor, "--methods", "sasrec", "cl4srec", "--seeds", "1", *TINY)
    assert done.code == 0, done.err
    assert "grid: 0 ok, 0 failed, 2 skipped" in done.out
    assert "2 already done (skipped), 0 to run" in done.out
    assert mtimes(local_grid) == before  # nothing rewritten, nothing added


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, capsys, executor):
    # K = 100000 intents for 150 users: iclrec raises a BenchError inside the run; sasrec has no such key.
    args = [
        "--executor",
        executor,
        "--methods",
        "sasrec",
        "iclrec",
        "--seeds",
        "1",
        *TINY,
        "--set",
        "num_intents=100000",
    ]
    # Ray: the grid's own process, the driver of the local Ray it starts and shuts down; local: in this one
    if executor == "ray":
        proc = bench_grid(tmp_path, *args)
        done = CliResult(proc.returncode, proc.stdout, proc.stderr)
    else:
        done = grid_cli(capsys, tmp_path, *args)
    assert done.code == 1, done.err[-2000:]
    assert "grid: 1 ok, 1 failed, 0 skipped" in done.out
    assert "Traceback" not in done.err and "Traceback" not in done.out
    assert "failed: iclrec Beauty seed 1: iclrec on Beauty: num_intents 100000 exceeds" in done.err
    by_method = {r["method"]: r for r in record_files(tmp_path).values()}
    assert by_method["sasrec"]["status"] == "ok" and by_method["sasrec"]["config_source"] == "paper"
    # The run had this process's priority, through Ray too (Ray's own default would be nice 15)
    assert by_method["sasrec"]["context"]["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)
    failed = by_method["iclrec"]
    assert failed["status"] == "failed"
    assert (
        failed["error"].startswith("iclrec on Beauty: num_intents 100000 exceeds")
        and "\n" not in failed["error"]
    )
    assert "BenchError" in failed["traceback"] and failed["config"]["num_intents"] == 100000
    if executor == "local":
        # A failed record is not done: the next invocation retries it and replaces it in place.
        before = mtimes(tmp_path)
        again = grid_cli(capsys, tmp_path, *args)
        assert again.code == 1
        assert "grid: 0 ok, 1 failed, 1 skipped" in again.out
        after = mtimes(tmp_path)
        assert after.keys() == before.keys()
        sasrec_file = next(name for name in before if name.startswith("sasrec"))
        iclrec_file = next(name for name in before if name.startswith("iclrec"))
        assert after[sasrec_file] == before[sasrec_file] and after[iclrec_file] > before[iclrec_file]


def test_a_killed_grid_resumes_without_losing_finished_runs(tmp_path, capsys):
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--all",
        "--executor",
        "local",
        "--methods",
        "sasrec",
        "--seeds",
        "1",
        "2",
        "3",
        *TINY,
        "--results",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 240
    try:
        while not list(runs.glob("*.json")):
            assert proc.poll() is None, "the grid ended before its first record appeared"
            assert time.monotonic() < deadline, "no record after 240 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    survivors = record_files(tmp_path)
    assert 1 <= len(survivors) < 3
    assert all(r["status"] == "ok" for r in survivors.values())
    assert sorted(p.name for p in runs.iterdir()) == sorted(survivors)  # no temp files left behind
    before = mtimes(tmp_path)

    # the grid killed above needed a process of its own (SIGKILL); the one that resumes does not
    done = grid_cli(capsys, tmp_path, "--executor", "local", "--methods", "sasrec", "--seeds", "1", "2", "3", *TINY)
    assert done.code == 0, done.err
    assert f"grid: {3 - len(before)} ok, 0 failed, {len(before)} skipped" in done.out
    final = record_files(tmp_path)
    assert len(final) == 3 and all(r["status"] == "ok" for r in final.values())
    assert sorted(r["seed"] for r in final.values()) == [1, 2, 3]
    assert {name: mtimes(tmp_path)[name] for name in before} == before


@pytest.mark.parametrize(
    "option, message",
    [
        (["--methods", "sasrec", "nosuch"], "error: unknown method 'nosuch'"),
        (["--datasets", "Nowhere"], "error: unknown dataset 'Nowhere'"),
        (["--profile", "huge"], "error: unknown profile 'huge'"),
    ],
)
def test_unknown_names_stop_the_grid_before_any_work(tmp_path, capsys, option, message):
    code, _, err = grid_cli(capsys, tmp_path, "--executor", "local", *option)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ in-process, no training
def test_profile_label_is_custom_only_when_the_budget_differs():
    smoke = grid.grid_specs(datasets=["Beauty"], profile="smoke", epochs=2)
    # six methods x one dataset x seed 1, and the GRU4Rec column: ICSRec on gru4rec
    assert {s.profile for s in smoke} == {"smoke"} and len(smoke) == 7
    assert [s.method for s in smoke] == ["sasrec", "cl4srec", "iclrec", "elcrec", "icsrec", "icsrec", "duorec"]
    assert [s.config.encoder for s in smoke if s.method == "icsrec"] == ["sasrec", "gru4rec"]
    custom = grid.grid_specs(datasets=["Beauty"], profile="smoke", epochs=3)
    assert {s.profile for s in custom} == {"custom"} and {s.epochs for s in custom} == {3}
    paper = grid.grid_specs(["sasrec"])
    assert {s.profile for s in paper} == {"paper"} and len(paper) == 4 * 3  # every dataset, seeds 1-3
    assert len(grid.grid_specs(["iclrec"], ["Beauty"], profile="paper")) == 3  # no extra column there


def test_the_smoke_gru4rec_column_keeps_other_settings_and_is_never_run_twice():
    specs = grid.grid_specs(["icsrec"], ["Beauty"], profile="smoke", set_pairs=["lr=0.002"])
    assert [(s.config.encoder, s.config.lr) for s in specs] == [("sasrec", 0.002), ("gru4rec", 0.002)]
    same = grid.grid_specs(["icsrec"], ["Beauty"], profile="smoke", set_pairs=["encoder=gru4rec"])
    assert [s.config.encoder for s in same] == ["gru4rec"]  # the extra column is that run already


def test_overrides_reach_the_methods_that_have_the_key():
    per = grid.split_overrides(
        ["num_intents=64", "elcrec.num_intents=32", "lr=0.01"], ["sasrec", "iclrec", "elcrec"]
    )
    assert per["sasrec"] == {"lr": "0.01"}
    assert per["iclrec"] == {"num_intents": "64", "lr": "0.01"}
    assert per["elcrec"] == {"num_intents": "32", "lr": "0.01"}
    with pytest.raises(BenchError, match="no method of this grid"):
        grid.split_overrides(["no_such_key=1"], ["sasrec", "iclrec"])
    with pytest.raises(BenchError, match="not in this grid"):
        grid.split_overrides(["iclrec.num_intents=1"], ["sasrec"])


def test_failure_messages_are_one_line():
    assert outcomes.failure_message(BenchError("bad K")) == "bad K"
    assert outcomes.failure_message(RuntimeError("boom\nsecond line")) == "RuntimeError: boom"
    assert outcomes.failure_message(KeyError()) == "KeyError"


def test_executor_options_are_checked(tmp_path):
    specs = grid.grid_specs(["sasrec"], ["Beauty"], [1], profile="smoke")
    with pytest.raises(BenchError, match="unknown executor"):
        grid.run_grid(specs, tmp_path, executor="dask")
    with pytest.raises(BenchError, match="only apply to --executor ray"):
        grid.run_grid(specs, tmp_path, executor="local", gpus_per_run=0.25)
