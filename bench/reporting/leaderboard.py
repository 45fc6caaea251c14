"""Leaderboard: our runs laid out like the ELCRec paper's Table 1 (accuracy) and Table 2 (cost).

Everything is computed from the run records alone, so the files can be regenerated at any time and are
never edited by hand. Tables are grouped by (profile, protocol, device, variant) because numbers from a smoke
run, from the strict evaluation protocol, from a GPU or from a fast (non-published) variant are not comparable
with a paper-profile, reference-protocol, faithful run on a CPU.

No verdict is stated without the evidence for it (bench/core/stats.py): ranking marks and "ELCRec vs best
baseline" carry paired tests over users (and seeds), cost changes carry a 95% interval from the runs' own
spread, and two methods' costs are compared only where their execution context (bench/core/context.py) matches.
Every section of a profile other than `paper` opens with its budget; published numbers appear only beside
runs with the paper's budget.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.core import context as run_context
from bench.core import stats as verdicts
from bench.core.errors import BenchError
from bench.core.evaluate import rank_gains
from bench.core.records import METRICS, find_corrupt, load_records, load_test_ranks, write_bytes_atomic
from bench.reporting.published import PUBLISHED_ACCURACY, PUBLISHED_COST
from methods import REGISTRY

METHOD_ORDER = ("sasrec", "cl4srec", "iclrec", "elcrec")
# Display names and colours are the methods' own class attributes; a record of a method no longer
# registered keeps its registry name and a neutral colour.
METHOD_NAMES = {name: cls.display_name or name for name, cls in REGISTRY.items()}
METHOD_COLORS = {name: cls.color for name, cls in REGISTRY.items()}
# The method the paper proposes; every other method in a table is a baseline it is compared with, so a method
# added to methods/ is compared without a change here.
PROPOSED = "elcrec"
BOTH = ("iclrec", "elcrec")  # the pair the paper's cost table compares
DATASET_ORDER = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")
GROUP = ["profile", "protocol", "device", "variant"]
PAPER_PROFILE = "paper"
PAPER_BUDGET = "all users, up to 300 epochs (patience 40), seeds 1, 2, 3"
MIB = 2**20  # the paper's "MB" are nvidia-smi MiB
DPI = 110
_ORDERS = {"dataset": DATASET_ORDER, "metric": METRICS, "method": METHOD_ORDER}

# A document is a list of blocks, rendered to markdown here and to HTML by bench/reporting/report.py:
# ("h1" | "h2" | "h3" | "p" | "banner", text), ("table", DataFrame), ("list", [text, ...]).
Block = tuple[str, object]


def _sort_key(col: pd.Series) -> pd.Series:
    # Known names sort in paper order, unknown ones after them alphabetically (prefix keeps them apart).
    order = _ORDERS.get(str(col.name))
    if order is None:
        return col
    return col.map(lambda v: f"{order.index(v) if v in order else len(order):02d}:{v}")


def _ordered(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, key=_sort_key, kind="stable").reset_index(drop=True)


def _pct(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.1f}%"


def _num(x: float, fmt: str = ".4f") -> str:
    # Round first and add 0.0 so that a tiny negative difference prints as +0.0000, not -0.0000.
    return "" if pd.isna(x) else format(round(x, 6) + 0.0, fmt)


def _md_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_md(blocks: list[Block]) -> str:
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"\n{'#' * int(kind[1])} {content}\n")
        elif kind == "banner":
            out.append(f"> **{content}**\n")
        elif kind == "p":
            out.append(f"{content}\n")
        elif kind == "table":
            out.append(_md_table(content.fillna("")) + "\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in content) + "\n")
    return "\n".join(out).lstrip("\n")


def _group_title(key: tuple) -> str:
    return ", ".join(f"{name} `{value}`" for name, value in zip(GROUP, key))


def _in_group(frame: pd.DataFrame, key: tuple) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for name, value in zip(GROUP, key):
        mask &= frame[name] == value
    return mask


def group_slug(key: tuple) -> str:
    """A file-name part for a group that depends on the group alone, e.g. `smoke_reference_cpu_faithful`."""

    def slug(value: str) -> str:
        return "-".join("".join(ch if ch.isalnum() else " " for ch in str(value)).split())

    return "_".join(slug(v) for v in key)


# ------------------------------------------------------------------------------------------------- runs
def _in_flight_from_times(records: pd.DataFrame) -> pd.Series:
    """Most runs in flight at once during each run (itself included), from the records' start and finish
    times on the same host: a lower bound (other work on the machine leaves no record here)."""
    start = pd.to_datetime(records["started_at"], errors="coerce", utc=True)
    end = pd.to_datetime(records["finished_at"], errors="coerce", utc=True)
    host = records["hostname"].fillna("")
    out = pd.Series(np.nan, index=records.index)
    for i in records.index:
        if pd.isna(start[i]) or pd.isna(end[i]):
            continue
        others = (host == host[i]) & (start < end[i]) & (end > start[i])
        # The count at each moment a run inside the window started (or this one started) is the maximum.
        moments = [max(start[i], t) for t in start[others]]
        out[i] = max(int(((start[others] <= m) & (end[others] > m)).sum()) for m in moments)
    return out


def _completed_runs(records: pd.DataFrame) -> pd.DataFrame:
    records = records.assign(in_flight_seen=_in_flight_from_times(records))
    runs = records[records["status"] == "ok"].copy()
    runs["context"] = runs["context"].map(lambda c: c if isinstance(c, dict) else None)  # never NaN
    for key in [*GROUP, "config_source", "device_name"]:
        runs[key] = runs[key].fillna("unknown")  # NaN keys would silently vanish from groupby
    # A rerun of the same seed (new config or code) supersedes the older record instead of counting twice.
    runs = runs.sort_values(["finished_at", "path"], na_position="first")
    runs = runs.drop_duplicates([*GROUP, "config_source", "method", "dataset", "seed"], keep="last")
    # A method run with several config sources in one group gets one column per source, e.g. "ELCRec (tuned)".
    n_src = runs.groupby([*GROUP, "method"])["config_source"].transform("nunique")
    names = runs["method"].map(lambda m: METHOD_NAMES.get(m, m))
    runs["column"] = names.where(n_src == 1, names + " (" + runs["config_source"] + ")")
    return _ordered(runs, [*GROUP, "method", "config_source", "dataset", "seed"])


def _budget_banner(g: pd.DataFrame) -> str | None:
    """One line for a section whose budget is not the paper's: users, epochs, seeds, and the caveat."""
    if g["profile"].iloc[0] == PAPER_PROFILE:
        return None
    parts = []
    for (users, epochs, patience), b in g.groupby(["max_users", "spec_epochs", "spec_patience"], dropna=False):
        who = "all users" if pd.isna(users) else f"{int(users):,} users sampled"
        ep = "?" if pd.isna(epochs) else f"{int(epochs)} epoch{'s' if epochs != 1 else ''}"
        pat = "" if pd.isna(patience) else f" (patience {int(patience)})"
        datasets = ", ".join(list(dict.fromkeys(_ordered(b, ["dataset"])["dataset"])))
        parts.append(f"{who}, {ep}{pat} on {datasets}")
    seeds = g.groupby(["column", "dataset"])["seed"].nunique()
    seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    return (
        f"Budget: {g['profile'].iloc[0]} profile: {'; '.join(parts)}; {seed_text} seed(s) per cell. Not comparable"
        f" with the published numbers (paper: {PAPER_BUDGET}), which are therefore not shown."
    )


