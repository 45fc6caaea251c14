"""Reliability of studies (`bench tune`): every case of docs/reliability.md, "Studies (bench tune)".

Each test goes through the public entry points (`cli.main`, called through tests/conftest.py's `run_cli`,
`tune.tune`, or a `tune` in a subprocess that is killed with SIGKILL) and inspects the study with plain
Optuna, so that it says the same thing about any version of the harness. Trials are tiny (200 Beauty
users, 1-2 epochs of SASRec).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench.core.errors import BenchError
from bench.core.profiles import Profile, get_profile
from bench.tuning import tune
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
ONE_EPOCH = Profile("rel1", max_users=200, epochs=1, patience=1, seeds=(1,))
TWO_EPOCHS = Profile("rel2", max_users=200, epochs=2, patience=2, seeds=(1,))


def _journal(results: Path, study: str) -> Path:
    return Path(results).resolve() / "studies" / f"{study}.journal"


def _read_trials(journal: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _make_journal_study(journal: Path, study: str, profile: Profile, complete: bool = False) -> None:
    """A study as `tune` makes it (identity in its user attrs), written by plain Optuna; one complete trial."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    made = optuna.create_study(study_name=study, storage=storage, direction="maximize")
    setup = tune.StudySetup("sasrec", "Beauty", profile, study, str(journal), str(journal.parent.parent))
    for key, value in setup.identity().items():
        made.set_user_attr(key, value)
    if complete:
        lr = optuna.distributions.FloatDistribution(1e-4, 5e-3, log=True)
        made.add_trial(optuna.trial.create_trial(params={"lr": 0.001}, distributions={"lr": lr}, value=0.01))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


# ------------------------------------------------------------------------- outputs checked before work
def test_results_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.write_text("not a folder\n")
    code, _, err = run_cli(["tune", "--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke", "--trials", "1",
                            "--results", results], capsys)
    assert code == 2
    assert "results folder" in _one_error_line(err) and str(results) in err
    assert results.read_text() == "not a folder\n"


@pytest.mark.parametrize("blocked, what", [("runs", "results folder"), ("studies/blk", "study reports folder")])
def test_unwritable_output_is_refused_before_any_trial(tmp_path, blocked, what):
    # The final run's records (<results>/runs) and the reports (<results>/studies/<study>) are written after
    # the trials: a path that cannot take them must stop the study before a trial is spent, not after.
    (tmp_path / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blocked).write_text("in the way\n")
    with pytest.raises(BenchError, match=what):
        tune.tune("sasrec", "Beauty", profile=ONE_EPOCH, trials=1, results=tmp_path, study="blk")
    assert not _journal(tmp_path, "blk").exists()


def test_export_to_an_unwritable_tuned_folder_is_one_line(tmp_path, capsys, monkeypatch):
    _make_journal_study(_journal(tmp_path, "exp"), "exp", ONE_EPOCH, complete=True)
    blocked = tmp_path / "tuned"
    blocked.write_text("in the way\n")
    monkeypatch.setenv("BENCH_TUNED_DIR", str(blocked))
    code, _, err = run_cli(["tune", "--export", "--results", tmp_path], capsys)
    assert code == 2 and "tuned configs folder" in _one_error_line(err)


def test_trials_zero_on_a_new_study_creates_nothing(tmp_path, capsys):
    code, _, err = run_cli(["tune", "--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke", "--trials", "0",
                            "--results", tmp_path], capsys)
    assert code == 2 and "does not exist" in _one_error_line(err)
    assert not (tmp_path / "studies").exists()


