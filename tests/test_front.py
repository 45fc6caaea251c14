"""The first screen (bench/reporting/front.py), the second headline question (loss_question.py) and the forest
plot (forest.py), from records built as a real run's (test_verdicts' make_record): only converged runs answer,
seeds enter the tests and intervals once each method has 3, and missing runs are named with their command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core import records
from bench.reporting import forest, front, headline, loss_question
from bench.reporting.leaderboard import build, write_leaderboard
from bench.reporting.runs import completed_runs, converged
from tests.test_verdicts import _ranks, make_record


def _better(base: np.ndarray, users: int = 600) -> np.ndarray:
    better = base.copy()
    better[:users] = np.minimum(better[:users], 2)  # these users' answers moved into the top 3
    return better


def _paper(method: str, seed: int, ranks: np.ndarray, train_s=(12.0, 10.0, 10.0, 10.0), loss: str = "bce") -> dict:
    record = make_record(method, seed=seed, ranks=ranks, profile="paper", train_s=train_s, hour=seed)
    if loss != "bce":  # `--set rec_loss=...`: its own run id, a "custom" config, mode "modified" (docs/methods.md)
        record = {**record, "config": {**record["config"], "rec_loss": loss}, "config_source": "custom",
                  "variant": {**record["variant"], "rec_loss": loss, "mode": "modified"},
                  "run_id": f"{method[:4]}{loss}{seed}".ljust(12, "0")}
    return record


def _evidence(tmp_path: Path, recs: list[dict]):
    for r in recs:
        records.save(tmp_path, r)
    return build(tmp_path).evidence


# ------------------------------------------------------------------------------------------- converged
def test_a_run_converged_when_a_profile_meant_to_converge_stopped_by_patience_or_at_its_budget() -> None:
    runs = pd.DataFrame({
        "profile": ["paper", "paper", "paper", "smoke", "custom"],
        "epochs_run": [156, 300, 120, 3, 300],
        "best_epoch": [115, 294, 119, 2, 250],
        "spec_epochs": [300, 300, 300, 3, 300],
        "spec_patience": [40, 40, 40, 3, 40],
    })
    # patience (115 + 40 + 1 epochs), the full budget, a paper run cut short by hand, a smoke run, a custom one
    assert list(converged(runs)) == [True, True, False, False, False]


# ------------------------------------------------------------------------------------ the loss question
def _loss_records(seeds=(1, 2, 3)) -> list[dict]:
    """SASRec-CE puts twice as many users' answers in the top 3 as ELCRec, which is ahead of ICLRec."""
    recs = []
    for seed in seeds:
        base = _ranks(0.10, seed=seed)
        recs += [_paper("sasrec", seed, _ranks(0.06, seed=seed + 10), (6.0, 4.0, 4.1 + seed / 10, 4.0)),
                 _paper("sasrec", seed, _better(_ranks(0.10, seed=seed + 20), 1200), (8.0, 5.0, 5.1 + seed / 10, 5.0),
                        loss="ce"),
                 _paper("iclrec", seed, base, (12.0, 10.0, 10.0 + seed / 10, 10.0)),
                 _paper("elcrec", seed, _better(base), (12.0, 9.0, 9.0 + seed / 10, 9.0))]
    return recs


def test_without_loss_matched_runs_the_question_says_what_is_missing_and_the_command(tmp_path: Path) -> None:
    recs = [r for r in _loss_records(seeds=(1,)) if r["config"]["rec_loss"] == "bce"]
    ev = _evidence(tmp_path, recs)
    answer = loss_question.loss_answer(ev)
    assert answer == ("Not answered yet: no converged SASRec run with `rec_loss=ce` (the loss-matched baseline) on"
                      " Beauty; `python -m bench run --all --profile paper --methods sasrec --datasets Beauty"
                      " --seeds 1 2 3 --set rec_loss=ce --checkpoint-every 1`.")
    claims = loss_question.loss_claims(ev, "Beauty")
    assert [c.missing for c in claims] == ["not run yet: SASRec with rec_loss=ce"] * 3
    # The published figures stand beside the loss's own row even before our runs exist.
    assert [round(v, 1) for v, _ in claims[2].published] == [67.0, 48.0]
    table = next(content for kind, content in loss_question.loss_blocks(ev) if kind == "table").set_index("row")
    assert table.loc["SASRec-CE, ours", "seeds"] == "0 (not run yet)"
    assert table.loc["SASRec, sampled softmax (256 negatives) (eSASRec benchmark)", "NDCG@10"] == "0.0531"
    assert table.loc["BCE SASRec, as reported (RecBole #1290)", "NDCG@10"] == "0.0281"


