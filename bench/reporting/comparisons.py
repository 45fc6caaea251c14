"""Comparisons between the columns of a group, each with its evidence (bench/core/stats.py).

Accuracy: paired tests between two columns on one dataset and metric (over users from the stored per-user
ranks, over seeds with 3 or more), from which a column is marked best or second, and ELCRec is compared
with the best of the other columns, whichever method that is.

Cost: ELCRec against ICLRec per epoch after the first, in total training time and in peak memory, and for
any pair of columns the time each needs to first reach a common validation quality. Two columns' costs are
compared only where their execution context (bench/core/context.py) matches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bench.core import context as run_context
from bench.core import stats as verdicts
from bench.core.evaluate import rank_gains
from bench.reporting.published import PUBLISHED_COST
from bench.reporting.runs import (
    COST_BASELINE,
    GROUP,
    MIB,
    PAPER_PROFILE,
    PROPOSED,
    columns_of,
    in_group,
    ordered,
)

# Shares of the weaker column's best valid NDCG@20 that both columns are timed to reach.
TARGET_FRACTIONS = (0.5, 0.9, 1.0)
TARGET_METRIC = "NDCG@20"


# --------------------------------------------------------------------------------------------- accuracy
class PairedTests:
    """Paired tests between the columns of one group, per (dataset, metric), computed once each."""

    def __init__(self, runs: pd.DataFrame, ranks: dict[str, np.ndarray | None]):
        self.runs, self.ranks, self.cache = runs, ranks, {}

    def _users(self, sub: pd.DataFrame, metric: str) -> np.ndarray | None:
        arrays = [self.ranks.get(p) for p in sub["path"]]
        if not arrays or any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
            return None
        return np.mean([rank_gains(a, metric) for a in arrays], axis=0)

    def test(self, key: tuple, dataset: str, metric: str, a: str, b: str) -> verdicts.PairedTest:
        cache_key = (key, dataset, metric, a, b)
        if cache_key not in self.cache:
            g = self.runs[in_group(self.runs, key) & (self.runs["dataset"] == dataset)]
            sa, sb = g[g["column"] == a], g[g["column"] == b]
            seeds = sorted(set(sa["seed"]) & set(sb["seed"]))
            va = sa.set_index("seed").loc[seeds, f"test_{metric}"].to_numpy()
            vb = sb.set_index("seed").loc[seeds, f"test_{metric}"].to_numpy()
            users_a, users_b = self._users(sa, metric), self._users(sb, metric)
            if users_a is not None and users_b is not None and len(users_a) != len(users_b):
                users_a = users_b = None  # different user sets cannot be paired
            self.cache[cache_key] = verdicts.paired_test(users_a, users_b, va, vb)
        return self.cache[cache_key]


def _beats_all(tests: PairedTests, where: tuple, cols: list[str], means: list[float], i: int) -> bool:
    """Whether column i (columns sorted by mean, best first) is significantly better than all after it."""
    if round(means[i], 4) == round(means[i + 1], 4):  # a tie at the shown resolution is a tie
        return False
    return all(tests.test(*where, cols[i], c).significant for c in cols[i + 1 :])


VERSUS_COLUMNS = ("elcrec_minus_best_baseline", "elcrec_vs_best_baseline_pct", "ci_low", "ci_high", "p_users",
                  "p_seeds")


def compare_accuracy(acc: pd.DataFrame, tests: PairedTests, marked: set[tuple]) -> pd.DataFrame:
    """`acc` (one row per group, dataset, metric, column) with the marks and ELCRec vs its best baseline.
    Marks (best, second: "significantly better") are given in the `marked` groups only, those of converged
    runs: a pipeline check's few epochs rank the methods by how fast they start, not by what they reach."""
    acc = acc.assign(mark="", best_baseline=pd.Series(np.nan, index=acc.index, dtype=object), test="")
    for col in VERSUS_COLUMNS:
        acc[col] = np.nan
    row = [*GROUP, "dataset", "metric"]
    for rkey, r in acc.groupby(row, sort=False):
        where = (tuple(rkey[: len(GROUP)]), rkey[-2], rkey[-1])
        ranked = r.sort_values("mean", ascending=False, kind="stable")
        cols, means = list(ranked["column"]), list(ranked["mean"])
        if where[0] in marked and len(cols) >= 2 and _beats_all(tests, where, cols, means, 0):
            acc.loc[ranked.index[0], "mark"] = "best"
            if len(cols) >= 3 and _beats_all(tests, where, cols, means, 1):
                acc.loc[ranked.index[1], "mark"] = "second"
        bases = r[r["method"] != PROPOSED]
        if bases.empty:
            continue
        base = bases.loc[bases["mean"].idxmax()]
        for idx, e in r[r["method"] == PROPOSED].iterrows():
            t = tests.test(*where, e["column"], base["column"])
            acc.loc[idx, "best_baseline"] = base["column"]
            acc.loc[idx, "elcrec_minus_best_baseline"] = e["mean"] - base["mean"]
            if base["mean"] >= verdicts.MIN_BASELINE:
                acc.loc[idx, "elcrec_vs_best_baseline_pct"] = (e["mean"] - base["mean"]) / base["mean"] * 100
            acc.loc[idx, ["p_users", "p_seeds", "ci_low", "ci_high"]] = [t.p_users, t.p_seeds, t.ci_low, t.ci_high]
            acc.loc[idx, "test"] = t.describe()
    return acc


