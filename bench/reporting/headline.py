"""The headline question, answered from converged records: does ELCRec beat ICLRec on a dataset?

The ELCRec paper makes both its headline claims on Beauty: +8.9% NDCG@5 over the runner-up (ICLRec) and
22.5% less training time than ICLRec's alternating k-means. This section puts our converged runs at the
paper's budget (profile `paper`, reference protocol, the faithful variant, each method's published config and
loss) beside the paper's Table 1 and Table 2 and the published seed-1 checkpoints, then states each verdict
with its evidence: the paired Wilcoxon test over users beside the paired t-test over seeds (3 or more per
method) for accuracy, each with its interval, the per-epoch interval over the runs of each method for cost
(between seeds with 2 or more), and the seconds each method needs to reach a common validation quality.
Nothing here is computed anew: the numbers come from the tables built in comparisons.py, so the section and
the tables cannot disagree. `headline_answer` and `headline_claims` give the same verdicts to the first screen
(front.py) in one sentence and as the forest plot's rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.records import DEFAULT_ENCODER
from bench.core.stats import interval_text
from bench.reporting.comparisons import GRID_ONLY_NOTE
from bench.reporting.forest import Claim, accuracy_claim, cost_claim, pct_text
from bench.reporting.forest import interval_text as claim_text
from bench.reporting.published import (
    CHECKPOINT_SOURCE,
    COST_SOURCE,
    PUBLISHED_ACCURACY,
    PUBLISHED_CHECKPOINT_VALID_NDCG20,
    PUBLISHED_CHECKPOINTS,
    PUBLISHED_COST,
    PUBLISHED_LOSS,
)
from bench.reporting.rendering import Block, num, pct
from bench.reporting.runs import (
    COST_BASELINE,
    GROUP,
    METHOD_NAMES,
    PAPER_PROFILE,
    PROPOSED,
    datasets_of,
    group_brief,
    in_group,
    paper_command,
)
from bench.reporting.summary import Evidence

HEADLINE_DATASET = "Beauty"  # where the ELCRec paper makes both headline claims
SHOWN = ("HR@5", "NDCG@5", "HR@20", "NDCG@20")
CLAIM_METRIC = "NDCG@5"  # the metric of the paper's accuracy claim
PAIR = (PROPOSED, COST_BASELINE)
NAMES = {m: METHOD_NAMES.get(m, m) for m in PAIR}


def headline_title(dataset: str) -> str:
    return f"Does {NAMES[PROPOSED]} beat {NAMES[COST_BASELINE]} on {dataset}?"


HEADLINE_TITLE = headline_title(HEADLINE_DATASET)


def _both_ran(key: tuple | None, runs: pd.DataFrame) -> bool:
    """Whether `_faithful_runs` found converged runs of both methods of the pair: the question is answered."""
    return key is not None and runs["method"].nunique() == len(PAIR)


def _faithful_runs(ev: Evidence, dataset: str) -> tuple[tuple | None, pd.DataFrame]:
    """The most authoritative paper-profile group with faithful, published-config runs of the pair on
    `dataset` (both methods where a group has both), and those runs."""
    r = ev.runs
    keep = (r["profile"] == PAPER_PROFILE) & (r["protocol"] == "reference") & (r["dataset"] == dataset)
    keep &= r["method"].isin(PAIR) & (r["config_source"] == "paper") & (r["method_options"] == "")
    keep &= r["variant"] == "faithful"
    keep &= r["rec_loss"] == r["method"].map(PUBLISHED_LOSS)
    keep &= r["encoder"] == DEFAULT_ENCODER  # the published numbers are SASRec's
    r = r[keep & r["converged"]]
    keys = list(dict.fromkeys(map(tuple, r[GROUP].to_numpy())))
    if not keys:
        return None, r
    both = [k for k in keys if r[in_group(r, k)]["method"].nunique() == len(PAIR)]
    # The group whose methods have the most seeds answers (a CPU campaign's 3 seeds before a GPU's 1), then
    # the most authoritative: the paper's claims are over seeds.
    both.sort(key=lambda k: -int(r[in_group(r, k)].groupby("method")["seed"].nunique().min()))
    key = (both or keys)[0]
    return key, r[in_group(r, key)]


def _row(label: str, seeds: str, values: dict, valid=np.nan, epochs: str = "", seconds: str = "") -> dict:
    return {"row": label, "seeds": seeds, **{m: num(values.get(m, np.nan)) for m in SHOWN},
            "valid NDCG@20": num(valid), "best epoch / epochs": epochs, "training s (E-step + train)": seconds}


def _training_s(runs):
    """Training time as the paper's Table 2 counts it: E-step plus training, no evaluation."""
    return runs["estep_s"] + runs["train_s"]


