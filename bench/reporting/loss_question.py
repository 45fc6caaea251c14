"""The second headline question, answered from converged records: is an intent module worth more than the loss?

ICLRec and ELCRec are SASRec plus an intent module, trained with SASRec's published loss: BCE against one
sampled negative. SASRec trained with full-softmax cross-entropy instead (`--set rec_loss=ce`, the
loss-matched baseline) gains more on Beauty, in the literature, than any intent module claims (eSASRec
benchmark; RecBole GitHub thread 1290, as Klenitskiy & Vasilev train SASRec; bench/reporting/published.LOSS_FRAMES).
This section compares, at the paper's budget (profile `paper`, reference protocol, faithful variant, converged
runs only), ICLRec and ELCRec with their published loss against SASRec-CE, on test NDCG@10 (the literature's
metric) with paired tests and intervals, the loss's own effect (SASRec-CE against SASRec-BCE) beside the
published figures, and the per-epoch cost of each. The published figures come from other protocols: the
section says what differs, and compares changes, not levels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.records import DEFAULT_ENCODER
from bench.reporting.comparisons import per_epoch_change, with_training_seconds
from bench.reporting.forest import Claim, accuracy_claim, cost_claim, interval_text, pct_text
from bench.reporting.published import LOSS_FRAMES, PUBLISHED_CHECKPOINTS, PUBLISHED_LOSS
from bench.reporting.rendering import Block, num
from bench.reporting.runs import (
    METHOD_NAMES,
    PAPER_PROFILE,
    group_brief,
    groups_by_authority,
    in_group,
    paper_command,
)
from bench.reporting.summary import Evidence

LOSS_TITLE = "Is an intent module worth more than the loss?"
LOSS_DATASET = "Beauty"  # where the literature's figures are
LOSS_METRIC = "NDCG@10"
SHOWN = ("HR@10", "NDCG@10", "NDCG@20")
BASELINE, BASELINE_LOSS = "sasrec", "ce"
INTENT = ("iclrec", "elcrec")
# Roles: the loss-matched baseline, SASRec as published (BCE), and each intent method as published.
CE, BCE = "SASRec-CE", "SASRec-BCE"
ROLE_NAMES = {CE: CE, BCE: BCE, **{m: METHOD_NAMES.get(m, m) for m in INTENT}}
ROLE_ORDER = (CE, BCE, *INTENT)


def _roles(runs: pd.DataFrame) -> pd.Series:
    """Each run's role, or None: SASRec with ce or bce, an intent method with its published loss."""

    def role(method: str, loss: str):
        if method == BASELINE:
            return {BASELINE_LOSS: CE, PUBLISHED_LOSS[BASELINE]: BCE}.get(loss)
        return method if method in INTENT and loss == PUBLISHED_LOSS[method] else None

    return pd.Series([role(m, loss) for m, loss in zip(runs["method"], runs["rec_loss"])], index=runs.index, dtype=object)


def loss_runs(ev: Evidence, dataset: str) -> tuple[tuple | None, pd.DataFrame]:
    """The most authoritative group of converged paper-budget runs on `dataset` with SASRec-CE and an intent
    method (else the first with either), and its runs of the four roles, with a `role` column."""
    r = ev.runs
    keep = (r["profile"] == PAPER_PROFILE) & (r["protocol"] == "reference") & (r["dataset"] == dataset)
    keep &= (r["config_source"] == "paper") & (r["method_options"] == "") & (r["variant"] == "faithful")
    keep &= r["encoder"] == DEFAULT_ENCODER  # one backbone for all four roles: the loss is the only difference
    r = r[keep & r["converged"]].assign(role=_roles(r[keep & r["converged"]]))
    r = r[r["role"].notna()]
    if r.empty:
        return None, r
    keys = groups_by_authority(r)

    def has(key, roles) -> bool:
        return bool(r[in_group(r, key)]["role"].isin(roles).any())

    both = [k for k in keys if has(k, [CE]) and has(k, INTENT)]
    # The group with the most seeds of its fewest-seeded role answers first (as the first headline question).
    both.sort(key=lambda k: -int(r[in_group(r, k)].groupby("role")["seed"].nunique().min()))
    either = [k for k in keys if has(k, [CE, *INTENT])]
    key = (both or either or keys)[0]
    return key, r[in_group(r, key)]


def _column(runs: pd.DataFrame, role: str) -> str | None:
    cols = runs.loc[runs["role"] == role, "column"]
    return None if cols.empty else cols.iloc[0]


def _compare(ev: Evidence, key: tuple, dataset: str, runs: pd.DataFrame, a: str, b: str, metric: str = LOSS_METRIC):
    """(paired test, mean A, mean B) of two roles' test `metric`."""
    ca, cb = _column(runs, a), _column(runs, b)
    t = ev.tests.test(key, dataset, metric, ca, cb)
    means = [runs.loc[runs["role"] == x, f"test_{metric}"].mean() for x in (a, b)]
    return t, *means