# ------------------------------------------------------------------------------------------------- cost
def _epoch_ranges(epochs: list[int]) -> str:
    """`0-161, 170` for sorted epoch numbers."""
    ranges, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            ranges.append(f"{start}-{e}" if e > start else f"{e}")
            start = None
    return ", ".join(ranges)


# Beside a per-epoch interval over epochs whose runs in flight were counted in their own grid only.
GRID_ONLY_NOTE = "runs in flight counted in each run's grid only, other runs on the host may have shared the cores"


def key_text(key: tuple) -> str:
    """A comparable context (bench/core/context.comparable_key) in words."""
    counted = "" if key[4] == "host" else " in its grid (other runs on the host not counted)"
    return f"{key[1]}, {key[2]} thread(s), {key[3]} in flight{counted}"


def shared_epoch_context(a: pd.DataFrame, b: pd.DataFrame) -> tuple | None:
    """The recorded context in which both sets of runs made the most epochs after their first: the one the
    per-epoch comparison uses. A campaign may continue a run on another machine (context.segments), so this
    need not be either run's last; None where they share no recorded context. A context whose runs in flight
    were counted on the host comes before one that counted only its grid's (a lower bound: other runs may
    have shared the cores unseen)."""

    def counts(runs: pd.DataFrame) -> Counter:
        return Counter(k for keys in runs["epoch_keys"] for k in keys[1:] if k is not None)

    in_a, in_b = counts(a), counts(b)
    shared = [k for k in in_a if k in in_b]
    return max(shared, key=lambda k: (k[4] == "host", min(in_a[k], in_b[k]), str(k))) if shared else None


def epoch_seconds_in(run: pd.Series, key: tuple | None, column: str = "epoch_training_s") -> list[float]:
    """A run's E-step + training seconds of its epochs after the first (warm-up) that ran in context `key`
    (None: those whose context nobody recorded); `column` "epoch_training_cpu_s" gives the CPU seconds of
    those that recorded them."""
    pairs = list(zip(run[column], run["epoch_keys"]))[1:]
    return [seconds for seconds, k in pairs if k == key and seconds is not None]


# Beyond this difference between the two sides' machine speed probes, the per-epoch change may be the machines'.
PROBE_TOLERANCE = 0.10


