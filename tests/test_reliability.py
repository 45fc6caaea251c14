"""Nothing lost, nothing silently wrong: the grid and single-run cases of docs/reliability.md.

Each case is a hostile input or a fault; each must end in one line naming the problem and a non-zero exit,
before any training is spent where the problem is known up front, and with nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.campaign.claims import Claims
from tests.conftest import REFERENCE_CHECKPOINT, CliResult, run_cli

REPO = Path(__file__).resolve().parent.parent
TINY = ["--max-users", "150", "--epochs", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# In-process runs train on one torch thread, as the subprocesses of this module do (ENV).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(code: int, err: str, needle: str, expected: int = 2) -> None:
    """`python -m bench` ended with `expected` and said why in one `error: ` line naming `needle`."""
    assert code == expected, (code, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], err[-2000:]
    assert "Traceback" not in err


def cli_error(result: CliResult, needle: str, expected: int = 2) -> None:
    one_line_error(result.code, result.err, needle, expected)


# ------------------------------------------------------------------- output locations, before the work
def test_results_that_is_a_file_fails_before_any_training(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    for argv in (["run", "--method", "sasrec", "--dataset", "Beauty", *TINY],
                 ["run", "--all", "--executor", "local", "--methods", "sasrec", "--datasets", "Beauty", *TINY]):
        start = time.perf_counter()
        result = run_cli([*argv, "--results", target], capsys)
        cli_error(result, f"cannot be made: {target} is a file, not a folder")
        assert time.perf_counter() - start < 60
        assert "sasrec/Beauty" not in result.err  # the training loop's bar: no epoch was started


def test_checkpoint_path_that_is_a_folder_fails_before_training(tmp_path, capsys):
    result = run_cli(["run", "--method", "sasrec", "--dataset", "Beauty", *TINY, "--results", tmp_path,
                      "--save-checkpoint", tmp_path], capsys)
    cli_error(result, "is a folder")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_leaderboard_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    out = tmp_path / "out-file"
    out.write_text("x")
    cli_error(run_cli(["leaderboard", "--results", tmp_path, "--out", out], capsys), "is a file, not a folder")


# --------------------------------------------------------------------------------- divergence
def test_a_diverging_single_run_is_recorded_as_failed_with_its_reason(tmp_path, capsys):
    result = run_cli(["run", "--method", "sasrec", "--dataset", "Beauty", "--max-users", "600", "--epochs", "1",
                      "--set", "lr=1e9", "--results", tmp_path], capsys)
    cli_error(result, "non-finite loss at epoch 0, step", expected=1)
    [path] = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["error"].startswith("non-finite loss at epoch 0, step")


def test_a_diverging_run_in_the_grid_is_a_failed_record(tmp_path, capsys):
    result = run_cli(["run", "--all", "--executor", "local", "--methods", "sasrec", "--datasets", "Beauty",
                      "--seeds", "1", "--max-users", "600", "--epochs", "1", "--set", "lr=1e9", "--results", tmp_path],
                     capsys)
    assert result.code == 1 and "non-finite loss at epoch 0" in result.err, result.err[-2000:]
    [path] = (tmp_path / "runs").glob("*.json")
    assert json.loads(path.read_text())["status"] == "failed"


# ---------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "../pyproject"], "unknown dataset '../pyproject'"),
        (["--seed", str(2**63)], "--seed must be in"),
        (["--max-users", "0"], "--max-users must be >= 1"),
        (["--max-users", "-5"], "--max-users must be >= 1"),
        (["--threads", "-1"], "--threads must be >= 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--patience", "0"], "--patience must be >= 1"),
        (["--set", "lr=nan"], "not a finite number"),
        (["--set", "rec_loss=softmax"], "rec_loss must be bce, ce or ce_last, got 'softmax'"),
        (["--set", "rec_loss=ce_last"], "rec_loss ce_last needs prefix examples"),
    ],
)
def test_bad_run_values_are_one_line_errors(tmp_path, capsys, argv, needle):
    base = {"--method": "sasrec", "--dataset": "Beauty"}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    flat = [x for pair in base.items() for x in pair]
    cli_error(run_cli(["run", *flat, "--results", tmp_path], capsys), needle)


def _damaged_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    state = torch.load(REFERENCE_CHECKPOINT, map_location="cpu", weights_only=True)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "position_embeddings.weight"}, missing)
    short = tmp_path / "short.pt"
    torch.save({**state, "position_embeddings.weight": state["position_embeddings.weight"][:10]}, short)
    layer = tmp_path / "layer.pt"
    key = next(k for k in state if k.endswith("dense.weight"))
    torch.save({**state, key: state[key][:, :7]}, layer)
    return {
        "empty": (empty, "is empty (0 bytes)"),
        "garbage": (garbage, "cannot read checkpoint"),
        "missing": (missing, "has no position_embeddings.weight"),
        "short": (short, "has 10 position rows"),
        "layer": (layer, "does not fit iclrec"),
    }


@pytest.mark.skipif(not REFERENCE_CHECKPOINT.is_file(), reason="the published checkpoint is not in ../shared")
def test_damaged_checkpoints_are_one_line_errors(tmp_path, capsys):
    from bench.core import weights
    from bench.core.errors import BenchError

    for name, (path, needle) in _damaged_checkpoints(tmp_path).items():
        with pytest.raises(BenchError, match=re.escape(needle)) as info:
            weights.method_from_checkpoint("iclrec", "Beauty", str(path), "cpu")
        assert "\n" not in str(info.value), name
    # and through the command line, once, for the exit code and the one line
    cli_error(run_cli(["evaluate", "--method", "iclrec", "--dataset", "Beauty", "--checkpoint", tmp_path / "empty.pt"],
                      capsys), "is empty")


# ------------------------------------------------------------------------------------ run claims
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_of_a_dead_owner_is_taken_over_and_a_live_one_is_not(tmp_path):
    claims_dir = tmp_path / "claims"
    claims_dir.mkdir()
    with Claims(tmp_path) as mine:
        host = mine.owner["host"]
        (claims_dir / "dead.claim").write_text(json.dumps({"host": host, "pid": _dead_pid(), "token": "x"}))
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (claims_dir / "live.claim").write_text(json.dumps({"host": host, "pid": sleeper.pid, "token": "y"}))
            assert mine.try_claim("dead") and "dead" in mine.held
            assert not mine.try_claim("live")
            assert json.loads((claims_dir / "live.claim").read_text())["token"] == "y"  # untouched
        finally:
            sleeper.kill()
        # A claim on another host counts as stale only once its heartbeat is older than the limit.
        other = claims_dir / "remote.claim"
        other.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "z"}))
        assert not mine.try_claim("remote")
        old = time.time() - 10 * mine.stale_after_s
        os.utime(other, (old, old))
        assert mine.try_claim("remote")
    # A grid that stops releases its own claims, and only those.
    assert sorted(p.name for p in claims_dir.glob("*.claim")) == ["live.claim"]


def test_two_grids_on_one_folder_share_the_runs(tmp_path):
    argv = [sys.executable, "-m", "bench", "run", "--all", "--executor", "local", "--methods", "sasrec", "cl4srec",
            "--datasets", "Beauty", "Yelp", "--seeds", "1", *TINY, "--results", str(tmp_path)]
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    second = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == second.returncode == 0, [o[1][-1500:] for o in outs]
    trained = 0
    for stdout, _ in outs:
        summary = next(line for line in stdout.splitlines() if line.startswith("grid: ") and " ok, " in line)
        trained += int(summary.split()[1])
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 4 and trained == 4, "every run trained exactly once between the two grids"
    assert not list((tmp_path / "claims").glob("*.claim"))


def test_a_damaged_cache_offline_says_the_cached_copy_failed(monkeypatch, tmp_path):
    import urllib.error

    from bench.core import data
    from bench.core.errors import BenchError

    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BENCH_DATA_MIRROR", raising=False)
    (tmp_path / data.load_manifest("Beauty").file).write_text("1 2 3 4 5\n")  # not the verified file

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(BenchError, match="cached copy .* failed sha256 verification.*BENCH_DATA_MIRROR"):
        data.download("Beauty")


def test_downloaded_files_are_readable_by_others(monkeypatch, tmp_path):
    from bench.core import data

    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    path = data.download("Beauty", force=True)
    assert path.stat().st_mode & 0o044 == 0o044  # group and others may read a shared data folder


def test_damaged_records_are_skipped_and_named_on_the_terminal(tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    runs.mkdir()
    good = sorted((REPO / "results" / "runs").glob("sasrec-Beauty-s1-smoke-*.json"))[0]
    shutil.copy(good, runs / good.name)
    base = json.loads(good.read_text())
    damaged = {
        "test-not-a-mapping": {**base, "test": [0.1, 0.2]},
        "string-metrics": {**base, "test": {**base["test"], "HR@5": "0.9"}},
        "future-schema": {**base, "schema": 99},
        "odd-status": {**base, "status": "done?"},
    }
    for name, record in damaged.items():
        (runs / f"sasrec-Beauty-s1-smoke-{name}.json").write_text(json.dumps(record))
    result = run_cli(["leaderboard", "--results", tmp_path, "--out", tmp_path / "out"], capsys)
    assert result.code == 0, result.err[-2000:]
    warned = [line for line in result.err.splitlines() if line.startswith("warning: skipped unreadable record")]
    assert len(warned) == len(damaged)
    from bench.core.records import load_records

    assert len(load_records(tmp_path)) == 1  # only the intact record enters the tables
    assert "4 unreadable file(s)" in (tmp_path / "out" / "leaderboard.md").read_text()


# ------------------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root); elsewhere a folder whose writers get a 1 KiB file-size limit. Yields the folder
    and `fill()`, which leaves one page free on the tmpfs (a claim fits, no record or checkpoint does) and
    returns the limit to set in the next process (None on the tmpfs)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False

    def fill() -> int | None:
        if not mounted:
            return 1024
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 4096))
        return None

    try:
        yield disk, fill
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(small_disk, capsys):
    import resource

    disk, fill = small_disk
    results = disk / "results"
    grid = ["run", "--all", "--executor", "local", "--methods", "sasrec", "--datasets", "Beauty", *TINY,
            "--results", str(results), "--checkpoint-every", "1", "--checkpoint-dir", str(disk / "checkpoints")]
    first = run_cli([*grid, "--seeds", "1"], capsys)  # the record that must survive: written in this process
    assert first.code == 0, first.err[-2000:]
    [earlier] = (results / "runs").glob("*.json")
    kept = earlier.read_bytes()
    limit = fill()

    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # A process of its own: the file-size limit must bind the writer only, and what it leaves is what a
    # process that hit the full disk leaves.
    proc = subprocess.run([sys.executable, "-m", "bench", *grid, "--seeds", "1", "2", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**ENV, "PYTHONDONTWRITEBYTECODE": "1"},
                          preexec_fn=limited)
    one_line_error(proc.returncode, proc.stderr, f"cannot write {results / 'runs'}/sasrec-Beauty-s2-")
    assert ("No space left on device" if limit is None else "File too large") in proc.stderr
    assert earlier.read_bytes() == kept and [p.name for p in (results / "runs").iterdir()] == [earlier.name]
    assert not list((results / "claims").iterdir())
    left = [p.name for p in disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert not [name for name in left if name.startswith(".") or name.endswith(".tmp")], left
    for path in (disk / "checkpoints").glob("*/last.pt"):  # none half-written: each one loads
        torch.load(path, weights_only=False)