def _our_rows(runs: pd.DataFrame, method: str) -> list[dict]:
    mine = runs[runs["method"] == method].sort_values("seed")
    rows = []
    for _, r in mine.iterrows():
        values = {m: r[f"test_{m}"] for m in SHOWN}
        epochs = f"{int(r['best_epoch'])} / {int(r['epochs_run'])}" if pd.notna(r["best_epoch"]) else ""
        rows.append(_row(f"{NAMES[method]}, ours", str(int(r["seed"])), values, r["best_valid_NDCG@20"], epochs,
                         f"{_training_s(r):,.0f}"))
    if len(mine) >= 2:
        values = {m: mine[f"test_{m}"].mean() for m in SHOWN}
        rows.append(_row(f"{NAMES[method]}, ours, mean", f"{len(mine)} seeds", values,
                         mine["best_valid_NDCG@20"].mean(), "", f"{_training_s(mine).mean():,.0f}"))
    return rows


def _published_rows(dataset: str, method: str) -> list[dict]:
    rows = []
    table = PUBLISHED_ACCURACY.get(dataset, {}).get(method)
    if table:
        cost = PUBLISHED_COST.get(dataset, {}).get(method, {}).get("train_s")
        rows.append(_row(f"{NAMES[method]}, published (Tables 1, 2)", "mean of 3", table,
                         seconds=f"{cost:,.0f}" if cost else ""))
    checkpoint = PUBLISHED_CHECKPOINTS.get(dataset, {}).get(method)
    if checkpoint:
        valid = PUBLISHED_CHECKPOINT_VALID_NDCG20.get(dataset, {}).get(method, np.nan)
        rows.append(_row(f"{NAMES[method]}, published seed-1 checkpoint", "1", checkpoint, valid))
    return rows


def headline_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    rows = [row for m in reversed(PAIR) for row in (*_our_rows(runs, m), *_published_rows(dataset, m))]
    return pd.DataFrame(rows)


def _columns(runs: pd.DataFrame) -> dict[str, str]:
    return {m: runs.loc[runs["method"] == m, "column"].iloc[0] for m in PAIR if (runs["method"] == m).any()}


def _accuracy_verdicts(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str]) -> list[str]:
    out = []
    for metric in (CLAIM_METRIC, "NDCG@20"):
        means = _test_means(ev, key, dataset, cols, metric)
        diff = means[PROPOSED] - means[COST_BASELINE]
        t = ev.tests.test(key, dataset, metric, cols[PROPOSED], cols[COST_BASELINE])
        interval = f" [{num(t.ci_low, '+.4f')}, {num(t.ci_high, '+.4f')}]" if t.ci_low is not None else ""
        if t.seeds_ci_low is not None and t.p_users is not None:  # both: over users, then over seeds
            interval += (f" over users, [{num(t.seeds_ci_low, '+.4f')}, {num(t.seeds_ci_high, '+.4f')}] over"
                         f" {t.n_seeds} seeds")
        if not t.available:
            verdict = "no test possible"
        elif t.significant:
            verdict = f"{NAMES[PROPOSED]} {'better' if diff > 0 else 'worse'}"
        else:
            verdict = "no difference detectable"
        paper = PUBLISHED_ACCURACY.get(dataset, {})
        claimed = ""
        if all(m in paper for m in PAIR):
            claimed = f"; the paper: {pct((paper[PROPOSED][metric] / paper[COST_BASELINE][metric] - 1) * 100)}"
        out.append(f"Test {metric}, {NAMES[PROPOSED]} - {NAMES[COST_BASELINE]}: {num(diff, '+.4f')}{interval}"
                   f" ({pct(diff / means[COST_BASELINE] * 100)}); {verdict}: {t.describe()}{claimed}.")
    return out


