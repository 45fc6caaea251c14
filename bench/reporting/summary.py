"""The answers: what the records say, per dataset (answers.md, and below the first screen of index.html).

Per dataset: the most accurate method (test NDCG@20) and whether it is significantly better than every
other; ELCRec against its best baseline with its interval; ELCRec against ICLRec per epoch, in time to
ICLRec's or ELCRec's best validation quality, and in peak memory. Each answer comes from the most
authoritative group that states a verdict on it (paper, then quick, smoke, custom; see
bench/reporting/runs.py), and names that group; where no group states one, the most authoritative group
that has the numbers says why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.files import write_text_atomic
from bench.reporting.comparisons import PairedTests
from bench.reporting.rendering import Block, render_md, versus_cell
from bench.reporting.runs import (
    COST_BASELINE,
    GROUP,
    METHOD_NAMES,
    PROPOSED,
    budget_kind,
    columns_of,
    converged_group,
    datasets_of,
    group_brief,
    groups_by_authority,
    in_group,
    paper_command,
)

METRIC = "NDCG@20"


def markers(name: str) -> tuple[str, str]:
    """The comments that delimit the generated block `name` of a README."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


README_BEGIN, README_END = markers("answers")
ELCREC, ICLREC = METHOD_NAMES.get(PROPOSED, PROPOSED), METHOD_NAMES.get(COST_BASELINE, COST_BASELINE)


@dataclass(frozen=True)
class Candidate:
    """One group's answer to a question: its text and whether it states a verdict (with its evidence)."""

    key: tuple
    text: str
    stated: bool


@dataclass
class Evidence:
    """What the answers are read from: the runs and the tables computed from them."""

    runs: pd.DataFrame
    acc: pd.DataFrame
    comp: pd.DataFrame
    targets: pd.DataFrame
    tests: PairedTests

    def where(self, frame: pd.DataFrame, key: tuple, dataset: str) -> pd.DataFrame:
        return frame[in_group(frame, key) & (frame["dataset"] == dataset)] if not frame.empty else frame


def _short(key: tuple) -> str:
    return ", ".join(str(v) for i, v in enumerate(key) if not (GROUP[i] == "protocol" and v == "reference"))


def _choose(ev: Evidence, dataset: str, candidates: list[Candidate], converged_only: bool) -> tuple[str, str]:
    """(answer, from): the first candidate (groups in authority order) with a verdict, else the first."""
    if not candidates:
        if converged_only:
            return f"no converged run on {dataset}: `{paper_command([dataset])}`", ""
        return "not measured: no group has it on this dataset", ""
    chosen = next((c for c in candidates if c.stated), candidates[0])
    source = group_brief(chosen.key, ev.where(ev.runs, chosen.key, dataset))
    if not converged_group(ev.runs, chosen.key):
        source += f"; {budget_kind(chosen.key[0]).split(' (')[0]}"
    skipped = [c for c in candidates[: candidates.index(chosen)]]
    if skipped:
        source += f". No verdict in: {'; '.join(_short(c.key) for c in skipped)}."
    return chosen.text, source


def _most_accurate(ev: Evidence, key: tuple, dataset: str) -> Candidate | None:
    r = ev.where(ev.acc, key, dataset)
    r = r[r["metric"] == METRIC].sort_values("mean", ascending=False, kind="stable")
    if len(r) < 2:
        return None
    best = r.iloc[0]
    head = f"{best['column']} ({best['mean']:.4f})"
    if best["mark"] == "best":
        return Candidate(key, f"{head}, significantly better than every other method (p < 0.05 in every test)", True)
    tests = [(c, ev.tests.test(key, dataset, METRIC, best["column"], c)) for c in r["column"].iloc[1:]]
    tested = any(t.available for _, t in tests)
    if round(best["mean"], 4) == round(r.iloc[1]["mean"], 4):
        return Candidate(key, f"{head}: a tie with {r.iloc[1]['column']} at the shown resolution", tested)
    weak = next(((c, t) for c, t in tests if t.available and not t.significant), None)
    if weak is not None:
        text = f"{head}, not significantly better than {weak[0]}: {weak[1].describe()}"
        return Candidate(key, text, True)
    return Candidate(key, f"{head}, the highest mean; {tests[0][1].describe()}", False)


def _versus_baseline(ev: Evidence, key: tuple, dataset: str) -> Candidate | None:
    r = ev.where(ev.acc, key, dataset)
    r = r[(r["metric"] == METRIC) & (r["method"] == PROPOSED) & r["best_baseline"].notna()]
    if r.empty:
        return None
    e = r.set_index("column").loc[columns_of(r)[0]]  # the group's first ELCRec column: faithful, paper config
    t = ev.tests.test(key, dataset, METRIC, e.name, e["best_baseline"])
    if not t.available:
        verdict = "no test possible"
    elif t.significant:
        verdict = f"{e.name} {'better' if e['elcrec_minus_best_baseline'] > 0 else 'worse'}"
    else:
        verdict = "no difference detectable"
    text = f"{e.name}: {versus_cell(e)}; {verdict}: {t.describe()}"
    return Candidate(key, text, t.available)


def _first_pair(frame: pd.DataFrame) -> pd.Series | None:
    """The first comparison row of a group and dataset: the comparisons are built in column order, so this is
    the pair of the first columns of both methods (config `paper`, as published, where the group has them)."""
    return None if frame.empty else frame.iloc[0]


