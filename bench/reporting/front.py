"""The first screen of README.md and results/index.html: the two headline questions, each answered in one
sentence with its interval, one figure (every claim as a point with its 95% interval, the published value
beside it), then the table of converged runs and, per dataset without any, the command that runs them.

Only converged runs speak here (bench/reporting/runs.converged: the paper profile, stopped by patience or at
its full epoch budget). Smoke, quick and custom runs are pipeline checks and stay in the evidence below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.reporting import forest
from bench.reporting.headline import HEADLINE_DATASET, HEADLINE_TITLE, headline_answer, headline_claims
from bench.reporting.loss_question import LOSS_TITLE, loss_answer, loss_claims
from bench.reporting.rendering import Block, Image, num, render_md
from bench.reporting.runs import (
    DATASET_ORDER,
    GROUP,
    columns_of,
    datasets_of,
    in_group,
    ordered,
    paper_command,
    stop_reason,
)
from bench.reporting.summary import Evidence

FOREST_NAME = "forest.png"
FOREST_TITLE = ("Headline claims from converged runs: ours (dot, 95% interval) against the published values"
                " (open markers)")
SHOWN = ("NDCG@5", "NDCG@10", "NDCG@20", "HR@10")


@dataclass
class Front:
    """What the first screen says, computed once for the page and the README."""

    questions: list[tuple[str, str]]  # (question, one-sentence answer)
    claims: list[forest.Claim]
    image: Image
    converged: pd.DataFrame  # one row per (group, dataset, column) of converged runs
    missing: list[str]  # one line per dataset without a converged run


def _per_epoch_s(run: pd.Series) -> float:
    after = [s for s in list(run["epoch_training_s"])[1:] if s and s > 0]
    return float(np.median(after)) if after else float("nan")


def converged_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Converged runs, one row per group, dataset and column: test metrics (mean over seeds), how each seed
    stopped, and the training seconds per epoch after the first (median per run, mean over seeds)."""
    runs = runs[runs["converged"]]
    rows = []
    for dataset in datasets_of(runs):
        d = runs[runs["dataset"] == dataset]
        for key in dict.fromkeys(map(tuple, ordered(d[GROUP], GROUP).to_numpy())):
            g = d[in_group(d, key)]
            for col in columns_of(g):
                mine = g[g["column"] == col].sort_values("seed")
                stops = ", ".join(f"s{int(r['seed'])}: {int(r['best_epoch'])} / {int(r['epochs_run'])}"
                                  f" ({stop_reason(r)})" for _, r in mine.iterrows())
                rows.append({
                    "dataset": dataset, "method": col, "loss": mine["rec_loss"].iloc[0],
                    "runs": f"{key[2]}, {key[3]}" + ("" if key[1] == "reference" else f", {key[1]}"),
                    "seeds": mine["seed"].nunique(),
                    **{f"test {m}": num(mine[f"test_{m}"].mean()) for m in SHOWN},
                    "best epoch / epochs (stopped by)": stops,
                    "training s per epoch": f"{np.nanmean([_per_epoch_s(r) for _, r in mine.iterrows()]):,.1f}",
                })
    return pd.DataFrame(rows)


def missing_lines(runs: pd.DataFrame) -> list[str]:
    """Per dataset without a converged run: one line with the command that produces them."""
    have = set(runs.loc[runs["converged"], "dataset"])
    known = list(dict.fromkeys([*DATASET_ORDER, *datasets_of(runs)]))
    return [f"{d}: no converged run yet (pipeline checks only, below); `{paper_command([d])}`"
            for d in known if d not in have]


def build_front(ev: Evidence) -> Front:
    converged = datasets_of(ev.runs[ev.runs["converged"]]) if ev.runs["converged"].any() else []
    # The dataset of the published claims always has its rows: before any run converges, the figure shows
    # the claims themselves, each marked "not run yet".
    datasets = list(dict.fromkeys([HEADLINE_DATASET, *converged]))
    claims = [c for d in datasets for c in (*headline_claims(ev, d), *loss_claims(ev, d))]
    png, alt = forest.forest_png(claims, FOREST_TITLE)
    questions = [(HEADLINE_TITLE, headline_answer(ev)), (LOSS_TITLE, loss_answer(ev))]
    return Front(questions, claims, Image(FOREST_NAME, png, alt), converged_table(ev.runs), missing_lines(ev.runs))


CONVERGED_INTRO = (
    "Converged runs (profile `paper`: all users, up to 300 epochs, stopped by patience 40 on valid NDCG@20 or"
    " at 300), mean over seeds; `training s per epoch`: E-step + training, median over the epochs after the"
    " first, mean over seeds."
)


def front_blocks(front: Front, figure: Block) -> list[Block]:
    """The first screen as blocks; `figure` is how the page or the README shows the forest plot."""
    blocks: list[Block] = [("p", f"**{q}** {a}") for q, a in front.questions]
    blocks.append(figure)
    blocks.append(("p", CONVERGED_INTRO))
    if not front.converged.empty:
        blocks.append(("table", front.converged))
    if front.missing:
        blocks.append(("list", front.missing))
    return blocks


def readme_markdown(front: Front, results: str = "results") -> str:
    """README.md's `front` block: the figure is the committed file beside the records."""
    figure = ("p", f"![Forest plot of the headline claims: each a change with its 95% interval, the published"
                   f" value beside it]({results}/{FOREST_NAME})")
    links = (f"Everything else (every answer per dataset, pipeline checks labelled as such, cost, the scaling"
             f" study, each group's tables and plots): `{results}/answers.md`, `{results}/index.html`;"
             f" the figure's numbers: `{results}/forest.csv`.")
    return render_md([*front_blocks(front, figure), ("p", links)])
