"""results/index.html: one self-contained page that leads with the answers, rendered in a real headless
browser and its screenshot checked.

The page is built from the fixture records (plus records of the `paper` and `custom` profiles made from
them, so that the order of authority differs from the alphabetical one) and from copies of the committed
scaling study, a packing table, the speed suite and the tuning study. The rendering test needs Chromium
(`apt-get install chromium`); without it the test is skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.core.records import read_record, record_path, write_record_atomic
from bench.reporting.leaderboard import write_leaderboard

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "records"
COMMITTED = REPO / "results"
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
ANSWERS_BACKGROUND = np.array([0xEE, 0xF4, 0xFB]) / 255


def _results(root: Path) -> Path:
    """Fixture records and copies of the committed studies, in a results folder of their own."""
    results = root / "results"
    shutil.copytree(FIXTURES / "runs", results / "runs")
    for profile, rid in (("custom", "c"), ("paper", "d")):  # one SASRec and one ELCRec run each
        for path in sorted((FIXTURES / "runs").glob("*-Beauty-s1-quick-*.json"))[:2]:
            record = read_record(path)
            record = {**record, "profile": profile, "run_id": f"{rid * 11}{record['method'][0]}"}
            write_record_atomic(record_path(results, record), record)
    scaling = results / "scaling"
    (scaling / "quiet-steps").mkdir(parents=True)
    for name in ("scaling.md", "context.json", "scaling_time_Beauty_cpu.png", "scaling_memory_Beauty_cpu.png"):
        shutil.copy(COMMITTED / "scaling" / name, scaling / name)
    shutil.copy(COMMITTED / "scaling" / "quiet-steps" / "context.json", scaling / "quiet-steps" / "context.json")
    (results / "benchmarks").mkdir()
    shutil.copy(COMMITTED / "benchmarks" / "packing-cpu-elcrec-Beauty.md", results / "benchmarks")
    shutil.copy(COMMITTED / "benchmarks" / "bench-amd-epyc-2c.json", results / "benchmarks")
    study = results / "studies" / "elcrec-Beauty-smoke"
    study.mkdir(parents=True)
    for name in ("best.json", "importances.csv", "history.png"):
        shutil.copy(COMMITTED / "studies" / "elcrec-Beauty-smoke" / name, study / name)
    return results


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    write_leaderboard(_results(root), root / "out")
    return root / "out" / "index.html"


def test_index_html_leads_with_the_answers_and_is_self_contained(page: Path) -> None:
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # The answers from converged runs, each headline question's evidence, every answer per dataset, the
    # scaling study's answer with its plots, then the details.
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    expected = ["Answers, from converged runs", "Does ELCRec beat ICLRec on Beauty?",
                "Is an intent module worth more than the loss?", "Every answer, per dataset",
                "Scaling: does ELCRec save time as users grow?", "Details"]
    assert headings[:6] == expected, headings[:7]
    headline = text.split('id="headline"', 1)[1].split("</section>", 1)[0]
    assert "published seed-1 checkpoint" in headline and "0.0483" in headline
    answers = text.split('id="answers"', 1)[1].split("</section>", 1)[0]
    assert answers.count("<img ") == 1 and "Forest plot of the headline claims" in answers
    assert "most accurate" not in answers  # the long table is evidence, below
    every = text.split('id="every-answer"', 1)[1].split("</section>", 1)[0]
    assert "most accurate (test NDCG@20)" in every and "ELCRec vs ICLRec: peak memory" in every
    scaling = text.split('id="scaling"', 1)[1].split("</section>", 1)[0]
    assert "Crossover (measured): none" in scaling and scaling.count("<img") == 2
    assert "took 1.08x ICLRec's (interquartile range 1.01-1.15x" in scaling  # the rerun's step ratio
    # Groups by authority, not alphabetically: paper, quick, smoke, custom, each collapsible.
    groups = re.findall(r'<details class="part" id="g\d+"><summary><h2>profile <code>(\w+)</code>', text)
    assert groups == ["paper", "quick", "smoke", "custom"]
    assert "Packing elcrec on Beauty" in text and "test_train_step[iclrec]" in text and "attn_dropout" in text
    # Plots inline with alt text, no external resource, no script, no path of the machine that made it.
    images = re.findall(r'<img src="([^"]{0,40})[^"]*" alt="([^"]*)"', text)
    assert len(images) == 1 + 4 * 4 + 2 + 1  # the forest plot, 4 groups x 4 plots, the two scaling plots, the study's history
    assert all(src.startswith("data:image/png;base64,") and len(alt) > 20 for src, alt in images)
    assert "methods: SASRec, CL4SRec, ICLRec, ELCRec" in text  # an alt text says what a plot shows
    assert not re.search(r'(src|href)="(http|file:|/)', text) and "<script" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'; img-src data:" in text
    assert str(FIXTURES) not in text and "/tmp/" not in text


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_index_html_renders_answers_first_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "index.png"
    # The page's own policy refuses every network request; the images must still show (they are inline).
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "Chromium wrote no screenshot"
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1400)
    dark = (pixels.max(axis=2) < 0.3).mean()
    assert 0.002 < dark < 0.3, f"share of dark pixels {dark:.4f}"
    # Rows of the screenshot where the answers' background fills a fifth of the width: the summary, on top.
    answers_rows = np.flatnonzero((np.abs(pixels - ANSWERS_BACKGROUND).max(axis=2) < 0.01).mean(axis=1) > 0.2)
    assert answers_rows.size and answers_rows[0] < 150, "the answers are not at the top of the page"
    # The first colours (matplotlib's markers) are the forest plot's, inside the answers: the one figure there.
    colourful = np.flatnonzero(((pixels.max(axis=2) - pixels.min(axis=2)) > 0.3).mean(axis=1) > 0.002)
    assert colourful.size and answers_rows[0] < colourful[0] < answers_rows[-1], "no figure among the answers"