def _against_published(runs: pd.DataFrame, dataset: str) -> list[str]:
    """Ours minus the paper's Table 1 per method, beside the spread the published numbers themselves show
    (seed-1 checkpoint against the 3-seed mean), our own spread between seeds, and our best valid NDCG@20
    against the published checkpoint's."""
    out = []
    for m in reversed(PAIR):
        table = PUBLISHED_ACCURACY.get(dataset, {}).get(m)
        mine = runs[runs["method"] == m]
        if not table or mine.empty:
            continue
        diffs = ", ".join(f"{k} {num(mine[f'test_{k}'].mean() - table[k], '+.4f')}" for k in SHOWN)
        text = f"{NAMES[m]}, ours - Table 1: {diffs}"
        checkpoint = PUBLISHED_CHECKPOINTS.get(dataset, {}).get(m)
        if checkpoint and all(round(checkpoint[k] - table[k], 6) == 0 for k in SHOWN):
            # Then the table's "mean over 3 seeds" is this one run's row, and gives no spread to read.
            text += " (the published seed-1 checkpoint gives Table 1's row to the 4th decimal in every column)"
        elif checkpoint:
            spread = ", ".join(f"{k} {num(checkpoint[k] - table[k], '+.4f')}" for k in SHOWN)
            text += f" (published seed-1 checkpoint - Table 1: {spread})"
        if len(mine) >= 2:
            text += "; our std over seeds: " + ", ".join(f"{k} {num(mine[f'test_{k}'].std(), '.4f')}" for k in SHOWN)
        valid = PUBLISHED_CHECKPOINT_VALID_NDCG20.get(dataset, {}).get(m)
        if valid is not None:  # the selection metric: where our run stands before the test split has a say
            text += (f"; best valid NDCG@20, ours - published seed-1 checkpoint:"
                     f" {num(mine['best_valid_NDCG@20'].mean() - valid, '+.4f')}")
        out.append(text + ".")
    return out


def _comparison(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str]) -> pd.Series | None:
    """The cost comparison (comparisons.cost_comparison) of the two columns, or None."""
    comp = ev.where(ev.comp, key, dataset)
    comp = comp[(comp["column_elcrec"] == cols[PROPOSED]) & (comp["column_iclrec"] == cols[COST_BASELINE])]
    return None if comp.empty else comp.iloc[0]


def _test_means(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str], metric: str) -> dict[str, float]:
    """Each method's test `metric`, mean over its seeds in the group."""
    runs = ev.runs[in_group(ev.runs, key) & (ev.runs["dataset"] == dataset)]
    return {m: runs.loc[runs["column"] == c, f"test_{metric}"].mean() for m, c in cols.items()}


def _change(a: float, b: float) -> str:
    """A's relative change against B, `+8.9%`."""
    return pct((a / b - 1) * 100)


