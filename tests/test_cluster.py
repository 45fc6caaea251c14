"""The grid on a started Ray cluster, and the faults of one: a node lost, a SIGTERM, an address that does
not answer, a head that dies (docs/reliability.md, "Ray clusters").

The cluster is two Ray nodes on this machine, started with `ray start` as a user would (a head, then a
worker joining it), each with 1 CPU, its own ports and its own temp folder, and with token authentication.
Every process of a node carries an owner token in its environment (bench/campaign/reaper.py), so that the
fixture, and a test that kills a node, find exactly the processes they started, and never another Ray of
the machine; the finalizer kills them whatever the tests did. Runs are tiny (150 Beauty users).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.campaign import reaper
from bench.core import checkpoints
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
# `ray`, the command a user runs; its module where the environment has no script beside the interpreter
RAY = [str(Path(sys.executable).with_name("ray"))] if Path(sys.executable).with_name("ray").exists() else [
    sys.executable, "-m", "ray.scripts.scripts"]
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds Ray's processes in /proc")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """Two Ray nodes started with `ray start`; `kill_worker` stops the second as a lost machine would."""

    def __init__(self, head_cpus: int = 1) -> None:
        self.head_cpus = head_cpus
        # Short: Ray's socket paths below it must fit in 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="bray-", dir="/tmp"))
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.tokens = {"head": reaper.new_token(), "worker": reaper.new_token()}
        self.address = f"127.0.0.1:{_free_port()}"

    def _start(self, node: str, *args: str, cpus: int = 1) -> None:
        ports = {f"--{name}-port": str(_free_port()) for name in (
            "node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export",
            "runtime-env-agent")}
        env = {**os.environ, **self.auth, reaper.TOKEN_VAR: self.tokens[node], "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        cmd = [*RAY, "start", *args, "--num-cpus", str(cpus), "--object-store-memory", str(80 * 2**20),
               "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *[x for kv in ports.items() for x in kv]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"ray start ({node}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    def start(self) -> Cluster:
        port = self.address.rsplit(":", 1)[1]
        self._start("head", "--head", "--port", port, "--temp-dir", str(self.temp), "--include-dashboard", "false",
                    "--dashboard-port", str(_free_port()), cpus=self.head_cpus)
        self._start("worker", "--address", self.address)
        return self

    def processes(self, node: str) -> list[int]:
        return [pid for pid, token in reaper.tokens().items() if token == self.tokens[node]]

    def tasks(self, node: str) -> list[int]:
        """The node's workers that are running a run of the grid now."""
        return [pid for pid in self.processes(node) if _cmdline(pid).startswith("ray::_run_one")]

    def kill_worker(self) -> int:
        pids = self.processes("worker")
        reaper.kill(pids)
        return len(pids)

    def stop(self) -> None:
        for _ in range(3):  # processes may be starting while the first are killed
            reaper.kill([pid for node in self.tokens for pid in self.processes(node)])
            time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    made = Cluster()
    try:
        yield made.start()
    finally:
        made.stop()


def _grid_argv(results: Path, *extra: str) -> list[str]:
    return ["run", "--all", "--methods", "sasrec", "--datasets", "Beauty", "--max-users", "150",
            "--results", str(results), *extra]