# --------------------------------------------------------------------------------------------- accuracy
class _Tests:
    """Paired tests between the columns of one group, per (dataset, metric), cached."""

    def __init__(self, runs: pd.DataFrame, ranks: dict[str, np.ndarray | None]):
        self.runs, self.ranks, self.cache = runs, ranks, {}

    def _users(self, sub: pd.DataFrame, metric: str) -> np.ndarray | None:
        arrays = [self.ranks.get(p) for p in sub["path"]]
        if not arrays or any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
            return None
        return np.mean([rank_gains(a, metric) for a in arrays], axis=0)

    def test(self, key: tuple, dataset: str, metric: str, a: str, b: str) -> verdicts.PairedTest:
        ck = (key, dataset, metric, a, b)
        if ck not in self.cache:
            g = self.runs[_in_group(self.runs, key) & (self.runs["dataset"] == dataset)]
            sa, sb = g[g["column"] == a], g[g["column"] == b]
            seeds = sorted(set(sa["seed"]) & set(sb["seed"]))
            va = sa.set_index("seed").loc[seeds, f"test_{metric}"].to_numpy()
            vb = sb.set_index("seed").loc[seeds, f"test_{metric}"].to_numpy()
            users_a, users_b = self._users(sa, metric), self._users(sb, metric)
            if users_a is not None and users_b is not None and len(users_a) != len(users_b):
                users_a = users_b = None  # different user sets cannot be paired
            self.cache[ck] = verdicts.paired_test(users_a, users_b, va, vb)
        return self.cache[ck]


def _beats_all(tests: _Tests, where: tuple, cols: list[str], means: list[float], i: int) -> bool:
    """Whether column i (columns sorted by mean, best first) is significantly better than all after it."""
    if round(means[i], 4) == round(means[i + 1], 4):  # a tie at the shown resolution is a tie
        return False
    return all(tests.test(*where, cols[i], c).significant for c in cols[i + 1 :])