def _cost(ev: Evidence, key: tuple, dataset: str, name: str) -> Candidate | None:
    r = _first_pair(ev.where(ev.comp, key, dataset))
    if r is None:
        return None
    stated = not isinstance(r[f"{name}_not_compared"], str) and r[f"_{name}"].has_interval
    return Candidate(key, f"{r['column_elcrec']} vs {r['column_iclrec']}: {r[f'{name}_verdict']}", stated)


def _time_to_target(ev: Evidence, key: tuple, dataset: str) -> Candidate | None:
    t = ev.where(ev.targets, key, dataset)
    if t.empty:
        return None
    t = t[(t["method_a"] == PROPOSED) & (t["method_b"] == COST_BASELINE) & (t["target_fraction"] == 1.0)]
    r = _first_pair(t)
    if r is None:
        return None
    stated = not isinstance(r["not_compared"], str) and pd.notna(r["low_pct"])
    text = (f"{r['column_a']} vs {r['column_b']}, to the best valid {METRIC} of {r['target_set_by']}"
            f" ({r['target_valid_ndcg20']:.4f}): {r['seconds_a']:.1f} s vs {r['seconds_b']:.1f} s; {r['verdict']}")
    return Candidate(key, text, stated)


# question -> (how one group answers it, whether only groups of converged runs may answer it). Which method
# is more accurate, and how long each takes to reach a quality, are properties of converged models: a few
# epochs of a pipeline check rank the methods by how fast they start. Seconds per epoch and peak memory do
# not depend on how long a run goes on, so any group measures them, and says which budget it ran.
QUESTIONS = {
    f"most accurate (test {METRIC})": (_most_accurate, True),
    f"{ELCREC} vs best baseline (test {METRIC})": (_versus_baseline, True),
    f"{ELCREC} vs {ICLREC}: training s per epoch after the first": (lambda ev, k, d: _cost(ev, k, d, "per_epoch"), False),
    f"{ELCREC} vs {ICLREC}: training s to a target quality": (_time_to_target, True),
    f"{ELCREC} vs {ICLREC}: peak memory": (lambda ev, k, d: _cost(ev, k, d, "memory"), False),
}


def answers_table(ev: Evidence) -> pd.DataFrame:
    """One row per (dataset, question): the answer and the group it comes from."""
    groups = groups_by_authority(ev.runs)
    converged = [key for key in groups if converged_group(ev.runs, key)]
    rows = []
    for dataset in datasets_of(ev.runs):
        said = False  # the command that runs the missing converged runs, once per dataset
        for i, (question, (ask, converged_only)) in enumerate(QUESTIONS.items()):
            keys = converged if converged_only else groups
            candidates = [c for c in (ask(ev, key, dataset) for key in keys) if c is not None]
            answer, source = _choose(ev, dataset, candidates, converged_only)
            if not candidates and converged_only:
                answer = "no converged run on this dataset (command above)" if said else answer
                said = True
            rows.append({"dataset": dataset if i == 0 else "", "question": question, "answer": answer, "from": source})
    return pd.DataFrame(rows)


SUMMARY_INTRO = (
    "Per dataset, each answer from the most authoritative group of runs that states a verdict on it (`paper`"
    " profile first, then `quick`, `smoke`, `custom`; within one, the reference protocol, the faithful variant"
    " and the GPU first); `from` names that group and its budget, and the more authoritative groups that have"
    " the numbers without a verdict. Accuracy and time to a target quality come from converged runs only"
    " (paper profile: stopped by patience or at the full epoch budget); where a dataset has none, the answer"
    " gives the command that runs them. Seconds per epoch and peak memory come from any group, a pipeline"
    " check's included, labelled as such. A verdict needs its evidence: a paired test for accuracy, a 95%"
    " interval for cost (bench/core/stats.py)."
)


def answer_blocks(ev: Evidence, header: str) -> list[Block]:
    return [("p", header), ("p", SUMMARY_INTRO), ("table", answers_table(ev))]


def answers_markdown(blocks: list[Block], scaling: list[Block]) -> str:
    """answers.md: every answer per dataset and the scaling study's answer, without images."""
    lines = [b for b in scaling if b[0] != "image"]
    title: Block = ("h1", "Every answer, per dataset")
    text = render_md([title, *blocks, *([("p", "Scaling study:"), *lines[1:]] if lines else [])])
    return text + "\nEvery table and plot: `index.html` (`python -m bench leaderboard` regenerates this file).\n"


def _span(text: str, name: str) -> tuple[int, int] | None:
    begin, end = markers(name)
    start, stop = text.find(begin), text.find(end)
    return (start + len(begin), stop) if 0 <= start <= stop else None


def current_readme_block(readme: Path, name: str = "answers") -> str | None:
    """The text between the markers of block `name` in `readme`, or None when it has no such block."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    span = _span(text, name)
    return None if span is None else text[span[0] : span[1]].strip("\n") + "\n"


def rewrite_readme(readme: Path, blocks: dict[str, str]) -> bool:
    """Replace what lies between the markers of each named block of `readme` by its text, atomically; True
    when the file changed. Blocks whose markers it lacks are skipped, so a README without any (an installed
    package, another project's) is left alone."""
    if not readme.is_file():
        return False
    text = new = readme.read_text(encoding="utf-8")
    for name, block in blocks.items():
        span = _span(new, name)
        if span is not None:
            new = new[: span[0]] + "\n" + block.strip("\n") + "\n" + new[span[1] :]
    if new == text:
        return False
    write_text_atomic(readme, new)
    return True