def _grid_args(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", *_grid_argv(results, *extra)]


def _env(cluster: Cluster, checkpoints_dir: Path) -> dict:
    env = {**os.environ, **cluster.auth, "OMP_NUM_THREADS": "1", "BENCH_CHECKPOINTS": str(checkpoints_dir)}
    env.pop("RAY_ADDRESS", None)
    env.pop(reaper.TOKEN_VAR, None)
    return env


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the grid ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_to_a_grid_on_a_cluster_records_its_runs_interrupted_and_a_rerun_resumes(cluster, tmp_path):
    results, ckpts = tmp_path / "results", tmp_path / "checkpoints"
    args = _grid_args(results, "--seeds", "1", "2", "--epochs", "30", "--patience", "30", "--checkpoint-every", "2",
                      "--address", cluster.address)
    env = _env(cluster, ckpts)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # both runs in flight (one per node) and past their first checkpoint
        _wait_for(lambda: len(list(ckpts.glob("*/last.pt"))) == 2, 180, "two checkpoints", proc)
        assert cluster.tasks("head") and cluster.tasks("worker")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "error: terminated (SIGTERM): 2 run(s) recorded interrupted" in err
    stopped = _records(results)
    assert [r["status"] for r in stopped] == ["interrupted", "interrupted"]
    for record in stopped:  # the boundary reached when the signal came, not only the last every-2 one
        assert checkpoints.epochs_done(ckpts, record["run_id"]) == record["interrupted"]["epochs_done"] >= 2
    assert not list((results / "claims").glob("*"))
    _wait_for(lambda: not cluster.tasks("head") + cluster.tasks("worker"), 20, "end of the cancelled tasks")

    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    done = {r["run_id"]: r for r in _records(results)}
    assert len(done) == 2 and all(r["status"] == "ok" for r in done.values())
    for record in stopped:
        assert done[record["run_id"]]["resumed_from_epoch"] == record["interrupted"]["epochs_done"]
    assert not list(ckpts.glob("*/last.pt"))


@pytest.mark.slow  # about a minute: a cluster of three nodes started, one killed mid-grid
def test_a_grid_on_a_cluster_that_loses_a_node_keeps_every_record(cluster, tmp_path):
    results, ckpts = tmp_path / "results", tmp_path / "checkpoints"
    args = _grid_args(results, "--seeds", "1", "2", "3", "--epochs", "12", "--patience", "12",
                      "--checkpoint-every", "1", "--address", cluster.address)
    env = _env(cluster, ckpts)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(list(ckpts.glob("*/last.pt"))) == 2, 180, "two checkpoints", proc)
        assert cluster.tasks("worker"), "no run on the worker node to lose"
        killed = cluster.kill_worker()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed >= 2  # its raylet and the worker training a run, at least
    assert proc.returncode == 0, err[-3000:]
    assert "grid: 3 ok, 0 failed, 0 skipped" in out
    final = _records(results)
    assert len(final) == 3 and sorted(r["seed"] for r in final) == [1, 2, 3]
    assert all(r["status"] == "ok" for r in final)
    # the run of the lost node was run again on the head, from the checkpoint its first attempt left
    assert [r["resumed_from_epoch"] >= 1 for r in final if r.get("resumed_from_epoch")] == [True]
    assert not list((results / "claims").glob("*")) and not list((results / "runs").glob(".*"))
    assert not cluster.processes("worker")
    _wait_for(lambda: not cluster.tasks("head"), 20, "end of the grid's tasks")

    before = {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "grid: 3 runs, 3 already done (skipped), 0 to run" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()} == before


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_an_address_where_no_cluster_answers_is_one_line(tmp_path, how, capsys, monkeypatch):
    # In this process: the probe refuses the address before ray.init (bench/campaign/executors.py), so no
    # cluster is joined and no Ray state is left; $RAY_ADDRESS is read when the grid starts Ray.
    port = _free_port()  # nothing listens there
    extra = ["--address", f"127.0.0.1:{port}"] if how == "--address" else []
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    start = time.monotonic()
    code, _, err = run_cli(_grid_argv(tmp_path, "--seeds", "1", "--epochs", "1", *extra), capsys)
    took = time.monotonic() - start
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert errors == [f"error: no Ray cluster answers at 127.0.0.1:{port} ({how}): connection refused; start its "
                      f"head there (ray start --head --port {port}), or leave out --address and RAY_ADDRESS for a "
                      "local Ray"]
    assert took < 30
    assert not list((tmp_path / "runs").glob("*"))


@pytest.mark.slow
def test_a_cluster_whose_head_dies_while_the_grid_waits_is_one_line(tmp_path):
    dying = Cluster()
    try:
        dying.start()
        results, ckpts = tmp_path / "results", tmp_path / "checkpoints"
        args = _grid_args(results, "--seeds", "1", "2", "--epochs", "200", "--patience", "200", "--checkpoint-every",
                          "1", "--address", dying.address)
        proc = subprocess.Popen(args, cwd=REPO, env=_env(dying, ckpts), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: len(list(ckpts.glob("*/last.pt"))) == 2, 180, "two checkpoints", proc)
            reaper.kill(dying.processes("head"))
            killed_at = time.monotonic()
            out, err = proc.communicate(timeout=120)
            took = time.monotonic() - killed_at
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        dying.stop()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, err[-3000:]
    assert errors[0].startswith("error: the Ray cluster at ") and "stopped answering" in errors[0]
    assert "2 run(s) in flight recorded interrupted" in errors[0]
    assert took < 30
    assert [r["status"] for r in _records(results)] == ["interrupted", "interrupted"]
    assert not list((results / "claims").glob("*"))


@pytest.mark.slow
def test_a_cluster_left_without_a_node_that_can_take_a_run_is_one_line(tmp_path):
    # The head has no CPU (as on many clusters): once the only worker node is lost, Ray would hold the run it
    # retries until a node with a CPU joins; the grid says so after LOST_AFTER_S instead of waiting forever.
    lonely = Cluster(head_cpus=0)
    try:
        lonely.start()
        results, ckpts = tmp_path / "results", tmp_path / "checkpoints"
        args = _grid_args(results, "--seeds", "1", "--epochs", "200", "--patience", "200", "--checkpoint-every", "1",
                          "--address", lonely.address)
        proc = subprocess.Popen(args, cwd=REPO, env=_env(lonely, ckpts), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: len(list(ckpts.glob("*/last.pt"))) == 1, 180, "a checkpoint", proc)
            lonely.kill_worker()
            killed_at = time.monotonic()
            out, err = proc.communicate(timeout=120)
            took = time.monotonic() - killed_at
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        lonely.stop()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and errors == [
        "error: no node left in the Ray cluster can take a run of 1 CPU and 0 GPU (it has 0 CPU and 0 GPU: nodes "
        "were lost); 1 run(s) in flight recorded interrupted; run the same command again once the cluster is back"
    ], err[-3000:]
    assert took < 30
    [record] = _records(results)
    assert record["status"] == "interrupted" and record["interrupted"]["checkpoint"]
    assert not list((results / "claims").glob("*"))