def _accuracy_claim(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str]) -> str:
    """The paper's accuracy claim checked in one sentence, with the test that decides it."""
    paper_acc = PUBLISHED_ACCURACY.get(dataset, {})
    means = _test_means(ev, key, dataset, cols, CLAIM_METRIC)
    ours = _change(means[PROPOSED], means[COST_BASELINE])
    t = ev.tests.test(key, dataset, CLAIM_METRIC, cols[PROPOSED], cols[COST_BASELINE])
    claimed = ""
    if all(m in paper_acc for m in PAIR):
        claimed = f", the paper {_change(paper_acc[PROPOSED][CLAIM_METRIC], paper_acc[COST_BASELINE][CLAIM_METRIC])}"
    if not t.available:
        verdict = "cannot be checked: no paired test is possible"
    elif t.significant and means[PROPOSED] > means[COST_BASELINE]:
        verdict = f"holds: {NAMES[PROPOSED]} is significantly more accurate"
    elif t.significant:
        verdict = f"does not hold: {NAMES[PROPOSED]} is significantly less accurate"
    else:
        verdict = "is not reproduced: no difference detectable"
    # The paper tests over 3 seeds; below that the test is over users of the seeds run, blind to seed spread.
    caveat = "" if t.p_seeds is not None else (f" With {t.n_seeds} seed(s) run by both methods the test is over users only:"
                                               " how far the result moves from seed to seed is not measured until"
                                               " each has 3.")
    return (f"Accuracy claim ({NAMES[PROPOSED]} beats {NAMES[COST_BASELINE]} on test {CLAIM_METRIC}) {verdict}"
            f" (ours {ours}{claimed}; {t.describe()}).{caveat}")


def _cost_claim(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str]) -> str | None:
    """The paper's cost claim checked in one sentence, on the per-epoch interval (the paper compares equal
    epochs); None where the group has no comparison of the two columns."""
    c = _comparison(ev, key, dataset, cols)
    if c is None:
        return None
    iv = c["_per_epoch"]
    if isinstance(c["per_epoch_not_compared"], str):
        verdict = f"cannot be checked: {c['per_epoch_not_compared']}"
    elif not iv.has_interval:
        verdict = f"cannot be checked: {iv.reason}"
    elif iv.high_pct < 0:
        verdict = f"holds here: {NAMES[PROPOSED]}'s epochs are cheaper"
    elif iv.low_pct > 0:
        verdict = f"does not hold here: {NAMES[PROPOSED]}'s epochs cost more"
    else:
        verdict = "is not reproduced here: no difference detectable"
    # The paper's Table 2 change, as the comparison already carries it (NaN where it has none).
    claimed = f"; the paper {pct(c['paper_train_s_change_pct'])}" if pd.notna(c["paper_train_s_change_pct"]) else ""
    counted = f"; {GRID_ONLY_NOTE}" if c["per_epoch_in_flight_counted"] == "grid" else ""
    return (f"Cost claim ({NAMES[PROPOSED]} trains faster than {NAMES[COST_BASELINE]} for the same epochs)"
            f" {verdict} (ours per epoch {interval_text(iv) or 'not measured'}{claimed}{counted}).")


def _cost_verdicts(ev: Evidence, key: tuple, dataset: str, cols: dict[str, str]) -> list[str]:
    c, out = _comparison(ev, key, dataset, cols), []
    if c is not None:
        change = c["paper_train_s_change_pct"]
        claimed = f"; {COST_SOURCE}: {pct(change)} in total" if pd.notna(change) else ""
        out.append(f"Training seconds per epoch after the first (the paper compares equal epochs): "
                   f"{c['per_epoch_verdict']}{claimed}.")
        if c["_per_epoch_cpu"].change_pct is not None:  # runs made since the CPU seconds were recorded
            out.append("The same epochs' CPU seconds (what each run used; time spent waiting for a core that"
                       f" other work held is not counted): {c['per_epoch_cpu_verdict']}.")
        out.append(f"Total training seconds, each run to its own early stop: {c['total_verdict']}.")
        out.append(f"Peak memory of each run's process: {c['memory_verdict']}.")
        if c["context"]:
            out.append(f"Execution context: {c['context']}.")
    targets = ev.where(ev.targets, key, dataset)
    targets = targets[(targets["column_a"] == cols[PROPOSED]) & (targets["column_b"] == cols[COST_BASELINE])]
    for _, t in targets.iterrows():
        # Times to a target are totals too: a reason the totals already gave in full is not repeated.
        verdict = t["verdict"]
        if c is not None and c["total_not_compared"] and verdict == f"not compared: {c['total_not_compared']}":
            verdict = "not compared, as the totals"
        out.append(f"To {t['target_fraction']:.0%} of the best valid NDCG@20 of {t['target_set_by']}"
                   f" ({t['target_valid_ndcg20']:.4f}): {NAMES[PROPOSED]} {t['seconds_a']:,.0f} s vs"
                   f" {NAMES[COST_BASELINE]} {t['seconds_b']:,.0f} s; {verdict}.")
    return out