def _frames() -> tuple[tuple[float, str], ...]:
    """The published change of softmax-trained SASRec against BCE SASRec, per study."""
    return tuple(((f["softmax"] / f["bce"] - 1) * 100, f["short"]) for f in LOSS_FRAMES)


def _command(dataset: str) -> str:
    return paper_command([dataset], methods=(BASELINE,), overrides=(f"rec_loss={BASELINE_LOSS}",))


def _missing(role: str) -> str:
    if role == CE:
        return f"not run yet: SASRec with rec_loss={BASELINE_LOSS}"
    return f"not run yet: {ROLE_NAMES[role]}"


def loss_claims(ev: Evidence, dataset: str) -> list[Claim]:
    """The forest plot's rows: each intent method against SASRec-CE, and SASRec-CE against SASRec-BCE beside
    the published figures; rows whose runs are missing say so. None where no group has any of them."""
    key, runs = loss_runs(ev, dataset)
    if key is None:
        return []
    have = set(runs["role"])
    pairs = [(m, CE, ()) for m in INTENT] + [(CE, BCE, _frames() if dataset == LOSS_DATASET else ())]
    out = []
    for a, b, published in pairs:
        label = f"{ROLE_NAMES[a]} vs {ROLE_NAMES[b]}, test {LOSS_METRIC}"
        absent = [x for x in (a, b) if x not in have]
        if absent:
            out.append(Claim(dataset, label, published=published, missing=_missing(absent[0])))
            continue
        t, mean_a, mean_b = _compare(ev, key, dataset, runs, a, b)
        out.append(accuracy_claim(dataset, label, t, mean_a, mean_b, published))
    return out


def _verdict(t, mean_a: float, mean_b: float) -> str:
    if not t.available:
        return "no test possible"
    if not t.significant:
        return "no difference detectable"
    return "better" if mean_a > mean_b else "worse"


def loss_answer(ev: Evidence, dataset: str = LOSS_DATASET) -> str:
    """The question answered in one sentence, with its intervals (or what is missing and the command)."""
    key, runs = loss_runs(ev, dataset)
    have = set(runs["role"]) if key is not None else set()
    if CE not in have:
        return (f"Not answered yet: no converged SASRec run with `rec_loss={BASELINE_LOSS}` (the loss-matched"
                f" baseline) on {dataset}; `{_command(dataset)}`.")
    intents = [m for m in INTENT if m in have]
    if not intents:
        command = paper_command([dataset], methods=INTENT)
        return f"Not answered yet: no converged ICLRec or ELCRec run on {dataset}; `{command}`."
    verdicts, parts = [], []
    for claim, m in zip(loss_claims(ev, dataset), INTENT):
        if m not in have:
            continue
        t, mean_a, mean_b = _compare(ev, key, dataset, runs, m, CE)
        verdicts.append(_verdict(t, mean_a, mean_b))
        parts.append(f"{ROLE_NAMES[m]} {interval_text(claim)} ({t.describe()})")
    if all(v == "better" for v in verdicts):
        head = "Yes: every intent method is more accurate than SASRec-CE"
    elif all(v == "worse" for v in verdicts):
        head = "No: SASRec-CE is more accurate than every intent method"
    elif all(v == "no difference detectable" for v in verdicts):
        head = "Not detectably: no intent method differs from SASRec-CE"
    else:
        head = "Not for every method: " + ", ".join(f"{ROLE_NAMES[m]} {v}" for m, v in zip(intents, verdicts))
    seeds = runs.groupby("role")["seed"].nunique()
    few = "" if seeds.min() >= 3 else (f"; {int(seeds.min())} seed(s) per method: the spread from seed to seed is"
                                      " not measured until each has 3")
    missing = "".join(f"; {ROLE_NAMES[m]} not run yet" for m in INTENT if m not in have)
    return f"{head} (test {LOSS_METRIC}, each against SASRec-CE): {'; '.join(parts)}{few}{missing}."


# ----------------------------------------------------------------------------------------------- section
def _per_epoch_s(run: pd.Series) -> float:
    after = [s for s in list(run["epoch_training_s"])[1:] if s and s > 0]
    return float(np.median(after)) if after else float("nan")


def _table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    rows = []
    for role in ROLE_ORDER:
        mine = runs[runs["role"] == role]
        if mine.empty:
            rows.append({"row": f"{ROLE_NAMES[role]}, ours", "loss": _loss_of(role), "seeds": "0 (not run yet)"})
            continue
        rows.append({
            "row": f"{ROLE_NAMES[role]}, ours", "loss": _loss_of(role), "seeds": str(mine["seed"].nunique()),
            **{m: num(mine[f"test_{m}"].mean()) for m in SHOWN},
            "best epoch / epochs": ", ".join(f"{int(b)} / {int(e)}" for b, e in zip(mine["best_epoch"], mine["epochs_run"])),
            "training s per epoch": f"{np.nanmean([_per_epoch_s(r) for _, r in mine.iterrows()]):,.1f}",
        })
    for m in INTENT:
        checkpoint = PUBLISHED_CHECKPOINTS.get(dataset, {}).get(m, {})
        if LOSS_METRIC in checkpoint:
            rows.append({"row": f"{ROLE_NAMES[m]}, published seed-1 checkpoint (our encoder)", "loss": "bce",
                         "seeds": "1", **{k: num(checkpoint.get(k, np.nan)) for k in SHOWN}})
    if dataset == LOSS_DATASET:
        for f in LOSS_FRAMES:
            for which in ("softmax", "bce"):
                rows.append({"row": f"{f[f'{which}_label']} ({f['short']})",
                             "loss": f["softmax_loss"] if which == "softmax" else "bce",
                             f["metric"]: num(f[which])})
    return pd.DataFrame(rows).fillna("")