def probe_note(a: pd.DataFrame, b: pd.DataFrame, key: tuple) -> str | None:
    """The machines' speed over the epochs a per-epoch comparison uses (each invocation's speed probe,
    bench/core/context.py): the median probe of each side and their difference, with a caution beyond
    PROBE_TOLERANCE; None where none of those epochs was probed (runs made before the probe existed)."""

    def probes(runs: pd.DataFrame) -> tuple[list[float], int]:
        taken, epochs = [], 0
        for _, r in runs.iterrows():
            for probe, k in list(zip(r["epoch_speed_probe_s"], r["epoch_keys"]))[1:]:
                if k == key:
                    epochs += 1
                    taken += [probe] if probe is not None else []
        return taken, epochs

    (pa, na), (pb, nb) = probes(a), probes(b)
    if not pa and not pb:
        return None
    name_a, name_b = a["column"].iloc[0], b["column"].iloc[0]
    if len(pa) < na or len(pb) < nb:
        return (f"machine speed probe taken for {len(pa)} of {na} {name_a} and {len(pb)} of {nb} {name_b} epochs"
                " (runs made before it existed have none): the machines' speeds are not compared")
    ma, mb = float(np.median(pa)), float(np.median(pb))
    diff = ma / mb - 1
    note = (f"machine speed probe (a fixed workload timed as each invocation starts), median over these epochs:"
            f" {name_a} {ma * 1000:.1f} ms, {name_b} {mb * 1000:.1f} ms ({diff * 100:+.0f}%)")
    if abs(diff) > PROBE_TOLERANCE:
        note += (f"; caution: the two sides' machines differ in speed by more than {PROBE_TOLERANCE:.0%},"
                 " which the per-epoch change may reflect")
    return note


def _epochs_elsewhere(runs: pd.DataFrame, key: tuple) -> list[str]:
    """For each run some of whose epochs ran in another context than `key`: which epochs."""
    out = []
    for _, r in runs.iterrows():
        other = [i for i, k in enumerate(r["epoch_keys"]) if k != key]
        if other:
            out.append(f"{r['column']} seed {int(r['seed'])} epochs {_epoch_ranges(other)}")
    return out


def context_spans(runs: pd.DataFrame) -> list[str]:
    """For each run whose epochs ran in more than one context (a campaign continued it elsewhere), which
    epochs ran where: `iclrec seed 1: epochs 0-190 context not recorded then 191-299 <CPU>, 1 thread(s), ...`."""
    out = []
    for _, r in runs.iterrows():
        keys = list(r["epoch_keys"])
        if len(set(keys)) < 2:
            continue
        parts, start = [], 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                where = key_text(keys[start]) if keys[start] is not None else "context not recorded"
                parts.append(f"{_epoch_ranges(list(range(start, i)))} {where}")
                start = i
        out.append(f"{r['column']} seed {int(r['seed'])}: epochs {' then '.join(parts)}")
    return out


def context_check(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str | None, str]:
    """(why the two sets of runs are not compared, or None; how their context is known)."""
    keys_a = [run_context.comparable_key(c) for c in a["context"]]
    keys_b = [run_context.comparable_key(c) for c in b["context"]]
    both = pd.concat([a, b])
    if any(k is None for k in keys_a + keys_b):
        # A context the run did not record (run_context.recorded): comparable only when what it does say
        # matches (machine, torch threads) and the records' own start and finish times show each run alone.
        seen = both["in_flight_seen"]
        alone = seen.notna().all() and (seen == 1).all() and all(k is None for k in keys_a + keys_b)
        if alone and both["machine"].nunique() == 1 and both["threads"].nunique() == 1:
            return None, "context inferred: not recorded, but same device and threads and no overlapping record"
        extra = f"; by their start and finish times up to {int(seen.max())} runs were in flight" if seen.max() > 1 else ""
        return f"context unknown (records written before the execution context was recorded{extra})", ""
    if len(set(keys_a + keys_b)) > 1:

        def desc(keys: list) -> str:
            return "; ".join(sorted({key_text(k) for k in keys}))

        return f"contexts differ ({a['column'].iloc[0]}: {desc(keys_a)} vs {b['column'].iloc[0]}: {desc(keys_b)})", ""
    note = f"same context: {key_text(keys_a[0])}"
    # Load averages above the core count mean other work shared the machine: the spread may not show it all.
    cores = max(c["cpu_count"] or 0 for c in both["context"])
    loads = [(c[k] or [0.0])[0] for c in both["context"] for k in ("loadavg_start", "loadavg_end")]
    peak = max(loads, default=0.0)
    if cores and peak > cores:
        note += f"; caution: load average up to {peak:.1f} on {cores} cores, other work shared the machine"
    return None, note