def test_three_seeds_of_a_stronger_loss_matched_baseline_answer_no_with_seed_intervals(tmp_path: Path) -> None:
    ev = _evidence(tmp_path, _loss_records())
    answer = loss_question.loss_answer(ev)
    assert answer.startswith("No: SASRec-CE is more accurate than every intent method (test NDCG@10, each against SASRec-CE):")
    assert answer.count("(paired t, 3 seeds)") == 2 and "seed to seed" not in answer
    icl, elc, loss = loss_question.loss_claims(ev, "Beauty")
    for claim in (icl, elc):
        # the interval over seeds is the one drawn and written; the one over users is kept beside it
        assert claim.basis == "3 seeds" and claim.high_pct < 0 and claim.inner is not None and claim.inner[1] < 0
    assert loss.label == "SASRec-CE vs SASRec-BCE, test NDCG@10" and loss.low_pct > 0
    blocks = loss_question.loss_blocks(ev)
    lines = [x for kind, content in blocks if kind == "list" for x in content]
    cost = next(x for x in lines if x.startswith("ICLRec against SASRec-CE, training s per epoch"))
    assert re.search(r": \+[\d.]+% \[\+[\d.]+%, \+[\d.]+%\] \(3\+3 seeds\)\.$", cost)  # ICLRec's epochs cost more
    acc = next(x for x in lines if x.startswith("Test NDCG@10, ELCRec - SASRec-CE"))
    assert " over users, [" in acc and " over 3 seeds" in acc and acc.endswith("(paired t, 3 seeds).")


# ------------------------------------------------------------------------------------ the first headline
def test_a_claim_that_holds_over_users_but_not_over_seeds_is_not_said_to_hold(tmp_path: Path) -> None:
    recs = []
    for seed in (1, 2, 3):
        base = _ranks(0.10, seed=seed)
        # ELCRec far ahead in seeds 1 and 3, behind in seed 2: the users (averaged over seeds) still favour it
        elc, icl = (base, _better(base)) if seed == 2 else (_better(base), base)
        recs += [_paper("iclrec", seed, icl, (12.0, 10.0, 10.0 + seed / 10, 10.0)),
                 _paper("elcrec", seed, elc, (12.0, 8.0, 8.0 + seed / 10, 8.0))]
    ev = _evidence(tmp_path, recs)
    answer = headline.headline_answer(ev)
    assert answer.startswith("Partly: no accuracy difference is detectable on test NDCG@5,")
    assert "p=<1e-4 (Wilcoxon, 2,000 users); p=" in answer and "(paired t, 3 seeds); interval over 3 seeds)" in answer
    assert "per epoch, ELCRec is cheaper: -19.9% [" in answer and "(the paper -22.5% in total; 3+3 seeds)" in answer
    acc = headline.headline_claims(ev, "Beauty")[0]
    assert acc.basis == "3 seeds" and acc.low_pct < 0 < acc.inner[0]  # users alone would have said "better"