def headline_blocks(ev: Evidence, dataset: str = HEADLINE_DATASET) -> list[Block]:
    """The section: which runs, the table, and the verdicts (or what is missing for them)."""
    key, runs = _faithful_runs(ev, dataset)
    published = [("table", headline_table(runs, dataset)),
                 ("note", f"Published rows: {CHECKPOINT_SOURCE}. Training s: {COST_SOURCE}.")]
    if not _both_ran(key, runs):
        have = ", ".join(f"{NAMES[m]} {int((runs['method'] == m).sum())}" for m in reversed(PAIR))
        why = (f"Not answered yet: no converged `{PAPER_PROFILE}`-profile record of both methods on {dataset}"
               f" (faithful, published config and loss; seeds recorded: {have}). `python -m bench status`"
               " shows the runs in progress.")
        return [("p", why), *published]
    cols = _columns(runs)
    head = (f"From {group_brief(key, runs)}: {NAMES[PROPOSED]} and {NAMES[COST_BASELINE]} with their published"
            " configs, each run until early stopping on valid NDCG@20 or its epoch budget.")
    claims = [_accuracy_claim(ev, key, dataset, cols), _cost_claim(ev, key, dataset, cols)]
    return [("p", head), ("p", "In short:"), ("list", [c for c in claims if c]), *published,
            ("p", "Accuracy, test split:"), ("list", _accuracy_verdicts(ev, key, dataset, cols)),
            ("p", "Against the published rows:"), ("list", _against_published(runs, dataset)),
            ("p", "Cost, E-step + training seconds:"), ("list", _cost_verdicts(ev, key, dataset, cols))]


def headline_sections(ev: Evidence) -> list[tuple[str, list[Block]]]:
    """(dataset, blocks): the headline question in full on its own dataset always (what is missing, before
    runs converge), then on every other dataset where both methods have converged runs to answer it from."""
    others = [d for d in datasets_of(ev.runs) if d != HEADLINE_DATASET and _both_ran(*_faithful_runs(ev, d))]
    return [(d, headline_blocks(ev, d)) for d in [HEADLINE_DATASET, *others]]


# ------------------------------------------------------------------------------------------ the front page
def _paper_change(dataset: str, metric: str) -> tuple[tuple[float, str], ...]:
    """The ELCRec paper's claim on `metric` (Table 1), as a change of ELCRec against ICLRec."""
    paper = PUBLISHED_ACCURACY.get(dataset, {})
    if not all(m in paper and metric in paper[m] for m in PAIR):
        return ()
    return (((paper[PROPOSED][metric] / paper[COST_BASELINE][metric] - 1) * 100, "ELCRec paper"),)


def _paper_cost_change(dataset: str) -> tuple[tuple[float, str], ...]:
    cost = PUBLISHED_COST.get(dataset, {})
    if not all(m in cost for m in PAIR):
        return ()
    return (((cost[PROPOSED]["train_s"] / cost[COST_BASELINE]["train_s"] - 1) * 100, "ELCRec paper"),)


COST_LABEL = f"{NAMES[PROPOSED]} vs {NAMES[COST_BASELINE]}, training s per epoch"


