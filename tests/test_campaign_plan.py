"""`bench campaign`: plans are checked before any work, lanes share the runs, stops reach the grids."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from bench.campaign import plan as campaign
from tests.conftest import REPO, run_cli

TINY = """
[campaign]
profile = "smoke"
device = "cpu"
threads = 1
epochs = 1
max_users = 60
checkpoint_every = 1
"""


def _plan(tmp_path, steps: str, budget: str = TINY):
    path = tmp_path / "plan.toml"
    path.write_text(budget + steps)
    return campaign.load_plan(path, tmp_path / "campaign")


def test_the_shipped_plan_builds_every_run_it_names():
    plan = campaign.load_plan(REPO / "campaigns" / "evidence.toml")
    specs = campaign.step_specs(plan)
    assert [s.name for s in plan.steps][:2] == ["ICLRec Beauty seed 2", "SASRec-CE Beauty seed 1"]
    ce = specs["SASRec-CE Beauty seed 1"][0]
    assert ce.config.rec_loss == "ce" and ce.profile == "paper" and ce.device == "cpu"
    bce = specs["SASRec Beauty seeds 2, 3"]
    assert [s.seed for s in bce] == [2, 3] and all(s.config.rec_loss == "bce" for s in bce)
    # the loss-matched baseline is a run of its own, never a rerun of the BCE one
    ids = [s.run_id for runs in specs.values() for s in runs]
    assert len(ids) == len(set(ids)) == 12


@pytest.mark.parametrize(
    "steps, budget, message",
    [
        ("", TINY, "no [[step]] to run"),
        ('[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\nseed = [1]\n', TINY, "unknown key(s) seed"),
        ('[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\nseeds = ["1"]\n', TINY, "seeds must be"),
        ('[[step]]\ndatasets = ["Beauty"]\n', TINY, "methods must be a non-empty list"),
        ('[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\n', "[campaign]\nepoch = 3\n", "unknown [campaign] key(s) epoch"),
        ("[[step]\n", TINY, "not valid TOML"),
    ],
)
def test_a_bad_plan_gets_one_line_before_any_work(tmp_path, capsys, steps, budget, message):
    path = tmp_path / "plan.toml"
    path.write_text(budget + steps)
    code, out, err = run_cli(["campaign", path, "--dry-run"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_a_missing_plan_is_named(tmp_path, capsys):
    code, _, err = run_cli(["campaign", tmp_path / "nope.toml", "--status"], capsys)
    assert code == 2 and "nope.toml not found" in err


def test_a_step_is_the_grid_command_a_person_would_type(tmp_path):
    plan = _plan(tmp_path, '[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\nseeds = [2, 3]\nset = ["rec_loss=ce"]\n')
    command = campaign.step_command(plan, plan.steps[0], "600s")
    text = " ".join(command[1:])
    assert text.startswith("-m bench run --all --methods sasrec --datasets Beauty --seeds 2 3 --set rec_loss=ce")
    assert "--profile smoke" in text and "--threads 1" in text and "--executor local" in text
    assert text.endswith(f"--results {tmp_path / 'campaign'} --time-budget 600s")


def test_two_lanes_train_each_run_once_collect_copies_the_finished_ones_and_a_fresh_folder_skips_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    plan = _plan(tmp_path, '[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\nseeds = [1]\n'
                           '[[step]]\nmethods = ["sasrec"]\ndatasets = ["Beauty"]\nseeds = [2]\n')
    assert campaign.run_campaign(plan, lanes=2, niceness=0, say=lambda _: None, stagger_s=0.5) == 0
    finished = sorted(p.name for p in (plan.results / "runs").glob("*.json"))
    assert len(finished) == 2  # seeds 1 and 2, one record each: no lane trained a run twice
    logs = "".join(p.read_text() for p in (plan.results / "logs").glob("lane*.log"))
    trained = [int(n) for n in re.findall(r"^grid: (\d+) ok", logs, flags=re.M)]
    assert len(trained) == 4 and sum(trained) == 2  # two lanes x two steps, each run trained by one grid

    dest = tmp_path / "repo-results"
    (dest / "runs").mkdir(parents=True)
    (dest / "runs" / finished[0]).write_text(json.dumps({"kept": True}))  # already there: left alone
    code, out, _ = run_cli(["campaign", plan.path, "--results", plan.results, "--collect", dest], capsys)
    assert code == 0 and "1 finished record(s) copied" in out
    assert json.loads((dest / "runs" / finished[0]).read_text()) == {"kept": True}
    assert json.loads((dest / "runs" / finished[1]).read_text())["status"] == "ok"

    code, out, _ = run_cli(["campaign", plan.path, "--results", plan.results, "--status"], capsys)
    assert code == 0 and out.count("done: best epoch 0") == 2 and "2 ok" in out

    # A fresh machine: an empty campaign folder, and a checkout that has committed one of the two records.
    fresh = campaign.load_plan(plan.path, tmp_path / "fresh")
    campaign.print_plan_status(fresh, committed=dest)
    out = capsys.readouterr().out
    assert "1 ok, 1 pending" in out
    said = []
    assert campaign.run_campaign(fresh, lanes=1, niceness=0, say=said.append, stagger_s=0, committed=dest) == 0
    assert any("1 run(s) of the plan already committed" in line for line in said)
    logs = (fresh.results / "logs" / "lane1.log").read_text()
    # step 1 (seed 1) trains its run; step 2 (seed 2, the committed one) trains nothing
    assert re.findall(r"^grid: (\d+) ok", logs, flags=re.M) == ["1", "0"] and "1 already done (skipped)" in logs


def test_a_stop_reaches_every_lanes_process():
    lanes = campaign.Lanes()
    codes = []
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    threads = [threading.Thread(target=lambda: codes.append(lanes.run(sleeper, subprocess.DEVNULL, 0)))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while len(lanes.children) < 2 and time.time() < deadline:
        time.sleep(0.05)
    lanes.stop()
    for t in threads:
        t.join(timeout=10)
    assert codes == [-15, -15]
    assert lanes.run(sleeper, subprocess.DEVNULL, 0) is None  # nothing new starts once stopping