def _accuracy(runs: pd.DataFrame, tests: _Tests) -> pd.DataFrame:
    """One row per (group, config_source, dataset, metric, method): mean, std, n, tests, marks, paper."""
    ids = [*GROUP, "config_source", "dataset", "method", "column", "seed"]
    long = runs.melt(id_vars=ids, value_vars=[f"test_{m}" for m in METRICS], var_name="metric")
    long["metric"] = long["metric"].str.removeprefix("test_")
    keys = [*GROUP, "config_source", "dataset", "metric", "method", "column"]
    # Sample std (ddof=1) is NaN for a single seed, which the tables show as "(n=1)" rather than "± 0".
    acc = long.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    paper = acc["profile"] == PAPER_PROFILE  # published numbers only beside the paper's budget
    acc["published"] = [
        PUBLISHED_ACCURACY.get(d, {}).get(m, {}).get(k, np.nan) if p else np.nan
        for d, m, k, p in zip(acc["dataset"], acc["method"], acc["metric"], paper)
    ]
    acc["diff"] = acc["mean"] - acc["published"]
    acc["mark"] = ""
    numbers = ("elcrec_minus_best_baseline", "elcrec_vs_best_baseline_pct", "ci_low", "ci_high", "p_users", "p_seeds")
    for col in ("best_baseline", *numbers):
        acc[col] = np.nan
    acc["best_baseline"] = acc["best_baseline"].astype(object)
    acc["test"] = ""
    row = [*GROUP, "dataset", "metric"]
    for rkey, r in acc.groupby(row, sort=False):
        key, dataset, metric = tuple(rkey[: len(GROUP)]), rkey[-2], rkey[-1]
        ranked = r.sort_values("mean", ascending=False, kind="stable")
        cols, means = list(ranked["column"]), list(ranked["mean"])
        if len(cols) >= 2 and _beats_all(tests, (key, dataset, metric), cols, means, 0):
            acc.loc[ranked.index[0], "mark"] = "best"
            if len(cols) >= 3 and _beats_all(tests, (key, dataset, metric), cols, means, 1):
                acc.loc[ranked.index[1], "mark"] = "second"
        bases = r[r["method"] != PROPOSED]
        if bases.empty:
            continue
        base = bases.loc[bases["mean"].idxmax()]
        for idx, e in r[r["method"] == PROPOSED].iterrows():
            t = tests.test(key, dataset, metric, e["column"], base["column"])
            acc.loc[idx, "best_baseline"] = base["column"]
            acc.loc[idx, "elcrec_minus_best_baseline"] = e["mean"] - base["mean"]
            if base["mean"] >= verdicts.MIN_BASELINE:
                acc.loc[idx, "elcrec_vs_best_baseline_pct"] = (e["mean"] - base["mean"]) / base["mean"] * 100
            acc.loc[idx, ["p_users", "p_seeds", "ci_low", "ci_high"]] = [t.p_users, t.p_seeds, t.ci_low, t.ci_high]
            acc.loc[idx, "test"] = t.describe()
    return _ordered(acc, [*row, "method", "config_source"])


def _cell(r: pd.Series) -> str:
    text = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["n_seeds"] >= 2 else f" (n={r['n_seeds']})")
    if r["mark"] == "best":
        return f"**{text}**"
    return f"<u>{text}</u>" if r["mark"] == "second" else text


def _vs_cell(r: pd.Series) -> str:
    if pd.isna(r["elcrec_minus_best_baseline"]):
        return ""
    text = f"{r['elcrec_minus_best_baseline']:+.4f}"
    if pd.notna(r["ci_low"]):
        text += f" [{r['ci_low'] + 0.0:+.4f}, {r['ci_high'] + 0.0:+.4f}]"
    text += f" vs {r['best_baseline']}"
    if pd.isna(r["elcrec_vs_best_baseline_pct"]):
        text += f" (no %: baseline < {verdicts.MIN_BASELINE})"
    else:
        text += f" ({r['elcrec_vs_best_baseline_pct']:+.1f}%)"
    return text


ACCURACY_INTRO = (
    "Cells: mean ± sample std (ddof=1) over seeds; a single seed shows the mean and (n=1). **Bold**: the best"
    " method of the row, given only when it is significantly better than every other method of the row"
    f" (paired tests, p < {verdicts.ALPHA}); <u>underlined</u>: the second, only when it is significantly"
    " better than every method below it. Ties and differences the tests cannot resolve get no mark."
    " `ELCRec vs best baseline` = ELCRec's mean - the best of the other methods of the row [95% interval of the"
    " mean paired difference, over users, or over seeds without per-user ranks], with the relative"
    f" change only where that baseline is at least {verdicts.MIN_BASELINE}. `p (paired test)`: two-sided Wilcoxon"
    " signed-rank test over users of the per-user metric (from each run's stored per-user ranks, averaged"
    " over seeds), and a paired t-test over seeds where both have 3 or more; `test unavailable` where the"
    " records carry no per-user ranks and there are fewer than 3 seeds. `published` = ELCRec paper Table 1,"
    " `diff` = ours - published: shown only for the `paper` profile."
)