# --------------------------------------------------------------------------------------- the first screen
def test_the_first_screen_states_only_converged_answers_and_opens_with_the_figure(tmp_path: Path) -> None:
    base = _ranks(0.10, seed=1)
    recs = [_paper("iclrec", 1, base), _paper("elcrec", 1, _better(base)), _paper("sasrec", 1, _ranks(0.06, seed=3))]
    # Yelp has only a pipeline check, in which DuoRec is far ahead of everything.
    recs += [make_record(m, dataset="Yelp", ranks=_ranks(share, seed=i)) for i, (m, share) in
             enumerate((("iclrec", 0.05), ("elcrec", 0.05), ("duorec", 0.4)))]
    for r in recs:
        records.save(tmp_path, r)
    write_leaderboard(tmp_path, tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    first = page.split('<section class="top" id="answers">', 1)[1].split("</section>", 1)[0]
    assert first.index("Does ELCRec beat ICLRec on Beauty?") < first.index("Is an intent module worth more than the loss?")
    assert first.count("<img ") == 1 and "Forest plot of the headline claims" in first
    assert "Yelp: no converged run yet" in first and "--datasets Yelp --seeds 1 2 3" in first
    assert "significantly better" not in first and "most accurate" not in first and "DuoRec" not in first
    # The answers per dataset follow, below both headline sections; Yelp's pipeline check answers no accuracy.
    assert page.index('id="headline"') < page.index('id="loss"') < page.index('id="every-answer"')
    # Yelp's group is listed as what it is, and its table marks nothing.
    assert re.search(r"<h2>profile <code>smoke</code>[^<]*(<code>[^<]*</code>[^<]*)*: pipeline check at a few epochs,"
                     r" not converged</h2>", page)
    smoke = page.split("<summary><h2>profile <code>smoke</code>", 1)[1].split("</details>", 1)[0]
    assert "0.0" in smoke and "<b>0." not in smoke and "<u>0." not in smoke
    answers = (tmp_path / "out" / "answers.md").read_text()
    yelp = next(line for line in answers.splitlines() if line.startswith("| Yelp | most accurate"))
    assert "no converged run on Yelp" in yelp and "DuoRec" not in yelp
    table = front.converged_table(completed_runs(records.load_records(tmp_path)))
    assert list(table["method"]) == ["SASRec", "ICLRec", "ELCRec"] and set(table["dataset"]) == {"Beauty"}
    assert set(table["best epoch / epochs (stopped by)"]) == {"s1: 3 / 4 (budget)"}
    claims = pd.read_csv(tmp_path / "out" / "forest.csv")
    assert list(claims["claim"]) == ["ELCRec vs ICLRec, test NDCG@5", "ELCRec vs ICLRec, test NDCG@20",
                                     "ELCRec vs ICLRec, training s per epoch", "ICLRec vs SASRec-CE, test NDCG@10",
                                     "ELCRec vs SASRec-CE, test NDCG@10", "SASRec-CE vs SASRec-BCE, test NDCG@10"]
    assert claims["published"].iloc[0] == "ELCRec paper +8.9%" and claims["published"].iloc[2] == "ELCRec paper -22.5%"
    assert (tmp_path / "out" / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_the_forest_plot_keeps_every_row_and_its_legend_inside_the_figure() -> None:
    claims = [forest.Claim("Beauty", "ELCRec vs ICLRec, test NDCG@5", 5.5, 0.7, 10.3, "22,363 users, 1 seed(s)",
                           published=((8.9, "ELCRec paper"),)),
              forest.Claim("Beauty", "ELCRec vs SASRec-CE, test NDCG@10", -20.0, -30.0, -5.0, "3 seeds", (-25.0, -12.0)),
              forest.Claim("Toys_and_Games", "ELCRec vs ICLRec, training s per epoch", missing="not run yet: ICLRec")]
    fig = forest.forest_figure(claims, "claims")
    forest.png(fig)  # draws it: the layout is final
    renderer = fig.canvas.get_renderer()
    box, inside = fig.legends[0].get_window_extent(renderer), fig.bbox
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{c.dataset}: {c.label}" for c in claims]
    notes = fig.axes[1]  # the written-out intervals, in an axes of their own beside the plot
    texts = [t.get_text() for t in notes.texts]
    assert texts[0].startswith("ours +5.5% [+0.7%, +10.3%], 22,363 users") and texts[0].endswith("ELCRec paper +8.9%")
    assert texts[2] == "not run yet: ICLRec"
    # However long a row's words, the plot keeps its width (written beside it, they once squeezed it to a sliver).
    long = [forest.Claim("Beauty", "ELCRec vs ICLRec, training s per epoch", -15.9, -19.9, -11.7, "167+408 epochs; " * 12)]
    squeezed = forest.forest_figure(long, "claims")
    forest.png(squeezed)
    assert squeezed.axes[0].get_window_extent(squeezed.canvas.get_renderer()).width > 0.3 * squeezed.bbox.width
    for figure in (fig, squeezed):  # ... and the words stay on the figure
        for text in figure.axes[1].texts:
            extent = text.get_window_extent(figure.canvas.get_renderer())
            assert figure.bbox.x0 <= extent.x0 and extent.x1 <= figure.bbox.x1
    assert "Toys_and_Games, ELCRec vs ICLRec, training s per epoch: not run yet: ICLRec" in forest.describe(claims)


def test_the_group_with_three_seeds_answers_before_a_more_authoritative_one_with_one(tmp_path: Path) -> None:
    recs = []
    for seed in (1, 2, 3):
        base = _ranks(0.10, seed=seed)
        recs += [_paper("iclrec", seed, base), _paper("elcrec", seed, _better(base))]
    # One seed each on a GPU: a group of its own, first by authority, but without the spread between seeds.
    gpu = [{**_paper(m, 1, _ranks(0.10, seed=9)), "device": "cuda", "run_id": f"{m[:4]}gpu1".ljust(12, "0")}
           for m in ("iclrec", "elcrec")]
    ev = _evidence(tmp_path, recs + gpu)
    assert set(ev.runs["device"]) == {"cpu", "cuda"}
    blocks = headline.headline_blocks(ev)
    assert blocks[0][1].startswith("From paper, cpu, faithful (all users, 4 epochs, 3 seed(s))")
    assert "interval over 3 seeds" in headline.headline_answer(ev)