def _loss_of(role: str) -> str:
    return BASELINE_LOSS if role == CE else PUBLISHED_LOSS[BASELINE if role == BCE else role]


def _accuracy_lines(ev: Evidence, key: tuple, dataset: str, runs: pd.DataFrame) -> list[str]:
    have, out = set(runs["role"]), []
    pairs = [(m, CE) for m in INTENT] + [(CE, BCE)]
    for a, b in pairs:
        if a not in have or b not in have:
            continue
        for metric in (LOSS_METRIC, "NDCG@20"):
            t, mean_a, mean_b = _compare(ev, key, dataset, runs, a, b, metric)
            diff = mean_a - mean_b
            interval = f" [{num(t.ci_low, '+.4f')}, {num(t.ci_high, '+.4f')}]" if t.ci_low is not None else ""
            if t.seeds_ci_low is not None and t.p_users is not None:
                interval += (f" over users, [{num(t.seeds_ci_low, '+.4f')}, {num(t.seeds_ci_high, '+.4f')}] over"
                             f" {t.n_seeds} seeds")
            out.append(f"Test {metric}, {ROLE_NAMES[a]} - {ROLE_NAMES[b]}: {num(diff, '+.4f')}{interval}"
                       f" ({pct_text(diff / mean_b * 100)}); {_verdict(t, mean_a, mean_b)}: {t.describe()}.")
    return out


def _cost_lines(runs: pd.DataFrame) -> list[str]:
    have, out = set(runs["role"]), []
    timed = with_training_seconds(runs)
    for a, b in [(m, CE) for m in INTENT] + [(CE, BCE)]:
        if a not in have or b not in have:
            continue
        iv, why, probes = per_epoch_change(timed[timed["role"] == a], timed[timed["role"] == b])
        claim = cost_claim("", "", iv, why)
        basis = f"{claim.basis}; {probes}" if probes else claim.basis
        text = f"{interval_text(claim)} ({basis})" if claim.measured else claim.missing
        out.append(f"{ROLE_NAMES[a]} against {ROLE_NAMES[b]}, training s per epoch after the first: {text}.")
    return out


def _frame_lines() -> list[str]:
    return [f"{f['source']}: {f['metric']} {f['softmax']:.4f} ({f['softmax_label']}) against {f['bce']:.4f}"
            f" ({f['bce_label']}), {pct_text((f['softmax'] / f['bce'] - 1) * 100)}. What differs from this harness:"
            f" {f['protocol']}." for f in LOSS_FRAMES]


PROTOCOL_NOTE = (
    "Our runs share one protocol: the ICLRec data and leave-one-out split, full ranking of every item, the"
    " reference protocol's history masking, selection on valid NDCG@20, the paper profile's budget (up to 300"
    " epochs, patience 40), and the full softmax over every item for `rec_loss=ce`. The published figures"
    " each come from their own protocol, so their levels are not ours to match; what they frame is the size"
    " of the loss's effect on SASRec, which the SASRec-CE against SASRec-BCE row measures here."
)


def loss_blocks(ev: Evidence, dataset: str = LOSS_DATASET) -> list[Block]:
    """The section: the answer, which runs, the table beside the published figures, the verdicts and costs."""
    key, runs = loss_runs(ev, dataset)
    blocks: list[Block] = [("p", loss_answer(ev, dataset))]
    if key is None:
        runs = runs.assign(role=pd.Series(dtype=object))
    else:
        blocks.append(("p", f"From {group_brief(key, runs)}: SASRec with `rec_loss={BASELINE_LOSS}` and with its"
                            " published BCE, ICLRec and ELCRec with their published configs and loss (BCE), each"
                            " run until early stopping on valid NDCG@20 or its epoch budget."))
    blocks += [("table", _table(runs, dataset)),
               ("note", "Published seed-1 checkpoints: the authors' released models, evaluated in our encoder."
                        " Figures of other studies: test NDCG@10 in their own protocol (below).")]
    if key is not None:
        accuracy = _accuracy_lines(ev, key, dataset, runs)
        cost = _cost_lines(runs)
        blocks += [("p", "Accuracy, test split:"), ("list", accuracy)] if accuracy else []
        blocks += [("p", "Cost, E-step + training seconds per epoch:"), ("list", cost)] if cost else []
    if dataset == LOSS_DATASET:
        blocks += [("p", "The published figures that frame it:"), ("list", _frame_lines()), ("note", PROTOCOL_NOTE)]
    return blocks
