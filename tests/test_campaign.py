"""Campaigns, checked on the CPU in seconds: mid-run checkpoints and resume parity,
the interrupted state, the time-boxed scheduler's order and refusals, the budget stop, `bench status`, and
fractional-GPU packing through Ray with logical GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from bench.core import checkpoints, train
from bench.core.errors import BenchError
from tests.conftest import run_cli, synthetic_spec

MAX_LEN = 20
TINY = {"num_layers": 1, "hidden_size": 32, "batch_size": 64, "max_len": MAX_LEN}
METHODS = ("sasrec", "cl4srec", "iclrec", "elcrec")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py, as the execution tests


def tiny_spec(method: str, epochs: int = 4, **kwargs) -> train.RunSpec:
    intents = {"num_intents": 16} if method in ("iclrec", "elcrec") else {}
    return synthetic_spec(method, epochs=epochs, patience=epochs, overrides={**TINY, **intents}, **kwargs)


def stop_after(n: int):
    return lambda epochs_done: f"stopped after {n}" if epochs_done == n else None


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("method", METHODS)
def test_two_epochs_resume_two_epochs_gives_the_uninterrupted_curve(method, tiny_data, tmp_path):
    whole = train.run(tiny_spec(method), data=tiny_data, progress=False)
    spec = tiny_spec(method, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    first = train.run(spec, data=tiny_data, progress=False, stop_when=stop_after(2))
    assert first["status"] == "interrupted" and first["test"] is None
    assert first["interrupted"]["epochs_done"] == 2 and first["interrupted"]["max_epochs"] == 4
    path = checkpoints.checkpoint_path(tmp_path, first["run_id"])
    assert path.is_file() and checkpoints.epochs_done(tmp_path, first["run_id"]) == 2
    if method == "iclrec":  # the next E-step warm-starts from these: the checkpoint must hold them
        saved = checkpoints.load(path, first["run_id"]).buffers["centroids"]
        assert saved.shape == (16, TINY["hidden_size"]) and saved.abs().sum() > 0
    torch.manual_seed(12345)  # whatever happened in between, the checkpoint restores every stream
    second = train.run(spec, data=tiny_data, progress=False)
    assert second["status"] == "ok" and second["resumed_from_epoch"] == 2
    assert second["run_id"] == whole["run_id"] == first["run_id"]
    # to the bit: valid metrics and mean losses of every epoch, the best epoch and its test metrics
    assert [e["valid"] for e in second["epochs"]] == [e["valid"] for e in whole["epochs"]]
    assert [e["losses"] for e in second["epochs"]] == [e["losses"] for e in whole["epochs"]]
    assert (second["best_epoch"], second["test"]) == (whole["best_epoch"], whole["test"])
    assert not path.exists()  # a finished run keeps its record, not its checkpoint


def test_a_run_logged_to_a_file_writes_one_line_per_epoch(tiny_data, capsys):
    # A campaign lane's log is a file: redrawn bars there are a wall of carriage returns; one line per epoch
    # (its valid score, the best so far, its phase times) is what `tail` of the log should show.
    record = train.run(tiny_spec("iclrec", epochs=2), data=tiny_data, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("iclrec/synthetic seed 1: epoch ")]
    assert [line.split(",")[0] for line in lines] == ["iclrec/synthetic seed 1: epoch 0 of 2",
                                                      "iclrec/synthetic seed 1: epoch 1 of 2"]
    for line, row in zip(lines, record["epochs"]):
        assert f"valid NDCG@20 {row['valid']['NDCG@20']:.4f}" in line and "estep " in line and "train " in line
        assert f"(training CPU {row['training_cpu_s']:.1f} s)" in line and line.endswith("1 run(s) in flight")


def test_each_invocation_of_a_resumed_run_is_a_segment_of_its_context(tiny_data, tmp_path, monkeypatch):
    from bench.core import context

    spec = tiny_spec("sasrec", checkpoint_every=1, checkpoint_dir=str(tmp_path))
    first = train.run(spec, data=tiny_data, progress=False, stop_when=stop_after(1))
    assert [s["first_epoch"] for s in first["context"]["segments"]] == [0]
    # The next invocation runs on another machine: its epochs are a segment of their own.
    monkeypatch.setattr(context, "cpu_model", lambda: "Other CPU")
    monkeypatch.setattr(context, "speed_probe", lambda: 0.5)  # and that machine is slower
    second = train.run(spec, data=tiny_data, progress=False, stop_when=stop_after(2))
    assert [(s["first_epoch"], s["cpu_model"]) for s in second["context"]["segments"]] == [
        (0, first["context"]["cpu_model"]), (1, "Other CPU")]
    # Each invocation timed the probe as it started: the first on this machine, the second "slower" one 0.5 s.
    first_probe = first["context"]["speed_probe_s"]
    assert 0 < first_probe < 0.5 and second["context"]["speed_probe_s"] == 0.5
    assert context.epoch_speed_probes(second["context"], second["epochs"]) == [first_probe, 0.5]
    keys = context.epoch_keys(second["context"], second["epochs"])
    assert keys[0] == context.comparable_key(first["context"]) and keys[1][1] == "Other CPU"
    # A checkpoint written before segments were kept: its epochs ran in a context nobody recorded.
    path = checkpoints.checkpoint_path(tmp_path, spec.run_id)
    state = torch.load(path, weights_only=False)
    del state["fit"]["segments"]
    torch.save(state, path)
    third = train.run(spec, data=tiny_data, progress=False)
    assert third["status"] == "ok" and third["resumed_from_epoch"] == 2
    segments = third["context"]["segments"]
    assert [s["first_epoch"] for s in segments] == [0, 2] and not context.recorded(segments[0])
    assert context.epoch_keys(third["context"], third["epochs"])[:2] == [None, None]


def _hold_in_flight(ready: Path) -> None:
    """A stand-in for a run of another process: counted in flight until killed."""
    from bench.core import context

    with context.in_flight_here():
        ready.touch()
        time.sleep(600)


def test_runs_in_flight_are_counted_on_the_host_across_processes(tiny_data, tmp_path):
    from bench.core import context

    assert context.runs_in_flight() == 0
    alone = train.run(tiny_spec("sasrec", epochs=2, num_threads=1), data=tiny_data, progress=False)
    assert alone["context"]["concurrency"] == 1 and alone["context"]["in_flight_counted"] == "host"
    assert [e["in_flight"] for e in alone["epochs"]] == [1, 1]
    # The training phases' CPU seconds: with one torch thread, not more than their wall seconds (and never 0).
    for e in alone["epochs"]:
        assert 0 < e["training_cpu_s"] <= (e["estep_s"] + e["train_s"]) * 1.05 + 0.01
    from bench.core import records  # the cost table's training CPU s/epoch: the median after the first epoch

    row = records.records_table([(alone, None)]).iloc[0]
    assert row["training_cpu_s_steady_median"] == alone["epochs"][1]["training_cpu_s"]
    # Another process's run (another grid, another campaign lane) trains beside it: both are counted.
    ready = tmp_path / "ready"
    other = multiprocessing.get_context("fork").Process(target=_hold_in_flight, args=(ready,))
    other.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert context.runs_in_flight() == 1
        beside = train.run(tiny_spec("sasrec", epochs=2, seed=2), data=tiny_data, progress=False)
        assert beside["context"]["concurrency"] == 2 and [e["in_flight"] for e in beside["epochs"]] == [2, 2]
        # Its epochs are keyed by what they shared: not comparable with the epochs run alone.
        alone_keys = context.epoch_keys(alone["context"], alone["epochs"])
        beside_keys = context.epoch_keys(beside["context"], beside["epochs"])
        assert alone_keys[1][3] == 1 and beside_keys[1][3] == 2 and alone_keys[1][:3] == beside_keys[1][:3]
    finally:
        other.kill()  # killed outright: its lock goes with it, and the next count removes its file
        other.join()
    assert context.runs_in_flight() == 0 and os.listdir(context.in_flight_folder()) == []


def test_an_epoch_keeps_the_most_runs_it_shared_the_host_with_not_only_those_at_its_ends(monkeypatch):
    from bench.core import context

    monkeypatch.setattr(context, "IN_FLIGHT_SAMPLE_S", 0.02)
    with context.in_flight_here() as host_runs:
        assert host_runs.take() == 1
        with context.in_flight_here():  # a short run that starts and ends within the epoch
            time.sleep(0.3)
        assert context.runs_in_flight() == 1
        assert host_runs.take() == 2  # it was seen while it ran
        assert host_runs.take() == 1  # the next epoch starts from the count at the boundary


def test_a_runs_in_flight_folder_that_cannot_be_written_is_a_one_line_error(tiny_data, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BENCH_IN_FLIGHT", str(blocker / "in-flight"))
    with pytest.raises(BenchError, match=r"^runs-in-flight folder \(\$BENCH_IN_FLIGHT\) .* cannot be made: .*a-file is a file"):
        train.run(tiny_spec("sasrec", epochs=1), data=tiny_data, progress=False)


def test_a_context_that_counted_only_its_grid_is_a_key_of_its_own():
    from bench.core import context

    host = {"recorded": True, "device": "cpu", "cpu_model": "Test CPU", "gpu_name": None, "threads": 1,
            "concurrency": 1, "in_flight_counted": "host"}
    grid = {k: v for k, v in host.items() if k != "in_flight_counted"}  # written before the host count
    assert context.comparable_key(grid) != context.comparable_key(host)
    assert context.comparable_key(grid)[4] == "grid"
    # An epoch's own count applies only where its segment counted on the host.
    ctx = {"segments": [{**grid, "first_epoch": 0}, {**host, "first_epoch": 2}]}
    keys = context.epoch_keys(ctx, [{"in_flight": 2}, {}, {"in_flight": 1}, {"in_flight": 2}])
    assert [k[3:] for k in keys] == [(1, "grid"), (1, "grid"), (1, "host"), (2, "host")]


def test_a_checkpoint_of_another_spec_is_refused(tiny_data, tmp_path):
    a = tiny_spec("sasrec", epochs=2, checkpoint_dir=str(tmp_path))
    rec = train.run(a, data=tiny_data, progress=False, stop_when=stop_after(1))
    b = tiny_spec("sasrec", epochs=3, checkpoint_dir=str(tmp_path))
    other_id = b.run_id
    target = checkpoints.checkpoint_path(tmp_path, other_id)
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoints.checkpoint_path(tmp_path, rec["run_id"]), target)
    with pytest.raises(BenchError, match=f"belongs to run {rec['run_id']}, not to this spec's run {other_id}"):
        train.run(b, data=tiny_data, progress=False)
    target.write_bytes(b"garbage")
    with pytest.raises(BenchError, match="cannot read checkpoint"):
        train.run(b, data=tiny_data, progress=False)


# --------------------------------------------------------------------------------------- the scheduler
def test_durations_are_parsed_and_bad_ones_refused():
    from bench.campaign.schedule import parse_duration

    assert [parse_duration(t) for t in ("90s", "25m", "1h", "1.5h", " 2M ")] == [90, 1500, 3600, 5400, 120]
    for bad in ("0", "0m", "25", "soon", "-5m", "1h30m", ""):
        with pytest.raises(BenchError, match="--time-budget"):
            parse_duration(bad)


def test_packing_that_the_machine_cannot_hold_is_refused():
    from bench.campaign.schedule import check_packing

    check_packing(0.25, 1, remote=False)
    check_packing(2, 0, remote=True)  # a cluster's GPUs are checked once Ray is up
    with pytest.raises(BenchError, match="this machine has 1 GPU"):
        check_packing(2, 1, remote=False)
    with pytest.raises(BenchError, match="whole GPUs"):
        check_packing(1.5, 4, remote=False)
    with pytest.raises(BenchError, match="torch sees no GPU on this machine: leave it out"):
        check_packing(0.25, 0, remote=False)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record_of(spec, status: str, epochs: list[dict], wall_s: float) -> dict:
    """The record a run of `spec` would write (bench/core/outcomes.make_record), with these epochs."""
    from bench.core.outcomes import RunOutcome, make_record

    return make_record(spec, RunOutcome(status, device="cpu", epochs=epochs, totals={"wall_s": wall_s}))


def planned_grid(epochs: int = 10):
    from bench.campaign.schedule import Planned

    runs = []
    for method in ("sasrec", "iclrec", "elcrec"):
        for seed in (1, 2):
            spec = tiny_spec(method, epochs=epochs)
            spec = dataclasses.replace(spec, seed=seed)
            runs.append(Planned(spec, f"{method}-{seed}"))
    return runs


def test_longest_first_probes_first_and_refusals():
    from bench.campaign.schedule import Estimate, Scheduler, kind_of

    runs = planned_grid()
    by_method = {r.spec.method: r for r in runs}
    estimates = {
        kind_of(by_method["sasrec"].spec): Estimate(epoch_s=1.0, overhead_s=2.0, runs=1, source="test"),  # 12 s
        kind_of(by_method["iclrec"].spec): Estimate(epoch_s=5.0, overhead_s=0.0, runs=1, source="test"),  # 50 s
    }
    runs[2].epochs_done = 6  # iclrec seed 1 resumes from its checkpoint: 4 epochs left, 20 s
    clock = Clock()
    sched = Scheduler(list(runs), dict(estimates), deadline=clock.now + 55, clock=clock)
    order = [(r.spec.method, r.spec.seed) for r in sched.order()]
    assert order == [("elcrec", 1), ("elcrec", 2), ("iclrec", 2), ("iclrec", 1), ("sasrec", 1), ("sasrec", 2)]
    first = sched.next_run()  # elcrec has no record: one probe of its kind, with the deadline
    assert (first.method, first.seed, first.probe, first.deadline) == ("elcrec", 1, True, 1055)
    second = sched.next_run()  # elcrec seed 2 waits for its sibling's probe; iclrec seed 2 (50 s) fits in 55 s
    assert (second.method, second.seed, second.probe) == ("iclrec", 2, False)
    clock.now += 40  # 15 s left
    third = sched.next_run()  # iclrec seed 1 (20 s) is refused; sasrec (12 s) starts
    assert (third.method, third.seed) == ("sasrec", 1)
    assert sched.refusal_lines() == ["not started: iclrec synthetic seed 1: expected 20 s > 15 s left"]
    # the probe's record arrives (interrupted after its first epoch): its kind now has an estimate of 30 s
    sched.finished(record_of(first, "interrupted", [{"estep_s": 1.0, "train_s": 1.0, "eval_s": 1.0}], wall_s=3.0))
    clock.now += 1  # 14 s left: elcrec seed 2 (30 s) refused; sasrec seed 2 (12 s) starts
    fourth = sched.next_run()
    assert (fourth.method, fourth.seed) == ("sasrec", 2)
    assert sched.next_run() is None and not sched.planned
    assert sched.refusal_lines()[-1] == "not started: elcrec synthetic seed 2: expected 30 s > 14 s left"


def test_a_checkpointed_run_that_cannot_finish_starts_and_continues_later():
    from bench.campaign.schedule import Estimate, Scheduler, kind_of

    runs = planned_grid()
    for run in runs:
        run.resumable = run.spec.method == "iclrec"  # checkpoints asked for ICLRec's runs only
    estimates = {kind_of(r.spec): Estimate(epoch_s=5.0, overhead_s=0.0, runs=1, source="test") for r in runs}
    clock = Clock()
    sched = Scheduler(list(runs), estimates, deadline=clock.now + 30, clock=clock)  # every run needs 50 s
    started = [sched.next_run(), sched.next_run()]
    assert [(s.method, s.seed) for s in started] == [("iclrec", 1), ("iclrec", 2)]
    assert all(s.deadline == clock.now + 30 and not s.probe for s in started)
    assert sched.continuing_lines() == ["iclrec synthetic seed 1 (expected 50 s > 30 s left)",
                                        "iclrec synthetic seed 2 (expected 50 s > 30 s left)"]
    assert sched.next_run() is None  # the others keep the refusal: nothing would keep their epochs
    assert len(sched.refusal_lines()) == 4
    # less than an epoch left: not even a resumable run starts
    late = Scheduler([runs[2]], estimates, deadline=clock.now + 4, clock=clock)
    assert late.next_run() is None and late.refusal_lines() == ["not started: iclrec synthetic seed 1: expected 50 s > 4.0 s left"]


def test_without_a_deadline_every_run_starts_in_the_grids_order():
    from bench.campaign.schedule import Scheduler

    runs = planned_grid()
    sched = Scheduler(list(runs), {}, deadline=None)
    started = [sched.next_run() for _ in runs]
    assert [s.method for s in started] == [r.spec.method for r in runs]
    assert all(s.deadline is None and not s.probe for s in started) and sched.next_run() is None


class TickingClock:
    """A clock that moves `step` seconds at every reading: to the deadline rule, each epoch takes `step` s."""

    def __init__(self, now: float, step: float) -> None:
        self.now, self.step = now, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_run_stops_after_the_epoch_that_reaches_its_deadline(tiny_data, tmp_path):
    # The rule reads 1001 when the run starts and 1002 after epoch 0, so that epoch took 1 s; the next one
    # would end at 1003, after the deadline (1002.5): the run stops there, checkpointed.
    spec = tiny_spec("sasrec", epochs=50, checkpoint_dir=str(tmp_path), deadline=1002.5)
    record = train.run(spec, data=tiny_data, progress=False, clock=TickingClock(1000.0, step=1.0))
    assert record["status"] == "interrupted" and record["test"] is None and len(record["epochs"]) == 1
    assert record["interrupted"]["reason"] == "time budget: 0 s left, an epoch takes 1 s"
    assert checkpoints.epochs_done(tmp_path, record["run_id"]) == 1


# ---------------------------------------------------------------------- the grid, status, leaderboard
SMOKE = ["--executor", "local", "--methods", "sasrec", "--datasets", "Beauty", "--seeds", "1",
         "--max-users", "150", "--epochs", "300", "--patience", "3", "--threads", "1"]


def test_a_time_boxed_grid_stops_reports_and_resumes(tmp_path, capsys, monkeypatch):
    import functools

    from bench.campaign import grid
    from bench.core.records import completed_run_ids, load_records
    from bench.reporting import leaderboard
    from bench.reporting.runs import completed_runs

    results = str(tmp_path)
    status_args = ["status", "--results", results, "--device", "cpu", "--methods", "sasrec", "--datasets", "Beauty",
                   "--seeds", "1", "--max-users", "150", "--epochs", "300", "--patience", "3"]
    # No earlier record: the run is a probe; after its first epoch, 299 more cannot fit in 8 s. The grid reads
    # its budget on a clock that moves 0.1 s per reading, so that to the deadline rule the epoch took 0.1 s
    # however fast this machine is: 29.9 s expected for the rest, more than the budget holds.
    monkeypatch.setattr(grid, "run_grid", functools.partial(grid.run_grid, clock=TickingClock(1000.0, step=0.1)))
    cache = tmp_path / "cache"  # the persistent checkpoint folder, outside the results and the working copy
    conftest_cache = os.environ["BENCH_CHECKPOINTS"]
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(cache))  # read at each call (bench/core/paths.py)
    first = run_cli(["run", "--all", *SMOKE, "--time-budget", "8s", "--results", results], capsys)
    assert first.code == 0, first.err
    assert "probe (no earlier record)" in first.out
    assert "grid: 0 ok, 0 failed, 0 skipped, 1 interrupted, 0 not started" in first.out
    assert "interrupted: sasrec Beauty seed 1 at epoch 1 of 300 (probe: expected 30 s for 299 more epochs >" in first.out
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["status"] == "interrupted" and len(record["epochs"]) == 1 and record["test"] is None
    assert (cache / record["run_id"] / "last.pt").is_file()
    # interrupted is not done, and no table shows it
    assert completed_run_ids(tmp_path) == set()
    assert completed_runs(load_records(tmp_path)).empty
    with pytest.raises(BenchError, match="no completed run records"):
        leaderboard.write_leaderboard(tmp_path, tmp_path / "tables")
    report = run_cli(status_args, capsys)
    assert report.code == 0, report.err
    assert "interrupted: epoch 1 of 300" in report.out
    assert "0 done, 0 running, 1 interrupted, 0 failed, 0 pending" in report.out
    # the next invocation resumes it from its checkpoint (its record now gives the estimate) and finishes it
    second = run_cli(["run", "--all", *SMOKE, "--time-budget", "10m", "--results", results], capsys)
    assert second.code == 0, second.err
    assert "resumes at epoch 1" in second.out and "grid: 1 ok, 0 failed, 0 skipped, 0 interrupted" in second.out
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["status"] == "ok" and record["resumed_from_epoch"] == 1 and record["test"] is not None
    assert not (cache / record["run_id"]).exists()
    assert len(completed_runs(load_records(tmp_path))) == 1
    monkeypatch.setenv("BENCH_CHECKPOINTS", conftest_cache)  # a done run is reported from its record alone
    report = run_cli(status_args, capsys)
    assert report.code == 0, report.err
    assert f"done: best epoch {record['best_epoch']}, test NDCG@20 {record['test']['NDCG@20']:.4f}" in report.out
    assert "1 done, 0 running, 0 interrupted, 0 failed, 0 pending" in report.out


def test_sigterm_stops_a_grid_at_its_last_epoch_boundary_and_a_new_process_resumes(tmp_path, capsys, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    cache, results = tmp_path / "cache", tmp_path / "results"
    # 60 epochs without early stopping (about 0.2 s each on 150 users): the signal lands mid-run
    grid = [*SMOKE[:SMOKE.index("--epochs")], "--epochs", "60", "--patience", "60", "--threads", "1"]
    args = [sys.executable, "-m", "bench", "run", "--all", *grid, "--results", str(results), "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CHECKPOINTS": str(cache)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # wait for the first checkpoint (epoch 2), then a little into the next epochs
    while not list(cache.glob("*/last.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    # While it trains, its run is "running", and a grid of another results folder (the checkpoint folder is
    # shared) is refused that run instead of resuming from the same file.
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(cache))
    status = run_cli(["status", "--results", results, "--device", "cpu", "--methods", "sasrec", "--datasets", "Beauty",
                      "--seeds", "1", "--max-users", "150", "--epochs", "60", "--patience", "60"], capsys)
    assert status.code == 0 and f"running (pid {proc.pid} on " in status.out and "1 running," in status.out
    other = tmp_path / "other"
    refused = run_cli(["run", "--all", *grid, "--results", other, "--checkpoint-every", "2"], capsys)
    assert proc.poll() is None, "the grid finished before the checks: give it more epochs"
    [copy] = [json.loads(p.read_text()) for p in (other / "runs").glob("*.json")]
    assert refused.code == 1 and copy["status"] == "failed"
    assert copy["error"].startswith(f"run {copy['run_id']} is already training in another process (pid {proc.pid} on ")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "error: terminated (SIGTERM): 1 run(s) recorded interrupted" in err
    [record] = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "interrupted" and record["interrupted"]["reason"] == "terminated (SIGTERM)"
    done = record["interrupted"]["epochs_done"]
    # the last boundary was written, not only the last --checkpoint-every one
    assert checkpoints.epochs_done(cache, record["run_id"]) == done == len(record["epochs"]) >= 2
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    [record] = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "ok" and record["resumed_from_epoch"] == done
    assert not list(cache.glob("*/last.pt"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time-budget", "0"], "error: --time-budget '0': give a positive duration with a unit"),
        (["--time-budget", "0s"], "error: --time-budget '0s': the budget must be more than 0"),
        (["--time-budget", "soon"], "error: --time-budget 'soon'"),
        (["--gpus-per-run", "99"], "error: --gpus-per-run 99 but "),  # "torch sees no GPU" / "this machine has 1 GPU(s)"
    ],
)
def test_bad_campaign_options_get_one_line(tmp_path, capsys, args, message):
    code, _, err = run_cli(["run", "--all", "--methods", "sasrec", "--datasets", "Beauty", "--profile", "smoke", *args,
                            "--results", tmp_path], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- Ray, logical GPUs
@pytest.mark.slow  # a Ray cluster with two logical GPUs and four runs on it: half a minute
def test_fractional_gpus_pack_four_runs_on_two_logical_gpus(monkeypatch):
    import ray

    from bench.campaign import executors as ray_backend
    from bench.campaign.grid import grid_specs
    from bench.campaign.schedule import Planned, Scheduler

    specs = grid_specs(["sasrec"], ["Beauty"], [1, 2, 3, 4], profile="smoke", epochs=1, max_users=150, device="cpu")
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ray_backend._worker_env()})
    try:
        with pytest.raises(BenchError, match="--gpus-per-run 3 but the Ray cluster has 2 GPUs"):
            ray_backend.run_specs_on_ray(iter(specs).__next__, address=None, cpus_per_run=1, gpus_per_run=3,
                                         on_done=print)
        got, slots = [], []
        sched = Scheduler([Planned(s, str(i)) for i, s in enumerate(specs)], {}, deadline=None)
        # the tasks reserve half a (logical) GPU each but train on the CPU: no CUDA is touched
        ray_backend.run_specs_on_ray(sched.next_run, address=None, cpus_per_run=1, gpus_per_run=0.5,
                                     on_done=got.append, on_start=slots.append, task_device="cpu")
        # past the deadline and its grace period, the driver cancels what still runs and records it interrupted
        monkeypatch.setattr("bench.campaign.schedule.GRACE_S", 0.0)
        # The scheduler's clock has 10 s left, so the run starts; the driver's (time.time) is past the deadline
        # already, so it cancels the task at its first look, before the task can have finished an epoch.
        deadline = time.time() - 1.0
        late = Scheduler([Planned(specs[0], "late")], {}, deadline=deadline, clock=lambda: deadline - 10.0)
        cancelled = []
        ray_backend.run_specs_on_ray(late.next_run, address=None, cpus_per_run=1, gpus_per_run=0.5,
                                     on_done=cancelled.append, deadline=late.deadline, task_device="cpu")
    finally:
        ray.shutdown()
    [stopped] = cancelled
    assert stopped["status"] == "interrupted" and stopped["interrupted"]["reason"] == "cancelled 0 s after the time budget"
    assert stopped["epochs"] == [] and stopped["test"] is None
    assert slots == [4]
    assert len(got) == 4 and all(r["status"] == "ok" and r["device"] == "cpu" for r in got)
    assert sorted(r["seed"] for r in got) == [1, 2, 3, 4]
    assert all(r["spec"]["concurrency"] == 4 and r["spec"]["num_threads"] == 1 for r in got)


def test_the_grids_own_epochs_replace_an_estimate_from_elsewhere():
    from bench.campaign.schedule import Estimate, Scheduler, kind_of

    runs = planned_grid()
    kind = kind_of(runs[0].spec)  # sasrec
    sched = Scheduler(list(runs), {kind: Estimate(epoch_s=1.0, overhead_s=0.0, runs=3, source="committed")},
                      deadline=None)

    def record(n_epochs: int, seconds: float) -> dict:
        epochs = [{"estep_s": 0.0, "train_s": seconds, "eval_s": 0.0}] * n_epochs
        return record_of(runs[0].spec, "ok", epochs, wall_s=n_epochs * seconds)

    sched.finished(record(2, 3.0))  # one steady epoch: too few to overrule 3 earlier runs
    assert sched.expected(runs[0]) == pytest.approx(10 * 1.0)
    sched.finished(record(3, 3.0))  # three steady epochs of this grid (packed runs, say): they now decide
    assert sched.estimates[kind].source == "this grid" and sched.expected(runs[0]) == pytest.approx(10 * 3.0)
    sched.finished({**record(3, 0.1), "status": "failed"})  # a failed run's epochs say nothing of the cost
    assert sched.expected(runs[0]) == pytest.approx(10 * 3.0)


def test_status_shows_every_state_and_the_time_left(tmp_path, capsys):
    from bench.campaign.grid import grid_specs
    from bench.campaign.status import print_status, protocol_status
    from bench.core import records

    specs = grid_specs(["sasrec"], ["Beauty"], [1, 2, 3, 4], profile="smoke", device="cpu")
    from bench.core.outcomes import RunOutcome, failure_record, make_record

    epochs = [{"epoch": i, "valid": {"NDCG@20": 0.01}, "estep_s": 0.0, "train_s": 2.0, "eval_s": 1.0} for i in range(3)]
    records.save(tmp_path, make_record(specs[0], RunOutcome("ok", device="cpu", best_epoch=2, test={"NDCG@20": 0.0123},
                                                            epochs=epochs, totals={"wall_s": 10.0})))
    records.save(tmp_path, failure_record(specs[1], RuntimeError("boom")))
    records.save(tmp_path, record_of(specs[2], "interrupted", epochs[:1], wall_s=4.0))
    status = protocol_status(tmp_path, profile="smoke", methods=["sasrec"], datasets=["Beauty"], seeds=[1, 2, 3, 4],
                             device="cpu")
    assert [r["status"] for r in status["rows"]] == ["ok", "failed", "interrupted", "pending"]
    assert status["counts"] == {"ok": 1, "running": 0, "interrupted": 1, "failed": 1, "pending": 1}
    # 3 s per epoch and 1 s of overhead, from the ok record and the interrupted one: 3 runs x the profile's
    # epochs left (the interrupted run's checkpoint is not in this folder, so it starts over)
    assert status["expected_left_s"] == pytest.approx(3 * (1.0 + specs[0].epochs * 3.0))
    print_status(status)
    out = capsys.readouterr().out
    for line in ("done: best epoch 2, test NDCG@20 0.0123", "failed: RuntimeError: boom", f"interrupted: epoch 1 of {specs[0].epochs} (no checkpoint: starts over)",
                 "pending", "1 done, 0 running, 1 interrupted, 1 failed, 1 pending",
                 f"expected cpu time left: {status['expected_left_s']:.0f} s"):
        assert line in out
    # 3 epoch times in all: each time left says it is a rough guess, and why
    assert [r["expected_rough"] for r in status["rows"]] == [False, True, True, True]
    assert "* estimated from fewer than 10 epochs of records of its kind" in out
    assert sum("*  pending" in line for line in out.splitlines()) == 1


# ------------------------------------------------------------------------------------ packing, chosen
def test_packing_is_taken_only_for_a_gain_the_interval_shows():
    from bench.campaign.packing import choose_packing, packing_gain

    solo = [[1.00, 1.02, 0.98, 1.01, 0.99]]
    two = [[1.10, 1.12, 1.08, 1.11], [1.09, 1.11, 1.10, 1.12]]  # 2 runs, each 10% slower: 1.8x the throughput
    four = [[2.20, 2.25, 2.18], [2.21, 2.19, 2.24], [2.22, 2.2, 2.23], [2.18, 2.21, 2.2]]  # no gain over two
    gain = packing_gain(two, 2, solo, 1)
    assert gain.ratio == pytest.approx(2 / 1.1, rel=0.02) and 1 < gain.low < gain.ratio < gain.high
    chosen, why = choose_packing({1: solo, 2: two, 4: four})
    assert chosen == 2
    assert why[0].startswith("2 over 1: 1.8") and why[0].endswith("taken")
    assert why[1].startswith("4 over 2: 1.0") and why[1].endswith("not shown to be faster")
    # a gain (1.2x) with epochs that scatter widely is not taken: its interval reaches below 1
    noisy = [[0.9, 3.0, 1.0, 2.9], [2.8, 1.0, 3.1, 0.9]]
    assert packing_gain(noisy, 2, solo, 1).text() == "1.20x [0.72, 1.99]"
    assert choose_packing({1: solo, 2: noisy})[0] == 1
    with pytest.raises(BenchError, match="no packing level finished"):
        choose_packing({1: [], 2: []})


def _packing_file(folder, name, machine, concurrency, threads, method="iclrec"):
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"meta": {"device_name": machine, "measured_at": "2026-11-25T00:00:00+00:00"},
           "best": {"off": {"concurrency": concurrency, "threads_per_run": threads},
                    "reduce-overhead": {"concurrency": 8, "threads_per_run": 2}}}
    (folder / f"packing-cuda-{method}-{name}.json").write_text(json.dumps(doc))


def test_the_grid_packs_as_measured_on_the_same_gpu_model(tmp_path, monkeypatch, capsys):
    from bench.campaign import grid

    bench_dir = tmp_path / "benchmarks"
    _packing_file(bench_dir, "Beauty", "Fake GPU 80GB", 4, 4)
    _packing_file(bench_dir, "Yelp", "Fake GPU 80GB", 2, 8, method="elcrec")  # the smaller packing wins
    _packing_file(bench_dir, "Toys", "Other GPU", 8, 2)
    (bench_dir / "packing-cuda-sasrec-Sports.json").write_text("{not json")  # advice, skipped
    monkeypatch.setattr(grid, "PACKING_DIR", tmp_path / "nothing-committed")
    monkeypatch.setattr(grid, "machine_name", lambda kind: "Fake GPU 80GB")
    assert grid._measured_gpu_packing(tmp_path, None, progress=True) == (0.5, 8.0)
    assert "2 run(s) per GPU, 8 thread(s) each, as measured in" in capsys.readouterr().out
    assert grid._measured_gpu_packing(tmp_path, 3.0, progress=False) == (0.5, 3.0)  # --cpus-per-run stays
    monkeypatch.setattr(grid, "machine_name", lambda kind: "Unmeasured GPU")
    assert grid._measured_gpu_packing(tmp_path, None, progress=True) == (1.0, None)
    assert "1 run per GPU (no packing measurement of Unmeasured GPU" in capsys.readouterr().out


@pytest.mark.slow  # about a minute: Ray runs 1 and 2 copies of a run; the choice itself is tested above
def test_packing_measures_the_cores_end_to_end(tmp_path, capsys):
    done = run_cli(["packing", "--device", "cpu", "--method", "sasrec", "--dataset", "Beauty", "--max-users", "300",
                    "--epochs", "3", "--concurrency", "1", "2", "--cpus", "2", "--out", tmp_path], capsys)
    assert done.code == 0, done.err[-2000:]
    doc = json.loads((tmp_path / "packing-cpu-sasrec-Beauty.json").read_text())
    assert [(r["concurrency"], r["threads_per_run"], r["runs_ok"]) for r in doc["rows"]] == [(1, 2, 1), (2, 1, 2)]
    assert all(len(runs) == r["concurrency"] and all(len(e) == 2 for e in runs)
               for r in doc["rows"] for runs in [r["epoch_s_per_run"]])
    assert doc["best"]["off"]["concurrency"] in (1, 2) and doc["meta"]["command"].startswith("python -m bench packing")
    table = (tmp_path / "packing-cpu-sasrec-Beauty.md").read_text()
    assert "| off | 2 | 0 | 1 |" in table and "Chosen for compile off: **" in table
    code, _, err = run_cli(["packing", "--device", "cpu", "--epochs", "2", "--out", tmp_path], capsys)
    assert code == 2
    assert err.strip() == (
        "error: --epochs must be >= 3 for a packing measurement (epochs after the first are timed), got 2")


def test_status_divides_the_time_left_by_the_measured_packing_gain(tmp_path, capsys):
    from bench.campaign.status import print_status, protocol_status

    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    rows = [{"compile": "off", "concurrency": 1},
            {"compile": "off", "concurrency": 2,
             "gain_vs_1": {"ratio": 1.25, "low": 1.1, "high": 1.4, "basis": "8+4 epochs after the first"}}]
    doc = {"meta": {"device_name": "Fake CPU x2"}, "rows": rows, "best": {"off": {"concurrency": 2, "threads_per_run": 1}}}
    (bench_dir / "packing-cpu-sasrec-Beauty.json").write_text(json.dumps(doc))
    # a machine whose measurement chose 1 run at a time has nothing to divide by: not shown
    (bench_dir / "packing-cpu-iclrec-Beauty.json").write_text(json.dumps(
        {"meta": {"device_name": "Other CPU x4"}, "rows": rows[:1], "best": {"off": {"concurrency": 1, "threads_per_run": 4}}}))
    status = protocol_status(tmp_path, profile="smoke", methods=["sasrec"], datasets=["Beauty"], seeds=[1], device="cpu")
    [mine] = [p for p in status["packed"] if p["machine"] == "Fake CPU x2"]
    assert not [p for p in status["packed"] if p["machine"] == "Other CPU x4"]
    assert mine["concurrency"] == 2 and mine["gain"] == [1.25, 1.1, 1.4]
    assert mine["expected_left_s"] == pytest.approx(status["expected_left_s"] / 1.25)
    print_status(status)
    assert "packed as measured on Fake CPU x2 (2 runs at once, 1.25x [1.10, 1.40] the throughput of one)" in capsys.readouterr().out


def test_overhead_is_the_time_outside_the_epochs_not_their_spread():
    from bench.campaign.schedule import estimate_from

    # Epochs of 10 s with one slow outlier (a shared machine): 10 epochs, 190 s, and 5 s outside them.
    rows = [{"estep_s": 0.0, "train_s": t, "eval_s": 0.0} for t in (10.0,) * 9 + (100.0,)]
    estimate = estimate_from([{"epochs": rows, "totals": {"wall_s": 195.0}}], "test")
    assert estimate.epoch_s == 10.0 and estimate.overhead_s == pytest.approx(5.0)  # not 195 - 10 x 10 = 95
    assert estimate.epochs == 9 and estimate.rough  # the first epoch is not counted: 9 times, a rough guess
    assert not estimate_from([{"epochs": rows + rows[:1], "totals": {"wall_s": 205.0}}], "test").rough


def test_estimates_pool_every_folder_and_count_a_collected_copy_once(tmp_path):
    from bench.campaign.grid import grid_specs
    from bench.campaign.schedule import kind_of, load_estimates
    from bench.core import records

    first, second = grid_specs(["sasrec"], ["Beauty"], [1, 2], profile="smoke", device="cpu")

    def epochs(n: int, seconds: float) -> list[dict]:
        return [{"epoch": i, "valid": {"NDCG@20": 0.01}, "estep_s": 0.0, "train_s": seconds, "eval_s": 0.0}
                for i in range(n)]

    # A campaign folder: a run interrupted after 4 epochs of 50 s (a busy machine). The repository: a finished
    # run of 21 epochs of 10 s, and the interrupted one's collected copy, which must not count twice.
    campaign, committed = tmp_path / "campaign", tmp_path / "committed"
    slow = record_of(second, "interrupted", epochs(4, 50.0), wall_s=200.0)
    records.save(campaign, slow)
    records.save(committed, slow)
    records.save(committed, record_of(first, "ok", epochs(21, 10.0), wall_s=210.0))
    estimate = load_estimates(campaign, committed)[kind_of(first)]
    assert estimate.runs == 2  # not 3: the copy is the same run
    assert estimate.epoch_s == 10.0  # the median of 20 + 3 epochs after each run's first, not the busy run's 50
    assert estimate.source == f"{campaign}, {committed}"


def test_status_reads_this_machines_device_and_names_an_unreadable_record(tmp_path, capsys, monkeypatch):
    import torch

    from bench.campaign.grid import grid_specs
    from bench.core import records
    from bench.core.outcomes import RunOutcome, make_record

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA
    [spec] = grid_specs(["sasrec"], ["Beauty"], [1], profile="smoke", device="cpu")
    epochs = [{"epoch": 0, "valid": {"NDCG@20": 0.01}, "estep_s": 0.0, "train_s": 2.0, "eval_s": 1.0}]
    records.save(tmp_path, make_record(spec, RunOutcome("ok", device="cpu", best_epoch=0, test={"NDCG@20": 0.0123},
                                                        epochs=epochs, totals={"wall_s": 3.0})))
    (tmp_path / "runs" / "damaged.json").write_text('{"method": "sasrec"')
    report = run_cli(["status", "--results", tmp_path, "--profile", "smoke", "--methods", "sasrec", "--datasets",
                      "Beauty", "--json"], capsys)
    assert report.code == 0, report.err
    status = json.loads(report.out)
    assert status["device"] == "cpu" and status["counts"]["ok"] == 1 and status["rows"][0]["status"] == "ok"
    assert report.err.strip() == f"warning: skipped unreadable record {tmp_path / 'runs' / 'damaged.json'}"
    assert status["unreadable"] == [str(tmp_path / "runs" / "damaged.json")]