# ------------------------------------------------------------------------------------ damaged journal
def test_garbage_line_in_the_journal_is_refused_and_never_appended_to(tmp_path, capsys):
    journal = _journal(tmp_path, "sasrec-Beauty-smoke")
    _make_journal_study(journal, "sasrec-Beauty-smoke", get_profile("smoke"))
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], b"this is not json\n", *lines[1:]])
    journal.write_bytes(damaged)
    code, _, err = run_cli(["tune", "--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke", "--trials", "1",
                            "--results", tmp_path], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert str(journal) in line and "line 2" in line and "corrupt" in line
    assert journal.read_bytes() == damaged
    # export reads journals too: the same refusal, not a traceback
    code, _, err = run_cli(["tune", "--export", "--results", tmp_path], capsys)
    assert code == 2 and "line 2" in _one_error_line(err)
    assert journal.read_bytes() == damaged


def test_torn_last_line_is_cut_off_after_a_backup_and_the_study_goes_on(tmp_path, capfd):
    # A writer killed in the middle of an append leaves a last line without newline. Optuna skips it when
    # reading, but its next append would glue onto it: the journal would be unreadable from then on.
    journal = _journal(tmp_path, "torn")
    _make_journal_study(journal, "torn", ONE_EPOCH)
    intact = journal.read_bytes()
    journal.write_bytes(intact + b'{"op_code": 4, "worker_id": "x", "study_id": 0, "datetime_st')
    original = journal.read_bytes()

    tune.tune("sasrec", "Beauty", profile=ONE_EPOCH, trials=1, results=tmp_path, study="torn", run_final=False)
    err = capfd.readouterr().err
    assert "torn line" in err
    (backup,) = journal.parent.glob("torn.journal.torn-*")
    assert backup.read_bytes() == original and str(backup) in err
    assert journal.read_bytes().startswith(intact)
    trials = _read_trials(journal, "torn")  # readable again, by plain Optuna
    assert [t.state for t in trials] == [TrialState.COMPLETE]


# ------------------------------------------------------------------------------ killed driver, zombies
DRIVER = """
import sys
from bench.tuning import tune
from bench.core.profiles import Profile
tune.tune("sasrec", "Beauty", profile=Profile("rel2", max_users=200, epochs=2, patience=2, seeds=(1,)),
          trials=int(sys.argv[2]), parallel=int(sys.argv[3]), executor="local", results=sys.argv[1],
          study=sys.argv[4], run_final=False)
"""


def _driver(results: Path, trials: int, parallel: int, study: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(results), str(trials), str(parallel), study],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _running(journal: Path) -> list[optuna.trial.FrozenTrial]:
    if not journal.is_file() or journal.stat().st_size == 0:
        return []
    storage = JournalStorage(JournalFileBackend(str(journal)))
    studies = storage.get_all_studies()
    if not studies:
        return []
    return storage.get_all_trials(studies[0]._study_id, deepcopy=False, states=(TrialState.RUNNING,))


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the driver's workers through /proc (Linux)")
@pytest.mark.parametrize("stop", ["kill -9 of the driver", "ctrl-c"])
def test_a_stopped_parallel_study_leaves_no_orphan_and_its_trials_run_again(tmp_path, capfd, stop):
    journal = _journal(tmp_path, "stopped")
    log = tmp_path / "driver.log"
    proc = _driver(tmp_path, trials=4, parallel=2, study="stopped", log=log)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 150
        # Both workers inside a trial that has drawn a parameter: a trial lost before its first draw has
        # nothing to run again (it is only marked FAIL), which is not what this test is about.
        while sum(bool(t.params) for t in _running(journal)) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no two trials running in time:\n" + log.read_text()
            time.sleep(0.3)
        workers = _descendants(proc.pid)
        assert workers
        if stop == "ctrl-c":
            in_flight = {t.number for t in _running(journal)}
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
            proc.wait(timeout=60)
        else:
            os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must follow it
            proc.wait(timeout=10)
        # Each worker is inside a trial with another to follow: only dying with the driver ends it this soon.
        until = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < until:
            time.sleep(0.1)
        orphans = [w for w in workers if _alive(w)]
        assert not orphans, f"orphan workers outlived the stopped driver: {orphans}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)

    if stop == "ctrl-c":  # Optuna records an interrupted trial FAIL at once; nothing is left RUNNING
        assert not _running(journal)
        lost = {t.number: t.params for t in _read_trials(journal, "stopped")
                if t.number in in_flight and t.state == TrialState.FAIL and t.user_attrs.get("interrupted")}
    else:  # a killed worker's trial stays RUNNING until the study is opened again
        lost = {t.number: t.params for t in _running(journal)}
    assert lost, f"the {stop} left no lost trial to check"
    capfd.readouterr()
    # Reopening the study fails the zombies at once (their owners are dead on this machine) and queues the
    # lost trials' parameters, which run before anything new.
    tune.tune("sasrec", "Beauty", profile=TWO_EPOCHS, trials=len(lost), results=tmp_path, study="stopped",
              run_final=False)
    assert capfd.readouterr().err.count("marked FAIL and queued to run again") == len(lost)
    trials = {t.number: t for t in _read_trials(journal, "stopped")}
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, params in lost.items():
        assert trials[number].state == TrialState.FAIL
        (rerun,) = [t for t in trials.values() if t.user_attrs.get("rerun_of") == number]
        assert rerun.params == params and rerun.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_two_drivers_on_one_journal_lose_nothing_and_fail_nothing(tmp_path):
    # Two `tune` processes at once on one study: every trial arrives, numbered once, and neither takes the
    # other's running trials for those of a dead worker.
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_driver(tmp_path, trials=2, parallel=1, study="both", log=log) for log in logs]
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    trials = _read_trials(_journal(tmp_path, "both"), "both")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def test_heartbeat_decides_for_workers_of_other_machines(tmp_path):
    # A trial owned by another machine cannot be checked by pid: it is stale only once its heartbeat is
    # older than the grace period. A trial of a live process here is never stale while it beats.
    from bench.tuning import liveness, studies

    storage = studies.open_storage(str(tmp_path / "hb.journal"))
    study = optuna.create_study(study_name="hb", storage=storage, direction="maximize")
    now = time.time()
    cases = {
        "silent elsewhere": ({"host": "elsewhere", "boot": "b", "pid": 1, "started": 0.0}, now - 10_000),
        "beating elsewhere": ({"host": "elsewhere", "boot": "b", "pid": 1, "started": 0.0}, now),
        "alive here": (liveness.current_owner(), now),
    }
    ids = {}
    for name, (owner, beat) in cases.items():
        ids[name] = storage.create_new_trial(study._study_id)
        storage.set_trial_system_attr(ids[name], liveness.OWNER_KEY, owner)
        storage.set_trial_system_attr(ids[name], liveness.HEARTBEAT_KEY, beat)
    assert storage._get_stale_trial_ids(study._study_id) == [ids["silent elsewhere"]]


