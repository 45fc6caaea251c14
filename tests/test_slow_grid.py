"""End to end, slow (`tox -e slow` / `pytest -m slow`): the whole smoke grid, its tables, and its resume."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True)


def test_smoke_grid_records_tables_and_resume(tmp_path):
    first = _bench("run", "--all", "--profile", "smoke", "--results", str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    records = sorted((tmp_path / "runs").glob("*.json"))
    assert len(records) == 16
    assert {p.name.split("-")[0] for p in records} == {"sasrec", "cl4srec", "iclrec", "elcrec"}

    board = _bench("leaderboard", "--results", str(tmp_path))
    assert board.returncode == 0, board.stderr
    for name in ("leaderboard.md", "leaderboard.csv", "cost.md", "cost.csv", "index.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert "profile `smoke`" in (tmp_path / "leaderboard.md").read_text()

    mtimes = {p: p.stat().st_mtime_ns for p in records}
    second = _bench("run", "--all", "--profile", "smoke", "--results", str(tmp_path))
    assert second.returncode == 0 and "16 skipped" in second.stdout + second.stderr
    assert sorted((tmp_path / "runs").glob("*.json")) == records
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing was run or rewritten