def _accuracy_blocks(acc: pd.DataFrame, runs: pd.DataFrame, key: tuple) -> list[Block]:
    g = acc[_in_group(acc, key)]
    blocks: list[Block] = []
    banner = _budget_banner(runs[_in_group(runs, key)])
    if banner:
        blocks.append(("banner", banner))
    g = g.assign(
        cell=g.apply(_cell, axis=1),
        vs=g.apply(_vs_cell, axis=1),
        paper=g["published"].map(_num),
        d=g["diff"].map(lambda x: _num(x, "+.4f")),
    )
    cols = list(dict.fromkeys(_ordered(g, ["method", "config_source"])["column"]))
    wide = g.pivot(index=["dataset", "metric"], columns="column", values=["cell", "vs", "test", "paper", "d"])
    wide = wide.reindex(pd.MultiIndex.from_frame(g[["dataset", "metric"]].drop_duplicates()))
    table = wide.index.to_frame(index=False)
    for c in cols:
        table[c] = wide[("cell", c)].to_numpy()
    for c in [c for c in cols if c.startswith("ELCRec")]:
        if wide[("vs", c)].fillna("").ne("").any():
            table[f"{c} vs best baseline"] = wide[("vs", c)].to_numpy()
            table[f"{c} p (paired test)"] = wide[("test", c)].to_numpy()
    for c in cols:
        if wide[("paper", c)].fillna("").ne("").any():  # paper profile and a dataset with published numbers
            table[f"{c} published"] = wide[("paper", c)].to_numpy()
            table[f"{c} diff"] = wide[("d", c)].to_numpy()
    seeds = g.groupby(["dataset", "column"], sort=False)["n_seeds"].max().unstack("column")[cols]
    sources = ", ".join(f"{c}: {s}" for c, s in g[["column", "config_source"]].drop_duplicates().to_numpy())
    blocks += [("p", f"Config source: {sources}."), ("table", table), ("p", "Seeds per method and dataset:")]
    blocks.append(("table", seeds.fillna(0).astype(int).reset_index()))
    return blocks


# ------------------------------------------------------------------------------------------------- cost
def _in_flight_text(s: pd.DataFrame) -> str:
    known = s["concurrency"].dropna()
    if len(known) == len(s):
        values = sorted({int(v) for v in known})
        return "/".join(map(str, values))
    seen = s["in_flight_seen"].max()
    if pd.isna(seen):
        return "unknown"
    return "unknown (alone by record times)" if seen == 1 else f"unknown (≥{int(seen)} by record times)"


def _load_text(s: pd.DataFrame) -> str:
    loads = [
        (c["loadavg_start"][0], c["loadavg_end"][0])
        for c in s["context"]
        if c and c.get("loadavg_start") and c.get("loadavg_end")
    ]
    if not loads:
        return ""
    return ", ".join(f"{a:.1f}→{b:.1f}" for a, b in loads)