def test_a_worker_killed_before_its_first_heartbeat_still_names_its_trials(tmp_path):
    # A worker can die between taking a trial and its first heartbeat (a kill while its objective holds the
    # journal lock). Its trials, new or queued, must already name it, so that reopening the study fails them
    # at once instead of after the grace period.
    from bench.tuning import studies

    journal = tmp_path / "early.journal"
    storage = studies.open_storage(str(journal))
    study = optuna.create_study(study_name="early", storage=storage, direction="maximize")
    study.enqueue_trial({"lr": 0.001})
    worker = (
        "import os, sys, warnings, optuna\n"
        "from bench.tuning import studies\n"
        "warnings.simplefilter('ignore')\n"
        "study = optuna.load_study(study_name='early', storage=studies.open_storage(sys.argv[1]))\n"
        "study.ask(); study.ask()\n"  # the queued trial, then a new one
        "os._exit(0)\n"  # no heartbeat ever sent, nothing finished
    )
    subprocess.run([sys.executable, "-c", worker, str(journal)], check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    reopened = studies.open_storage(str(journal))
    study_id = reopened.get_study_id_from_name("early")
    running = [t._trial_id for t in reopened.get_all_trials(study_id, states=(TrialState.RUNNING,))]
    assert len(running) == 2
    assert reopened._get_stale_trial_ids(study_id) == sorted(running)


# ------------------------------------------------------------------------------------------ PostgreSQL
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package), or a skip saying why."""
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) not installed: pip install 'psycopg[binary]'")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the postgres user
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as its own user")
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own the test cluster")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    os.chmod(root, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"

    def pg(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout, cwd=root)

    started = False
    try:
        done = pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "bench", "--no-sync")
        if done.returncode != 0:
            pytest.skip(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        options = f"-p {port} -k {root} -h 127.0.0.1 -F"
        done = pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
        if done.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        started = True
        done = pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "optuna")
        assert done.returncode == 0, done.stderr
        yield f"postgresql+psycopg://bench@127.0.0.1:{port}/optuna"
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_study_with_two_workers_loses_no_trial(tmp_path, postgres_url):
    tune.tune("sasrec", "Beauty", profile=ONE_EPOCH, trials=4, parallel=2, executor="local", storage=postgres_url,
              results=tmp_path, study="pg", run_final=False)
    trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # the worker of each trial was recorded, so a dead one can be told apart from a slow one
    assert all("bench:owner" in t.system_attrs for t in trials)


def test_postgres_trial_of_a_dead_worker_is_failed_and_rerun(tmp_path, postgres_url):
    # The same dead-worker check as for a journal, on a database: a RUNNING trial whose owner process is
    # gone from this machine fails at once (not after the 180 s grace) and its parameters run again.
    from bench.tuning import liveness, studies

    tune.tune("sasrec", "Beauty", profile=ONE_EPOCH, trials=1, storage=postgres_url, results=tmp_path,
              study="pgz", run_final=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage = studies.open_storage(postgres_url)
    study = optuna.load_study(study_name="pgz", storage=storage)
    lr = optuna.distributions.FloatDistribution(1e-4, 5e-3, log=True)
    zombie = storage.create_new_trial(study._study_id)
    storage.set_trial_param(zombie, "lr", lr.to_internal_repr(0.0021), lr)
    storage.set_trial_system_attr(zombie, liveness.OWNER_KEY, {**liveness.current_owner(), "pid": gone.pid})

    tune.tune("sasrec", "Beauty", profile=ONE_EPOCH, trials=1, storage=postgres_url, results=tmp_path,
              study="pgz", run_final=False)
    trials = optuna.load_study(study_name="pgz", storage=postgres_url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs["rerun_of"] == 1 and trials[2].params["lr"] == pytest.approx(0.0021)