def memory_check(a: pd.DataFrame, b: pd.DataFrame, not_compared: str | None) -> str | None:
    """Why the peak memories of two sets of runs are not compared, or None. A run's peak is its own process's
    (its RSS on a CPU; its allocations and NVML's bytes for its process on a GPU), which other runs on the
    machine do not change: device, machine and torch threads must match, the runs in flight need not.
    `not_compared` is context_check's reason, kept where a run did not record its context."""
    contexts = list(a["context"]) + list(b["context"])
    if not all(run_context.recorded(c) for c in contexts):
        return not_compared

    def key(c: dict) -> str:
        return f"{c['device']}, {run_context.machine(c)}, {c['threads']} thread(s)"

    keys_a, keys_b = sorted({key(c) for c in a["context"]}), sorted({key(c) for c in b["context"]})
    if len(set(keys_a + keys_b)) > 1:
        return f"contexts differ ({a['column'].iloc[0]}: {'; '.join(keys_a)} vs {b['column'].iloc[0]}: {'; '.join(keys_b)})"
    return None


def with_training_seconds(runs: pd.DataFrame) -> pd.DataFrame:
    """Training time as the paper's Table 2 counts it (E-step plus training, no evaluation), and MB."""
    return runs.assign(training_s=runs["estep_s"] + runs["train_s"], peak_memory_mb=runs["peak_memory_bytes"] / MIB)