def headline_claims(ev: Evidence, dataset: str) -> list[Claim]:
    """The paper's two claims on `dataset` as the forest plot shows them: NDCG@5 (the claim's metric),
    NDCG@20 (the selection metric) and the per-epoch cost, each beside the paper's value; without a
    converged run of both methods there, the paper's values alone, each saying what is missing."""
    key, runs = _faithful_runs(ev, dataset)
    labels = [f"{NAMES[PROPOSED]} vs {NAMES[COST_BASELINE]}, test {m}" for m in (CLAIM_METRIC, "NDCG@20")]
    if not _both_ran(key, runs):
        missing = f"no converged run of both (seeds: {_have(runs)})"
        published = [_paper_change(dataset, CLAIM_METRIC), _paper_change(dataset, "NDCG@20"), _paper_cost_change(dataset)]
        return [Claim(dataset, label, published=paper, missing=missing)
                for label, paper in zip([*labels, COST_LABEL], published)]
    cols = _columns(runs)
    out = []
    for label, metric in zip(labels, (CLAIM_METRIC, "NDCG@20")):
        means = _test_means(ev, key, dataset, cols, metric)
        t = ev.tests.test(key, dataset, metric, cols[PROPOSED], cols[COST_BASELINE])
        out.append(accuracy_claim(dataset, label, t, means[PROPOSED], means[COST_BASELINE],
                                  _paper_change(dataset, metric)))
    c = _comparison(ev, key, dataset, cols)
    if c is None:
        out.append(Claim(dataset, COST_LABEL, missing="not measured"))
    else:
        why = c["per_epoch_not_compared"] if isinstance(c["per_epoch_not_compared"], str) else None
        out.append(cost_claim(dataset, COST_LABEL, c["_per_epoch"], why, _paper_cost_change(dataset)))
    return out


def _have(runs: pd.DataFrame) -> str:
    return ", ".join(f"{NAMES[m]} {int((runs['method'] == m).sum())}" for m in reversed(PAIR))


def _seeds_note(t) -> str:
    """What the accuracy interval is over, and with fewer than 3 seeds what it cannot see."""
    if t.p_seeds is not None:
        return f"interval over {t.n_seeds} seeds"
    seeds = f"{t.n_seeds} seed{'s' if t.n_seeds != 1 else ''} run by both methods"
    return f"{seeds}: the spread from seed to seed is not measured until each has 3"


def headline_answer(ev: Evidence, dataset: str = HEADLINE_DATASET) -> str:
    """The headline question answered in one sentence, with its intervals and the paper's values."""
    key, runs = _faithful_runs(ev, dataset)
    if not _both_ran(key, runs):
        have = _have(runs)
        command = paper_command([dataset], methods=tuple(reversed(PAIR)))
        return f"Not answered yet: no converged run of both on {dataset} (seeds: {have}); `{command}`."
    cols = _columns(runs)
    claims = headline_claims(ev, dataset)
    acc, cost = claims[0], claims[2]
    means = _test_means(ev, key, dataset, cols, CLAIM_METRIC)
    t = ev.tests.test(key, dataset, CLAIM_METRIC, cols[PROPOSED], cols[COST_BASELINE])
    better = t.significant and means[PROPOSED] > means[COST_BASELINE]
    if better:
        acc_words = f"{NAMES[PROPOSED]} is more accurate"
    elif t.significant:
        acc_words = f"{NAMES[PROPOSED]} is less accurate"
    else:
        acc_words = "no accuracy difference is detectable"
    cheaper = cost.has_interval and cost.high_pct < 0
    if cheaper:
        cost_words = f"{NAMES[PROPOSED]} is cheaper"
    elif cost.has_interval and cost.low_pct > 0:
        cost_words = f"{NAMES[PROPOSED]} costs more"
    elif cost.has_interval:
        cost_words = "no difference is detectable"
    else:
        cost_words = "the cost is not compared"
    verdict = "Yes" if better and cheaper else ("Partly" if better or cheaper else "No")
    paper_acc = "".join(f"the paper {pct_text(v)}; " for v, _ in acc.published)
    paper_cost = "".join(f"the paper {pct_text(v)} in total; " for v, _ in cost.published)
    cost_interval = f"{claim_text(cost)} ({paper_cost}{cost.basis})" if cost.measured else cost.missing
    return (f"{verdict}: {acc_words} on test {CLAIM_METRIC}, {claim_text(acc)} ({paper_acc}{t.describe()};"
            f" {_seeds_note(t)}); per epoch, {cost_words}: {cost_interval}.")
