"""The answers (bench/reporting/summary.py): which group each comes from, README.md's generated block, and
the tables for any number of methods and recommendation losses. Records are built with test_verdicts'
make_record, so they take the same path to the tables as a real run's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core import records
from bench.reporting import plots
from bench.reporting.leaderboard import build, readme_blocks, write_leaderboard
from bench.reporting.runs import METHOD_COLORS, METHOD_NAMES, column_colors, completed_runs
from bench.reporting.summary import README_BEGIN, README_END, current_readme_block, markers, rewrite_readme
from tests.conftest import run_cli
from tests.test_verdicts import _ranks, make_record

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "records"


def _answers(tmp_path: Path, recs: list[dict]) -> pd.DataFrame:
    for r in recs:
        records.save(tmp_path, r)
    table = build(tmp_path).answers()[-1][1]
    table["dataset"] = table["dataset"].replace("", np.nan).ffill()
    return table.set_index(["dataset", "question"])


def _without_ranks(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "ranks"}


def test_accuracy_answers_come_from_converged_runs_only_and_cost_from_any_group(tmp_path: Path) -> None:
    # quick: one seed, no per-user ranks: accuracy has no test; its epochs give a per-epoch cost interval.
    quick = [_without_ranks(make_record(m, profile="quick", train_s=t, hour=1, ranks=_ranks(share, seed=7)))
             for m, t, share in (("iclrec", (20.0, 10.0, 10.4, 9.8, 10.2), 0.1),
                                 ("elcrec", (30.0, 5.0, 5.2, 4.9, 5.1), 0.2))]
    # smoke: three seeds with ranks; ELCRec clearly more accurate, and lighter in memory in every seed.
    smoke = []
    for seed in (1, 2, 3):
        base = _ranks(0.10, seed=seed)
        smoke.append(make_record("iclrec", seed=seed, ranks=base, hour=2))
        smoke.append(make_record("elcrec", seed=seed, ranks=_better(base), memory_mb=400 + seed, hour=2))
    answers = _answers(tmp_path, quick + smoke)
    # A pipeline check's clear difference is no answer on accuracy: the answer gives the command instead.
    best = answers.loc[("Beauty", "most accurate (test NDCG@20)")]
    assert best["answer"] == ("no converged run on Beauty: `python -m bench run --all --profile paper --datasets"
                              " Beauty --seeds 1 2 3 --checkpoint-every 1`")
    assert answers.loc[("Beauty", "ELCRec vs best baseline (test NDCG@20)"), "answer"].startswith(
        "no converged run on this dataset (command above)")
    text = " ".join(answers["answer"]) + " ".join(answers["from"])
    assert "significantly better" not in text and "ELCRec better" not in text
    # Seconds per epoch and memory do not depend on convergence: any group answers, labelled by its budget.
    per_epoch = answers.loc[("Beauty", "ELCRec vs ICLRec: training s per epoch after the first")]
    assert "ELCRec saves: -50" in per_epoch["answer"] and per_epoch["from"].startswith("quick, cpu, faithful")
    assert per_epoch["from"].endswith("; pipeline check at a few epochs, not converged")
    memory = answers.loc[("Beauty", "ELCRec vs ICLRec: peak memory")]
    assert "ELCRec saves" in memory["answer"] and memory["from"].startswith("smoke")  # needs 2+ seeds
    target = answers.loc[("Beauty", "ELCRec vs ICLRec: training s to a target quality"), "answer"]
    assert target.startswith("no converged run")
    # The same difference in converged runs (the paper profile, run to the full budget) is an answer.
    paper = []
    for seed in (1, 2, 3):
        base = _ranks(0.10, seed=seed)
        paper.append(make_record("iclrec", seed=seed, ranks=base, hour=3, profile="paper"))
        paper.append(make_record("elcrec", seed=seed, ranks=_better(base), hour=3, profile="paper"))
    answers = _answers(tmp_path, paper)
    best = answers.loc[("Beauty", "most accurate (test NDCG@20)")]
    assert best["answer"].startswith("ELCRec (0.") and "significantly better than every other method" in best["answer"]
    assert best["from"].startswith("paper, cpu, faithful (all users, 4 epochs, 3 seed(s))")
    versus = answers.loc[("Beauty", "ELCRec vs best baseline (test NDCG@20)"), "answer"]
    assert "vs ICLRec" in versus and "ELCRec better: p=<1e-4 (Wilcoxon, 2,000 users); p=" in versus
    target = answers.loc[("Beauty", "ELCRec vs ICLRec: training s to a target quality"), "answer"]
    assert "to the best valid NDCG@20 of ICLRec" in target and "(3+3 seeds)" in target


def _better(base: np.ndarray) -> np.ndarray:
    better = base.copy()
    better[:600] = np.minimum(better[:600], 2)  # 600 users' answers moved into the top 3
    return better


def test_an_answer_no_group_has_says_so(tmp_path: Path) -> None:
    answers = _answers(tmp_path, [make_record("sasrec"), make_record("cl4srec")])
    assert answers.loc[("Beauty", "ELCRec vs ICLRec: peak memory"), "answer"].startswith("not measured")


def test_the_committed_readme_blocks_are_what_the_command_writes() -> None:
    expected = readme_blocks(REPO / "results")
    assert set(expected) == {"front", "headline", "loss"}
    for name, text in expected.items():
        block = current_readme_block(REPO / "README.md", name)
        assert block is not None, f"README.md lacks {' ... '.join(markers(name))}"
        assert block == text, f"README.md's {name} block is stale: run python -m bench leaderboard"


def test_readme_block_is_rewritten_between_its_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    begin, end = markers("other")
    readme.write_text(f"# title\n\nbefore\n{README_BEGIN}\nold answers\n{README_END}\nmid\n{begin}\nold\n{end}\n")
    assert rewrite_readme(readme, {"answers": "new answers\n", "other": "new other", "absent": "never written"})
    assert readme.read_text() == (f"# title\n\nbefore\n{README_BEGIN}\nnew answers\n{README_END}\nmid\n{begin}\n"
                                  f"new other\n{end}\n")
    assert current_readme_block(readme, "other") == "new other\n" and current_readme_block(readme, "absent") is None
    assert not rewrite_readme(readme, {"answers": "new answers\n"})  # unchanged: not written again
    plain = tmp_path / "OTHER.md"
    plain.write_text("no markers here\n")
    assert not rewrite_readme(plain, {"answers": "new answers\n"}) and plain.read_text() == "no markers here\n"
    assert not rewrite_readme(tmp_path / "missing.md", {"answers": "x"}) and not (tmp_path / "missing.md").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_leaderboard_command_rewrites_the_readme_beside_its_results(tmp_path: Path, capsys) -> None:
    shutil.copytree(FIXTURES / "runs", tmp_path / "results" / "runs")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + "".join(f"{b}\n{e}\n" for b, e in map(markers, ("front", "headline", "loss"))))
    code, out, err = run_cli(["leaderboard", "--results", tmp_path / "results"], capsys)
    assert code == 0, err
    assert str(readme) in out.splitlines()
    blocks = readme_blocks(tmp_path / "results")
    assert all(current_readme_block(readme, name) == text for name, text in blocks.items())
    text = readme.read_text()
    assert "**Does ELCRec beat ICLRec on Beauty?**" in text and "(results/forest.png)" in text
    assert "| ICLRec, published (Tables 1, 2) | mean of 3 | 0.0495 |" in text
    # Every answer per dataset is in answers.md beside the records, not on the README's first screen.
    assert "| Beauty | most accurate (test NDCG@20) |" in (tmp_path / "results" / "answers.md").read_text()
    assert "most accurate" not in text


# ---------------------------------------------------------------------------------------- many methods
def _named(record: dict, rid: str, **options) -> dict:
    return {**record, "run_id": rid.ljust(12, "0"), "config": {**record["config"], **options},
            "variant": {**record["variant"], **options}}


def test_six_methods_two_losses_and_an_unregistered_one(tmp_path: Path) -> None:
    methods = ("sasrec", "cl4srec", "iclrec", "elcrec", "icsrec", "duorec", "toy")
    recs = [_named(make_record(m, profile="paper", ranks=_ranks(0.05 + 0.01 * i, seed=i)), f"{m}{i}",
                   **({"rec_loss": "ce_last"} if m in ("icsrec", "duorec") else {}))
            for i, m in enumerate(methods)]
    # The same SASRec seed trained with full-softmax cross-entropy: its own column, never averaged with bce.
    recs.append(_named(make_record("sasrec", profile="paper", ranks=_ranks(0.3, seed=9)), "sasrecce", rec_loss="ce"))
    for r in recs:
        records.save(tmp_path, r)
    runs = completed_runs(records.load_records(tmp_path))
    name = {m: METHOD_NAMES.get(m, m) for m in methods}
    # A column names a loss only where it is not the method's published one (ce_last is ICSRec's and DuoRec's).
    assert len(runs) == 8 and {"SASRec", "SASRec (ce)", name["icsrec"], name["duorec"], "toy"} <= set(runs["column"])
    colors = column_colors(runs)  # two columns of one method are two lines in a plot: never one colour
    assert colors["SASRec"] == METHOD_COLORS["sasrec"] and len(set(colors.values())) == len(colors) == 8
    write_leaderboard(tmp_path, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| dataset | metric | SASRec"))
    assert header.count(" | ") >= 2 + 8  # every column, the unregistered method's under its registry name
    # The best baseline is named whatever it is: here SASRec trained with ce.
    assert "vs SASRec (ce)" in md
    published = md.split("### Published numbers", 1)[1].split("\n#", 1)[0]
    assert "0.0663 / " in published  # ICSRec's Beauty NDCG@20 from ICSRec's table, beside its ce_last run
    assert "0.0536 / " in published  # DuoRec's, from the same table
    assert "ICSRec paper (Qin et al., WSDM 2024)" in published
    pub_header = next(line for line in published.splitlines() if line.startswith("| dataset"))
    assert "SASRec (ce)" not in pub_header and "toy" not in pub_header  # no published number for another loss
    cost = pd.read_csv(tmp_path / "out" / "cost.csv")
    assert len(cost) == 8 and set(cost["rec_loss"]) == {"bce", "ce", "ce_last"}
    pairs = pd.read_csv(tmp_path / "out" / "cost_time_to_target.csv")
    assert len(pairs) == 3 * 8 * 7 // 2  # every pair of the 8 columns, three targets each


def test_legends_of_many_long_columns_stay_inside_the_figure(tmp_path: Path) -> None:
    recs = []
    for i, m in enumerate(("sasrec", "cl4srec", "iclrec", "elcrec", "icsrec", "duorec", "a_method_with_a_long_name")):
        for dataset in ("Beauty", "Yelp"):
            recs.append(_named(make_record(m, ranks=_ranks(0.05 + 0.01 * i, seed=i), dataset=dataset), f"{m[:5]}{i}{dataset[:2]}"))
    for r in recs:
        records.save(tmp_path, r)
    board = build(tmp_path)
    ev, title = board.evidence, "smoke, reference, cpu, faithful"
    figures = [plots.convergence_figure(ev.runs, title), plots.accuracy_figure(ev.acc, title),
               plots.tradeoff_figure(ev.runs, title), plots.cost_figure(board.cost, title)]
    for fig in figures:
        plots.png(fig)  # draws the figure: the layout is final
        renderer = fig.canvas.get_renderer()
        box, inside = fig.legends[0].get_window_extent(renderer), fig.bbox
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        # the methods' columns (each with its loss where the group's losses differ), or the cost plot's phases
        assert any(label.startswith("a_method_with_a_long_name") for label in labels) or "train" in labels
        for ax in fig.axes:  # beside the panels, never over them
            assert not box.overlaps(ax.get_window_extent(renderer))
    colors = column_colors(ev.runs)
    assert len(set(colors.values())) == len(colors)  # seven columns, seven colours