def _cost_pair(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """The cost of `a` against `b`: per epoch, in total and in peak memory, each an interval and a verdict."""
    row: dict = {}
    row["not_compared"], row["context"] = context_check(a, b)
    # Per epoch: the epochs both ran in one recorded context, wherever the runs ended; the totals and the peak
    # memory are one number per run, compared only where the runs' last contexts match.
    key = shared_epoch_context(a, b)
    row["per_epoch_not_compared"] = None if key is not None else row["not_compared"]
    row["total_not_compared"] = row["not_compared"]
    row["memory_not_compared"] = memory_check(a, b, row["not_compared"])
    elsewhere = _epochs_elsewhere(pd.concat([a, b]), key) if key is not None else []
    if elsewhere or (key is not None and row["not_compared"]):  # said only where it is not every epoch
        per_epoch_note = f"per epoch: the epochs run in {key_text(key)}"
        if elsewhere:
            per_epoch_note += f" (not {'; '.join(elsewhere)}, which totals and times to a target include)"
        row["context"] = f"{row['context']}; {per_epoch_note}" if row["context"] else per_epoch_note
    row["per_epoch_probes"] = probe_note(a, b, key) if key is not None else None
    if row["per_epoch_probes"]:
        row["context"] = (f"{row['context']}; {row['per_epoch_probes']}" if row["context"]
                          else row["per_epoch_probes"])
    per_epoch = verdicts.per_epoch_interval([epoch_seconds_in(r, key) for _, r in a.iterrows()],
                                            [epoch_seconds_in(r, key) for _, r in b.iterrows()])
    if key is not None and key[4] != "host" and per_epoch.basis:
        # Said wherever the interval is quoted (the front page too): the count may have missed a run beside it.
        per_epoch = replace(per_epoch, basis=f"{per_epoch.basis}; {GRID_ONLY_NOTE}")
    # The same epochs' CPU seconds, where recorded: what each run used, which waiting for a core does not
    # stretch (said beside the wall seconds, never instead of them).
    per_epoch_cpu = verdicts.per_epoch_interval(
        [epoch_seconds_in(r, key, "epoch_training_cpu_s") for _, r in a.iterrows()],
        [epoch_seconds_in(r, key, "epoch_training_cpu_s") for _, r in b.iterrows()])
    row["per_epoch_cpu_not_compared"] = row["per_epoch_not_compared"]
    row["per_epoch_in_flight_counted"] = key[4] if key is not None else None  # "host" or "grid"
    total = verdicts.per_run_interval(list(a["training_s"]), list(b["training_s"]))
    memory = verdicts.per_run_interval(list(a["peak_memory_mb"]), list(b["peak_memory_mb"]))
    for name, iv in (("per_epoch", per_epoch), ("per_epoch_cpu", per_epoch_cpu), ("total", total), ("memory", memory)):
        row[f"{name}_change_pct"] = iv.change_pct
        row[f"{name}_low_pct"], row[f"{name}_high_pct"] = iv.low_pct, iv.high_pct
        row[f"{name}_basis"] = iv.basis or iv.reason
        blocked = row[f"{name}_not_compared"]
        row[f"{name}_verdict"] = f"not compared: {blocked}" if blocked else verdicts.cost_verdict(iv)
        row[f"_{name}"] = iv
    return row


def per_epoch_change(a: pd.DataFrame, b: pd.DataFrame) -> tuple[verdicts.Interval, str | None, str | None]:
    """Runs `a` against runs `b` (two columns of a group, with training seconds), per epoch after the first:
    (the change with its interval, why they are not compared or None, what the machines' speed probes say of
    the compared epochs or None), as the ELCRec vs ICLRec comparison computes it, for any pair of columns."""
    row = _cost_pair(a, b)
    return row["_per_epoch"], row["per_epoch_not_compared"], row["per_epoch_probes"]


def _published_cost(dataset: str, shown: bool) -> dict:
    """The paper's Table 2 beside a comparison of paper-budget runs (NaN elsewhere)."""
    row = {}
    for m in (COST_BASELINE, PROPOSED):
        for q in ("train_s", "memory_mb"):
            row[f"paper_{q}_{m}"] = PUBLISHED_COST.get(dataset, {}).get(m, {}).get(q, np.nan) if shown else np.nan
    for q in ("train_s", "memory_mb"):
        row[f"paper_{q}_change_pct"] = (row[f"paper_{q}_{PROPOSED}"] / row[f"paper_{q}_{COST_BASELINE}"] - 1) * 100
    return row


def cost_comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """ELCRec vs ICLRec per (group, dataset, pair of their columns): changes with intervals, or why not."""
    runs = with_training_seconds(runs)
    rows = []
    for k, g in runs.groupby([*GROUP, "dataset"], sort=False):
        for ci in columns_of(g[g["method"] == COST_BASELINE]):
            for ce in columns_of(g[g["method"] == PROPOSED]):
                row = dict(zip([*GROUP, "dataset"], k), column_iclrec=ci, column_elcrec=ce)
                row.update(_cost_pair(g[g["column"] == ce], g[g["column"] == ci]))
                row.update(_published_cost(k[-1], k[0] == PAPER_PROFILE))
                rows.append(row)
    comp = pd.DataFrame(rows)
    return ordered(comp, [*GROUP, "dataset"]) if not comp.empty else comp


# -------------------------------------------------------------------------------- time to a target quality
def seconds_to_reach(curve: list[float], epoch_seconds: list[float], target: float) -> float:
    """E-step + training seconds until the end of the first epoch whose valid metric reaches `target`."""
    spent = 0.0
    for value, seconds in zip(curve, epoch_seconds):
        spent += seconds
        if value is not None and np.isfinite(value) and value >= target:
            return spent
    return float("nan")


@dataclass(frozen=True)
class TargetTime:
    """Seconds two columns need to first reach one valid NDCG@20 target, and the change of A against B."""

    fraction: float
    target: float
    weaker: str  # the column whose best valid NDCG@20 set the target
    seconds_a: tuple[float, ...]
    seconds_b: tuple[float, ...]
    interval: verdicts.Interval


def _floats(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _best(runs: pd.DataFrame) -> float:
    # The lowest best over the seeds: every run of the column reaches it, so every time is defined.
    bests = [np.nanmax(c) if len(c) and np.isfinite(c).any() else np.nan for c in runs["valid_curve"].map(_floats)]
    return float(np.min(bests)) if bests else float("nan")


def time_to_target(a: pd.DataFrame, b: pd.DataFrame, fractions=TARGET_FRACTIONS) -> list[TargetTime]:
    """For runs `a` and `b` of two columns on one dataset, the seconds each run needs to first reach
    `fractions` of the weaker column's best valid NDCG@20 (the weaker column's lowest best over its seeds),
    and A's change against B with a 95% interval between seeds (2 or more seeds per column)."""
    best_a, best_b = _best(a), _best(b)
    if not (best_a > 0 and best_b > 0):
        return []
    weaker_best = min(best_a, best_b)
    weaker = (a if best_a <= best_b else b)["column"].iloc[0]
    out = []
    for fraction in fractions:
        target = fraction * weaker_best
        sa = tuple(seconds_to_reach(c, s, target) for c, s in zip(a["valid_curve"], a["epoch_training_s"]))
        sb = tuple(seconds_to_reach(c, s, target) for c, s in zip(b["valid_curve"], b["epoch_training_s"]))
        out.append(TargetTime(fraction, target, weaker, sa, sb, verdicts.per_run_interval(list(sa), list(sb))))
    return out


def _pairs(columns: list[str], methods: dict[str, str]) -> list[tuple[str, str]]:
    """Every pair of columns, ELCRec's columns first, else the later column of the table against the earlier."""
    out = []
    for i, early in enumerate(columns):
        for late in columns[i + 1 :]:
            out.append((early, late) if methods[early] == PROPOSED and methods[late] != PROPOSED else (late, early))
    return out


def time_to_target_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Time to a target quality for every pair of columns of every group and dataset."""
    rows = []
    for k, g in runs.groupby([*GROUP, "dataset"], sort=False):
        methods = dict(zip(g["column"], g["method"]))
        for ca, cb in _pairs(columns_of(g), methods):
            a, b = g[g["column"] == ca], g[g["column"] == cb]
            not_compared, _ = context_check(a, b)
            # Times to a target count every epoch, so a run continued on another machine mixes their speeds.
            spans = "; ".join(context_spans(pd.concat([a, b]))) or None
            for t in time_to_target(a, b):
                iv = t.interval
                rows.append({
                    **dict(zip([*GROUP, "dataset"], k)), "column_a": ca, "column_b": cb,
                    "method_a": methods[ca], "method_b": methods[cb], "target_fraction": t.fraction,
                    "target_valid_ndcg20": t.target, "target_set_by": t.weaker,
                    "seconds_a": float(np.nanmean(t.seconds_a)), "seconds_b": float(np.nanmean(t.seconds_b)),
                    "n_a": len(t.seconds_a), "n_b": len(t.seconds_b), "change_pct": iv.change_pct,
                    "low_pct": iv.low_pct, "high_pct": iv.high_pct, "not_compared": not_compared,
                    "mixed_contexts": spans,
                    "verdict": f"not compared: {not_compared}" if not_compared else verdicts.cost_verdict(iv, ca),
                })
    table = pd.DataFrame(rows)
    return ordered(table, [*GROUP, "dataset"]) if not table.empty else table