def _cost(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, config_source, method, dataset): warm-up and steady-state seconds, context."""
    # Training time as the paper's Table 2 counts it: E-step (clustering) plus training, no evaluation.
    runs = runs.assign(
        training_s=runs["estep_s"] + runs["train_s"],
        peak_memory_mb=runs["peak_memory_bytes"] / MIB,
        training_s_first=runs["estep_s_first"] + runs["train_s_first"],
        training_s_steady_median=runs["epoch_training_s"].map(lambda e: np.median(e[1:]) if len(e) > 1 else np.nan),
    )
    means = ["training_s_first", "training_s_steady_median"]
    means += [f"{p}_s_{k}" for k in ("first", "steady_median") for p in ("estep", "train", "eval")]
    means += ["training_s", "time_to_best_s", "epochs_run", "peak_memory_mb"]
    keys = [*GROUP, "config_source", "method", "column", "dataset"]
    rows = []
    for k, s in runs.groupby(keys, sort=False):
        row = dict(zip(keys, k))
        row.update({c: s[c].mean() for c in means})
        row["n_seeds"] = len(s)
        row["machine"] = ", ".join(sorted(set(s["machine"].fillna("unknown").astype(str))))
        row["threads"] = "/".join(sorted({str(int(t)) for t in s["threads"].dropna()})) or "unknown"
        row["in_flight"] = _in_flight_text(s)
        row["load"] = _load_text(s)
        row["torch"] = ", ".join(sorted({c.get("torch", "") for c in s["context"] if c})) or ""
        rows.append(row)
    return _ordered(pd.DataFrame(rows), [*GROUP, "dataset", "method", "config_source"])


def _context_check(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str | None, str]:
    """(why the two sets of runs are not compared, or None; how their context is known)."""
    keys_a = [run_context.comparable_key(c) for c in a["context"]]
    keys_b = [run_context.comparable_key(c) for c in b["context"]]
    both = pd.concat([a, b])
    if any(k is None for k in keys_a + keys_b):
        # Records written before the context was recorded: comparable only when what they do say matches
        # (device name, torch threads) and their own start and finish times show each run alone.
        seen = both["in_flight_seen"]
        alone = seen.notna().all() and (seen == 1).all() and all(k is None for k in keys_a + keys_b)
        if alone and both["machine"].nunique() == 1 and both["threads"].nunique() == 1:
            return None, "context inferred: not recorded, but same device and threads and no overlapping record"
        extra = f"; by their start and finish times up to {int(seen.max())} runs were in flight" if seen.max() > 1 else ""
        return f"context unknown (records written before the execution context was recorded{extra})", ""
    if len(set(keys_a + keys_b)) > 1:

        def desc(keys: list) -> str:
            return "; ".join(sorted({f"{k[1]}, {k[2]} thread(s), {k[3]} in flight" for k in keys}))

        return f"contexts differ ({a['column'].iloc[0]}: {desc(keys_a)} vs {b['column'].iloc[0]}: {desc(keys_b)})", ""
    k = keys_a[0]
    note = f"same context: {k[1]}, {k[2]} thread(s), {k[3]} in flight"
    # Load averages above the core count mean other work shared the machine: the spread may not show it all.
    cores = max((c or {}).get("cpu_count") or 0 for c in both["context"])
    loads = [(c.get(k) or [0.0])[0] for c in both["context"] for k in ("loadavg_start", "loadavg_end")]
    peak = max(loads, default=0.0)
    if cores and peak > cores:
        note += f"; caution: load average up to {peak:.1f} on {cores} cores, other work shared the machine"
    return None, note


def _cost_comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """ELCRec vs ICLRec per (group, dataset, pair of columns): changes with intervals, or why not compared."""
    rows = []
    runs = runs.assign(training_s=runs["estep_s"] + runs["train_s"], peak_memory_mb=runs["peak_memory_bytes"] / MIB)
    for k, g in runs.groupby([*GROUP, "dataset"], sort=False):
        for ci in g.loc[g["method"] == "iclrec", "column"].unique():
            for ce in g.loc[g["method"] == "elcrec", "column"].unique():
                a, b = g[g["column"] == ce], g[g["column"] == ci]
                row = dict(zip([*GROUP, "dataset"], k), column_iclrec=ci, column_elcrec=ce)
                row["not_compared"], row["context"] = _context_check(a, b)
                per_epoch = verdicts.per_epoch_interval(list(a["epoch_training_s"].map(lambda e: e[1:])),
                                                        list(b["epoch_training_s"].map(lambda e: e[1:])))
                total = verdicts.per_run_interval(list(a["training_s"]), list(b["training_s"]))
                memory = verdicts.per_run_interval(list(a["peak_memory_mb"]), list(b["peak_memory_mb"]))
                for name, iv in (("per_epoch", per_epoch), ("total", total), ("memory", memory)):
                    row[f"{name}_change_pct"] = iv.change_pct
                    row[f"{name}_low_pct"], row[f"{name}_high_pct"] = iv.low_pct, iv.high_pct
                    row[f"{name}_basis"] = iv.basis or iv.reason
                    row[f"{name}_verdict"] = (
                        f"not compared: {row['not_compared']}" if row["not_compared"] else verdicts.cost_verdict(iv)
                    )
                    row[f"_{name}"] = iv
                paper = k[0] == PAPER_PROFILE
                for m in BOTH:
                    for q in ("train_s", "memory_mb"):
                        row[f"paper_{q}_{m}"] = PUBLISHED_COST.get(k[-1], {}).get(m, {}).get(q, np.nan) if paper else np.nan
                for q in ("train_s", "memory_mb"):
                    row[f"paper_{q}_change_pct"] = (row[f"paper_{q}_elcrec"] / row[f"paper_{q}_iclrec"] - 1) * 100
                rows.append(row)
    comp = pd.DataFrame(rows)
    return _ordered(comp, [*GROUP, "dataset"]) if not comp.empty else comp


COST_INTRO = (
    "Warm-up apart from steady state: `1st epoch s` is the first epoch's E-step + training seconds"
    " (compilation, caches, k-means initialisation land there); the per-phase `s/epoch` columns are the"
    " median over the epochs after the first (empty for a one-epoch run), mean over seeds. `training s` (E-step +"
    " training, all epochs, no evaluation: what the paper's Table 2 counts) and `time to best s` count"
    " everything. Peak memory is the run's peak (GPU: reserved/NVML; CPU: RSS) in MB (MiB). Context:"
    " `machine` (CPU model or GPU), torch `threads`, `in flight` = runs on the machine at the same time"
    " (set by the grid; for records written before it was recorded, `unknown` with the most runs that the"
    " records' own start and finish times show overlapping), `load` = 1-minute load average at start→end."
    " ELCRec and ICLRec are compared only where device, machine, threads and runs in flight are the same."
    " Changes are ELCRec against ICLRec with a 95% interval (Welch t on log seconds: between seeds with 2+"
    " seeds per method, else between the epochs after the first); a saving or a cost is stated only when"
    " the interval excludes zero, otherwise `no difference detectable (±x%)`; no verdict without an interval."
)


def _says(text) -> bool:
    return isinstance(text, str) and bool(text)


def _cost_blocks(cost: pd.DataFrame, comp: pd.DataFrame, runs: pd.DataFrame, key: tuple) -> list[Block]:
    g = cost[_in_group(cost, key)]
    blocks: list[Block] = []
    banner = _budget_banner(runs[_in_group(runs, key)])
    if banner:
        blocks.append(("banner", banner))

    def fmt(col: str, f: str) -> pd.Series:
        return g[col].map(lambda x: _num(x, f))

    table = pd.DataFrame(
        {
            "dataset": g["dataset"],
            "method": g["column"],
            "config": g["config_source"],
            "seeds": g["n_seeds"],
            "machine": g["machine"],
            "threads": g["threads"],
            "in flight": g["in_flight"],
            "load": g["load"],
            "1st epoch s": fmt("training_s_first", ".2f"),
            "E-step s/epoch": fmt("estep_s_steady_median", ".2f"),
            "train s/epoch": fmt("train_s_steady_median", ".2f"),
            "eval s/epoch": fmt("eval_s_steady_median", ".2f"),
            "training s/epoch": fmt("training_s_steady_median", ".2f"),
            "training s": fmt("training_s", ".1f"),
            "time to best s": fmt("time_to_best_s", ".1f"),
            "epochs": fmt("epochs_run", "g"),
            "peak MB": fmt("peak_memory_mb", ".1f"),
        }
    )
    software = "; ".join(sorted(set(runs.loc[_in_group(runs, key), "software"].fillna("unknown"))))
    blocks += [("p", f"Software: {software}."), ("table", table)]
    c = comp[_in_group(comp, key)] if not comp.empty else comp
    if c.empty:
        return blocks

    def change(name: str) -> pd.Series:
        return c.apply(
            lambda r: "not compared" if _says(r["not_compared"]) else verdicts.interval_text(r[f"_{name}"]), axis=1
        )

    vs = pd.DataFrame(
        {
            "dataset": c["dataset"],
            "compared": c["column_elcrec"] + " vs " + c["column_iclrec"],
            "change per epoch after the 1st": change("per_epoch"),
            "change in training s": change("total"),
            "change in peak memory": change("memory"),
        }
    )
    if c["paper_train_s_change_pct"].notna().any():
        vs["paper change in training s"] = c["paper_train_s_change_pct"].map(_pct)
        vs["paper memory change"] = c["paper_memory_mb_change_pct"].map(_pct)
    lines = []
    for _, r in c.iterrows():
        head = f"{r['dataset']}: {r['column_elcrec']} vs {r['column_iclrec']}: "
        if _says(r["not_compared"]):
            lines.append(head + f"not compared: {r['not_compared']}.")
            continue
        lines.append(
            head.removesuffix(": ") + f" ({r['context']}): training s/epoch after the first:"
            f" {r['per_epoch_verdict']}; total training time: {r['total_verdict']}; peak memory:"
            f" {r['memory_verdict']}."
        )
    blocks += [("h3", "ELCRec vs ICLRec"), ("table", vs), ("list", lines)]
    return blocks


# ------------------------------------------------------------------------------------------------ plots
def _png(fig: Figure) -> bytes:
    # An explicit Agg canvas instead of pyplot: no global backend switch, no figure registry to leak into.
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _color(runs: pd.DataFrame, column: str) -> str:
    method = runs.loc[runs["column"] == column, "method"].iloc[0]
    return METHOD_COLORS.get(method, "#8172b3")


def _figure(n_panels: int, title: str) -> tuple[Figure, list]:
    # Constrained layout and a legend outside the panels: titles and legends stay readable with 1..5 methods.
    fig = Figure(figsize=(max(7.5, 2.5 + 3.3 * n_panels), 4.2), layout="constrained")
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    what, _, group = title.partition(": ")
    fig.suptitle(f"{what}\n{group}" if group else what, fontsize="medium")  # two lines: never clipped
    return fig, axes


def _legend(fig: Figure, axes: list) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if labels:
        fig.legend([handles[x] for x in labels], labels, loc="outside right upper", fontsize="small")


def _datasets(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(_ordered(frame, ["dataset"])["dataset"]))


def _plot_convergence(runs: pd.DataFrame, title: str) -> bytes:
    datasets = _datasets(runs)
    fig, axes = _figure(len(datasets), f"valid NDCG@20 per epoch (mean over seeds): {title}")
    for ax, dataset in zip(axes, datasets):
        d = runs[runs["dataset"] == dataset]
        for col in dict.fromkeys(d["column"]):
            curves = list(d.loc[d["column"] == col, "valid_curve"])
            length = max(len(c) for c in curves)
            padded = np.array([list(c) + [np.nan] * (length - len(c)) for c in curves], dtype=float)
            mean = np.nanmean(padded, axis=0) if length else padded
            x = np.arange(1, length + 1)
            ax.plot(x, mean, marker="o" if length < 15 else None, ms=3, label=col, color=_color(runs, col))
        ax.set_title(dataset, fontsize="small")
        ax.set_xlabel("epoch")
        longest = max(len(c) for c in d["valid_curve"])
        ax.set_xlim(0.5, max(longest, 2) + 0.5)
        ax.set_xticks(np.unique(np.linspace(1, max(longest, 1), min(max(longest, 1), 10)).round().astype(int)))
    axes[0].set_ylabel("valid NDCG@20")
    _legend(fig, axes)
    return _png(fig)


def _plot_accuracy(acc: pd.DataFrame, title: str) -> bytes:
    d = acc[acc["metric"] == "NDCG@20"]
    datasets = _datasets(d)
    cols = list(dict.fromkeys(_ordered(d, ["method", "config_source"])["column"]))
    fig, axes = _figure(1, f"test NDCG@20 (mean ± std over seeds): {title}")
    ax = axes[0]
    fig.set_size_inches(max(7.5, 3.5 + 1.6 * len(datasets)), 4.2)
    width = 0.8 / len(cols)
    for i, col in enumerate(cols):
        sub = d[d["column"] == col].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (i - (len(cols) - 1) / 2) * width
        ax.bar(x, sub["mean"], width, yerr=sub["std"].fillna(0), capsize=3, ecolor="0.35", label=col,
               color=_color(d, col))
        if sub["published"].notna().any():  # paper profile only
            label = "published (ELCRec paper Table 1)" if i == 0 else None
            ax.scatter(x, sub["published"], marker="D", s=18, color="black", zorder=3, label=label)
    ax.set_xticks(np.arange(len(datasets)), datasets, fontsize="small")
    ax.set_ylabel("test NDCG@20")
    _legend(fig, axes)
    return _png(fig)


def _plot_tradeoff(runs: pd.DataFrame, title: str) -> bytes:
    datasets = _datasets(runs)
    fig, axes = _figure(len(datasets), f"test NDCG@20 against training time (each point a run): {title}")
    for ax, dataset in zip(axes, datasets):
        d = runs[runs["dataset"] == dataset]
        for col in dict.fromkeys(d["column"]):
            s = d[d["column"] == col]
            ax.scatter(s["estep_s"] + s["train_s"], s["test_NDCG@20"], label=col, color=_color(runs, col), s=30)
        ax.set_title(dataset, fontsize="small")
        ax.set_xlabel("training s (E-step + train)")
        ax.set_xlim(left=0)  # from zero: the eye reads ratios of time and accuracy
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-3))
    axes[0].set_ylabel("test NDCG@20")
    _legend(fig, axes)
    return _png(fig)


def _plot_cost(cost: pd.DataFrame, title: str) -> bytes:
    datasets = _datasets(cost)
    fig, axes = _figure(len(datasets), f"seconds per epoch by phase, median after the first epoch: {title}")
    phases = {"estep_s_steady_median": "E-step", "train_s_steady_median": "train", "eval_s_steady_median": "eval"}
    colors = {"E-step": "#8c8c8c", "train": "#4c72b0", "eval": "#dd8452"}
    for ax, dataset in zip(axes, datasets):
        g = cost[cost["dataset"] == dataset]
        bottom = np.zeros(len(g))
        steady = g[list(phases)].notna().any(axis=1).to_numpy()
        for col, label in phases.items():
            seconds = g[col].fillna(0).to_numpy()
            ax.bar(g["column"], seconds, bottom=bottom, label=label, color=colors[label])
            bottom += seconds
        # One-epoch runs have no steady state: their first epoch is drawn hatched instead, and says so.
        first = np.where(steady, 0.0, (g["training_s_first"] + g["eval_s_first"]).fillna(0).to_numpy())
        if first.any():
            ax.bar(g["column"], first, fill=False, hatch="//", edgecolor="0.3", label="only epoch (warm-up)")
        ax.set_title(dataset, fontsize="small")
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    axes[0].set_ylabel("seconds per epoch")
    _legend(fig, axes)
    return _png(fig)


PLOT_KINDS = {
    "convergence": "valid NDCG@20 per epoch",
    "accuracy": "test NDCG@20",
    "tradeoff": "accuracy against training time",
    "cost": "seconds per epoch by phase",
}


# ------------------------------------------------------------------------------------------------ write
def write_leaderboard(results_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write leaderboard.{csv,md}, cost.{csv,md}, cost_comparison.csv, PNG plots and index.html."""
    from bench.reporting import report

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    records = load_records(results_dir)
    runs = _completed_runs(records)
    if runs.empty:
        raise BenchError(f"no completed run records in {results_dir}")
    failed = int((records["status"] == "failed").sum())
    interrupted = int((records["status"] == "interrupted").sum())
    not_ok = int((records["status"] != "ok").sum())
    skipped = f"Skipped: {failed} failed run(s), {interrupted} interrupted run(s), "
    skipped += f"{len(records) - not_ok - len(runs)} superseded rerun(s), "
    skipped += f"{len(find_corrupt(results_dir))} unreadable file(s)."
    # No path in generated files: they are committed, and a path says where they were made, not what they are.
    header = f"Generated by `python -m bench leaderboard` from {len(runs)} run records (`runs/`)"
    header += f"; do not edit by hand. {skipped}"
    tests = _Tests(runs, load_test_ranks(runs["path"]))
    acc, cost = _accuracy(runs, tests), _cost(runs)
    comp = _cost_comparison(runs)
    groups = list(dict.fromkeys(map(tuple, runs[GROUP].to_numpy())))
    acc_blocks = {k: _accuracy_blocks(acc, runs, k) for k in groups}
    cost_blocks = {k: _cost_blocks(cost, comp, runs, k) for k in groups}
    acc_doc: list[Block] = [("h1", "Leaderboard: test accuracy (full ranking), laid out like the ELCRec paper's Table 1")]
    acc_doc += [("p", header), ("p", ACCURACY_INTRO)]
    cost_doc: list[Block] = [("h1", "Cost: time and memory, compared with the ELCRec paper's Table 2")]
    cost_doc += [("p", header), ("p", COST_INTRO)]
    for k in groups:
        acc_doc += [("h2", _group_title(k)), *acc_blocks[k]]
        cost_doc += [("h2", _group_title(k)), *cost_blocks[k]]
    drop = ["column", "context", "path"]
    comp_csv = comp.drop(columns=[c for c in comp.columns if c.startswith("_")]) if not comp.empty else comp
    files: dict[str, str | bytes] = {
        # %.10g trims float noise (0.042499999999999996) while keeping far more digits than the tables show.
        "leaderboard.csv": acc.drop(columns="column").to_csv(index=False, float_format="%.10g"),
        "leaderboard.md": render_md(acc_doc),
        "cost.csv": cost.drop(columns=[c for c in drop if c in cost.columns]).to_csv(index=False, float_format="%.10g"),
        "cost_comparison.csv": comp_csv.to_csv(index=False, float_format="%.10g"),
        "cost.md": render_md(cost_doc),
    }
    plots: dict[tuple, dict[str, str]] = {}
    for key in groups:
        title = ", ".join(map(str, key))
        g_runs, g_acc, g_cost = runs[_in_group(runs, key)], acc[_in_group(acc, key)], cost[_in_group(cost, key)]
        made = {
            "convergence": _plot_convergence(g_runs, title),
            "accuracy": _plot_accuracy(g_acc, title),
            "tradeoff": _plot_tradeoff(g_runs, title),
            "cost": _plot_cost(g_cost, title),
        }
        plots[key] = {}
        for kind, png in made.items():
            name = f"plot_{kind}_{group_slug(key)}.png"
            files[name] = png
            plots[key][kind] = name
    files["index.html"] = report.index_html(
        header, ACCURACY_INTRO, COST_INTRO, groups, acc_blocks, cost_blocks, plots, files, _group_title, PLOT_KINDS
    )
    # Plots of groups that no longer exist (records removed, grouping changed) would be stale: remove them.
    for old in out_dir.glob("plot_*.png"):
        if old.name not in files:
            old.unlink()
    written = []
    for name, content in files.items():
        write_bytes_atomic(out_dir / name, content.encode("utf-8") if isinstance(content, str) else content)
        written.append(out_dir / name)
    return written
