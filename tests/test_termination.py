"""SIGTERM (what a batch scheduler sends before it kills) to a study and to a grid on a local Ray, and kill -9
of a grid's driver: what is left behind, and what the next invocation does (docs/reliability.md).

The grid's SIGTERM on the local executor is tests/test_campaign.py's, on a Ray cluster tests/test_cluster.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench import cli
from bench.campaign import reaper
from bench.core import termination
from bench.core.profiles import Profile
from bench.tuning import trials, tune

REPO = Path(__file__).resolve().parent.parent
TWO_EPOCHS = Profile("term2", max_users=200, epochs=2, patience=2, seeds=(1,))
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes in /proc (Linux)")


def _trials(results: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    journal = results / "studies" / f"{study}.journal"
    return optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(journal)))).trials


def _owned_by(pid: int) -> list[int]:
    """Processes of the local Ray that the driver `pid` started (bench/campaign/reaper.py)."""
    return [p for p, token in reaper.tokens().items() if token.split(":")[0] == str(pid)]


def test_the_next_local_ray_ends_the_processes_of_a_dead_owners_ray_and_no_other():
    # What the watchdog does when the driver dies, the next start does when the watchdog died too.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    tokens = {"orphan": f"{dead.pid}:1:x", "owned": reaper.new_token(), "none": None}
    procs = {}
    for name, token in tokens.items():
        env = {k: v for k, v in os.environ.items() if k != reaper.TOKEN_VAR}
        procs[name] = subprocess.Popen(sleep, env=env if token is None else {**env, reaper.TOKEN_VAR: token})
    try:
        deadline = time.monotonic() + 10
        while not {procs["orphan"].pid, procs["owned"].pid} <= set(reaper.tokens()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert procs["owned"].pid not in reaper.sweep_orphans()
        assert procs["orphan"].wait(timeout=10) == -signal.SIGKILL
        assert procs["owned"].poll() is None and procs["none"].poll() is None
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_sigterm_stops_an_in_process_study_and_the_next_tune_runs_its_trial_again(tmp_path, capsys, monkeypatch):
    # A real SIGTERM to this process, sent once the first trial has reported its first epoch: the trial
    # stops at that boundary, is recorded FAIL and `interrupted` (before, it was recorded COMPLETE with the
    # value of the epochs it ran), and `tune` exits 143 with one line.
    report = trials.EpochReporter.__call__

    def report_then_sigterm(self, epoch, row):
        report(self, epoch, row)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trials.EpochReporter, "__call__", report_then_sigterm)
    monkeypatch.setattr("bench.core.profiles.get_profile", lambda name: TWO_EPOCHS)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(["tune", "--method", "sasrec", "--dataset", "Beauty", "--trials", "3", "--study", "term",
                         "--results", str(tmp_path)])
    finally:
        signal.signal(signal.SIGTERM, previous)
        termination.reset()
    err = capsys.readouterr().err
    assert code == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: terminated (SIGTERM): 1 trial(s) of study term stopped and queued to run again; "
                      "run the same command again to resume"]
    assert "Traceback" not in err
    stopped, queued = _trials(tmp_path, "term")
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] and stopped.user_attrs["epochs_run"] == 1
    assert queued.state == TrialState.WAITING and queued.params == stopped.params
    assert not list((tmp_path / "studies" / "term").iterdir())  # no reports, no final run: the study is not done

    monkeypatch.setattr(trials.EpochReporter, "__call__", report)
    tune.tune("sasrec", "Beauty", profile=TWO_EPOCHS, trials=1, results=tmp_path, study="term", run_final=False)
    states = [t.state for t in _trials(tmp_path, "term")]
    assert states[0] == TrialState.FAIL and states[1] in (TrialState.COMPLETE, TrialState.PRUNED) and len(states) == 2


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_to_a_parallel_study_marks_its_trials_and_leaves_no_process(tmp_path, executor):
    args = [sys.executable, "-m", "bench", "tune", "--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke",
            "--trials", "4", "--parallel", "2", "--executor", executor, "--study", "par", "--results", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "studies" / "par.journal"
    try:
        deadline = time.monotonic() + 180
        while not journal.is_file() or len([t for t in _trials(tmp_path, "par") if t.state == TrialState.RUNNING
                                            and t.intermediate_values]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.5)
        workers = _owned_by(proc.pid) if executor == "ray" else _children(proc.pid)
        proc.send_signal(signal.SIGTERM)  # the driver only: it passes the stop on to its workers
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "error: terminated (SIGTERM): 2 trial(s) of study par stopped and queued to run again" in err
    time.sleep(1.0)
    assert workers and not [p for p in workers if _alive(p)]
    assert not _owned_by(proc.pid)
    found = _trials(tmp_path, "par")
    stopped = [t for t in found if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")]
    assert len(stopped) == 2 and not [t for t in found if t.state == TrialState.RUNNING]
    again = subprocess.run([*args[:args.index("--trials") + 1], "2", *args[args.index("--trials") + 2:]], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    reruns = {t.user_attrs.get("rerun_of") for t in _trials(tmp_path, "par")}
    assert {t.number for t in stopped} <= reruns


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] not in ("Z", "X")  # an exited child not yet reaped is gone


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_of_a_local_ray_outlives_its_grid(tmp_path, stop):
    # SIGTERM: runs recorded interrupted, Ray shut down, exit 143. SIGKILL: Ray's fate sharing ends most of its
    # processes, the watchdog the rest (the raylet's agents lived about a minute longer before it).
    ckpts = tmp_path / "checkpoints"
    args = [sys.executable, "-m", "bench", "run", "--all", "--methods", "sasrec", "--datasets", "Beauty", "--seeds",
            "1", "2", "--max-users", "150", "--epochs", "60", "--patience", "60", "--checkpoint-every", "1",
            "--results", str(tmp_path / "results")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CHECKPOINTS": str(ckpts)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(ckpts.glob("*/last.pt"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        started = _owned_by(proc.pid)
        os.kill(proc.pid, stop)
        proc.communicate(timeout=120)
        gone_by = time.monotonic() + 10
        while _owned_by(proc.pid) and time.monotonic() < gone_by:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(started) >= 4  # the GCS server, the raylet, its agents, the workers
    assert not _owned_by(proc.pid)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    if stop == signal.SIGTERM:
        assert proc.returncode == 143 and [r["status"] for r in records] == ["interrupted", "interrupted"]
    else:
        assert proc.returncode == -signal.SIGKILL and not records
        assert len(list((tmp_path / "results" / "claims").glob("*.claim"))) == 2  # taken over by the next grid


def test_ctrl_c_leaves_a_run_as_sigterm_does(tmp_path):
    """Ctrl-C (SIGINT) to `bench run`: the run recorded interrupted at its last epoch boundary, that boundary
    checkpointed (the same command resumes from it), one line and exit 130, no traceback."""
    from bench.core import checkpoints

    cache, results = tmp_path / "cache", tmp_path / "results"
    # 40 epochs without early stopping (about 0.2 s each on 150 users): the signal lands mid-run
    args = [sys.executable, "-m", "bench", "run", "--method", "sasrec", "--dataset", "Beauty", "--max-users", "150",
            "--epochs", "40", "--patience", "40", "--threads", "1", "--checkpoint-every", "5", "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CHECKPOINTS": str(cache)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/last.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)  # into the epochs after the first checkpoint: the last boundary is not a --checkpoint-every one
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    [record] = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    stop = record["interrupted"]
    assert record["status"] == "interrupted" and stop["reason"] == "interrupted (Ctrl-C)" and record["test"] is None
    assert line == (f"error: interrupted (Ctrl-C) after {stop['epochs_done']} of 40 epochs; kept: checkpoint "
                    f"{stop['checkpoint']}; run the same command again to resume")
    assert checkpoints.epochs_done(cache, record["run_id"]) == stop["epochs_done"] == len(record["epochs"]) >= 5
