"""The tables as documents: blocks that render to markdown here and to HTML in bench/reporting/report.py.

A document is a list of blocks: ("h1" | "h2" | "h3" | "p" | "banner" | "note", text), ("table", DataFrame),
("list", [text, ...]) and ("image", Image). A column that would say the same thing in every row of a
table is taken out of it and said once, as a note under the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.core import stats as verdicts
from bench.reporting.comparisons import TARGET_FRACTIONS, TARGET_METRIC
from bench.reporting.published import PUBLISHED_SOURCE
from bench.reporting.runs import COST_BASELINE, PROPOSED, budget_banner, columns_of, in_group

Block = tuple[str, object]


@dataclass(frozen=True)
class Image:
    name: str  # file name, for the title
    png: bytes
    alt: str


def pct(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.1f}%"


def num(x: float, fmt: str = ".4f") -> str:
    # Round first and add 0.0 so that a tiny negative difference prints as +0.0000, not -0.0000.
    return "" if pd.isna(x) else format(round(x, 6) + 0.0, fmt)


def md_table(frame: pd.DataFrame) -> str:
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
        elif kind in ("p", "note"):
            out.append(f"{content}\n")
        elif kind == "table":
            out.append(md_table(content.fillna("")) + "\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in content) + "\n")
        elif kind == "image":
            out.append(f"![{content.alt}]({content.name})\n")
    return "\n".join(out).lstrip("\n")


def table_with_notes(table: pd.DataFrame, repeated: list[str]) -> list[Block]:
    """The table, without those of the `repeated` columns that hold one value in every row (2 or more rows):
    they are said once, in a note under it; a column empty in every row is left out."""
    notes = []
    for col in [c for c in repeated if c in table.columns and len(table) >= 2]:
        values = set(table[col].fillna("").astype(str))
        if len(values) == 1:
            value = values.pop()
            notes.append(f"`{col}` {value}" if value else f"`{col}` not recorded")
            table = table.drop(columns=col)
    return [("table", table)] + ([("note", f"In every row: {'; '.join(notes)}.")] if notes else [])


# --------------------------------------------------------------------------------------------- accuracy
ACCURACY_INTRO = (
    "Cells: mean ± sample std (ddof=1) over seeds; a single seed shows the mean and (n=1). **Bold**: the best"
    " method of the row, given only in groups of converged runs (paper profile) and only when it is"
    " significantly better than every other method of the row"
    f" (paired tests, p < {verdicts.ALPHA}); <u>underlined</u>: the second, only when it is significantly"
    " better than every method below it. Ties, differences the tests cannot resolve and pipeline checks (smoke,"
    " quick: a few epochs, not converged) get no mark."
    " `ELCRec vs best baseline` = ELCRec's mean - the best of the other methods of the row [95% interval of the"
    " mean paired difference, over users, or over seeds without per-user ranks], with the relative"
    f" change only where that baseline is at least {verdicts.MIN_BASELINE}. `p (paired test)`: two-sided Wilcoxon"
    " signed-rank test over users of the per-user metric (from each run's stored per-user ranks, averaged"
    " over seeds), and a paired t-test over seeds where both have 3 or more; `test unavailable` where the"
    " records carry no per-user ranks and there are fewer than 3 seeds. A column's name says in brackets how"
    " its runs differ from the method as published: its config source where the method has several, an"
    " execution option of its own (such as `kmeans_init=fresh`), a recommendation loss other than its"
    " published one (`SASRec (ce)`), an encoder other than SASRec's (`on gru4rec`). Published numbers (each with its source)"
    " appear only for the `paper` profile and runs trained with the published loss."
)


def accuracy_cell(r: pd.Series) -> str:
    text = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["n_seeds"] >= 2 else f" (n={r['n_seeds']})")
    if r["mark"] == "best":
        return f"**{text}**"
    return f"<u>{text}</u>" if r["mark"] == "second" else text


def versus_cell(r: pd.Series) -> str:
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


def _columns_note(g: pd.DataFrame) -> str:
    pairs = g[["column", "config_source", "rec_loss", "encoder"]].drop_duplicates("column")
    if pairs[["config_source", "rec_loss", "encoder"]].nunique().max() == 1:
        return (f"Config source `{pairs['config_source'].iloc[0]}`, recommendation loss `{pairs['rec_loss'].iloc[0]}`,"
                f" encoder `{pairs['encoder'].iloc[0]}` (every column).")
    return "Config source, recommendation loss and encoder: " + "; ".join(
        f"{c}: `{s}`, `{loss}`, `{encoder}`" for c, s, loss, encoder in pairs.to_numpy()) + "."


def _wide(g: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    wide = g.pivot(index=["dataset", "metric"], columns="column", values=values)
    return wide.reindex(pd.MultiIndex.from_frame(g[["dataset", "metric"]].drop_duplicates()))


def shipped_datasets() -> set[str]:
    from bench.core.data import dataset_names

    return set(dataset_names())


def _published_blocks(g: pd.DataFrame, cols: list[str]) -> list[Block]:
    shown = [c for c in cols if g.loc[g["column"] == c, "published"].notna().any()]
    if not shown:
        return []
    g = g.assign(both=[f"{num(p)} / {num(d, '+.4f')}" if pd.notna(p) else "" for p, d in zip(g["published"], g["diff"])])
    wide = _wide(g, ["both"])
    table = wide.index.to_frame(index=False)
    for c in shown:
        table[c] = wide[("both", c)].to_numpy()
    methods = dict(zip(g["column"], g["method"]))
    sources = "; ".join(f"{c}: {PUBLISHED_SOURCE.get(methods[c], '?')}" for c in shown)
    return [("h3", "Published numbers"), ("p", "Cells: published / ours - published."), ("table", table),
            ("note", f"Sources: {sources}.")]


def accuracy_blocks(acc: pd.DataFrame, runs: pd.DataFrame, key: tuple) -> list[Block]:
    g = acc[in_group(acc, key)]
    banner = budget_banner(runs[in_group(runs, key)])
    blocks: list[Block] = [("banner", banner)] if banner else []
    g = g.assign(cell=g.apply(accuracy_cell, axis=1), vs=g.apply(versus_cell, axis=1))
    cols = columns_of(g)
    wide = _wide(g, ["cell", "vs", "test"])
    table = wide.index.to_frame(index=False)
    for c in cols:
        table[c] = wide[("cell", c)].to_numpy()
    repeated = []
    for c in [c for c in cols if g.loc[g["column"] == c, "method"].iloc[0] == PROPOSED]:
        if wide[("vs", c)].fillna("").ne("").any():
            table[f"{c} vs best baseline"] = wide[("vs", c)].to_numpy()
            table[f"{c} p (paired test)"] = wide[("test", c)].to_numpy()
            tested = g.loc[g["column"] == c, ["p_users", "p_seeds"]].notna().any(axis=None)
            if not tested:  # "test unavailable" in every row: a note, not a column (p values stay a column)
                repeated.append(f"{c} p (paired test)")
    seeds = g.groupby(["dataset", "column"], sort=False)["n_seeds"].max().unstack("column")[cols]
    blocks += [("p", _columns_note(g)), *table_with_notes(table, repeated)]
    blocks += _published_blocks(g, cols)
    added = [d for d in dict.fromkeys(g["dataset"]) if d not in shipped_datasets()]
    if added:
        blocks += [("note", f"Added with `bench data add`: {', '.join(added)}. No published numbers exist for "
                            "these datasets, so their rows have no published columns.")]
    blocks += [("p", "Seeds per method and dataset:"), ("table", seeds.fillna(0).astype(int).reset_index())]
    return blocks


# ------------------------------------------------------------------------------------------------- cost
COST_INTRO = (
    "Warm-up apart from steady state: `1st epoch s` is the first epoch's E-step + training seconds"
    " (compilation, caches, k-means initialisation land there); the per-phase `s/epoch` columns are the"
    " median over the epochs after the first (empty for a one-epoch run), mean over seeds. `training CPU"
    " s/epoch`: the run process's CPU seconds of E-step + training (all its threads), median likewise, mean over"
    " the seeds that recorded it (empty for runs made before it was): with one thread, below `training s/epoch`"
    " by the time the run waited for a core that other work held."
    " `training s` (E-step +"
    " training, all epochs, no evaluation: what the paper's Table 2 counts) and `time to best s` count"
    " everything. Peak memory is the run's peak (GPU: reserved/NVML; CPU: RSS) in MB (MiB). Context:"
    " `machine` (CPU model or GPU), torch `threads`, `in flight` = the most runs training on the machine at"
    " once during the run, itself included (counted on the host every second while it trains; `(its grid)`: a record written before the host count, which counted its own grid's runs only, a"
    " lower bound; `unknown` for records written before either, with the most runs that the records' own"
    " start and finish times show overlapping), `load` = 1-minute load average at start→end."
    " ELCRec and ICLRec are compared only where device, machine, threads and runs in flight are the same;"
    " per epoch, epoch by epoch (each epoch keeps the runs in flight it saw)."
    " Changes are ELCRec against ICLRec with a 95% interval (Welch t on log seconds: between seeds with 2+"
    " seeds per method, else between the epochs after the first); a saving or a cost is stated only when"
    " the interval excludes zero, otherwise `no difference detectable (±x%)`; no verdict without an interval."
    f" Time to a target quality: the E-step + training seconds each of two methods needs to first reach a"
    f" valid {TARGET_METRIC} of {', '.join(f'{f:.0%}' for f in TARGET_FRACTIONS)} of the weaker method's best"
    " (its lowest best over seeds, so that every run reaches it), at each profile's own budget; the change"
    " has an interval between seeds with 2+ seeds per method. Tables show ELCRec against ICLRec;"
    " `cost_time_to_target.csv` holds every pair of methods."
)


def _cost_table(g: pd.DataFrame) -> pd.DataFrame:
    def fmt(col: str, f: str) -> pd.Series:
        return g[col].map(lambda x: num(x, f))

    return pd.DataFrame({
        "dataset": g["dataset"], "method": g["column"], "config": g["config_source"], "seeds": g["n_seeds"],
        "machine": g["machine"], "threads": g["threads"], "in flight": g["in_flight"], "load": g["load"],
        "1st epoch s": fmt("training_s_first", ".2f"), "E-step s/epoch": fmt("estep_s_steady_median", ".2f"),
        "train s/epoch": fmt("train_s_steady_median", ".2f"), "eval s/epoch": fmt("eval_s_steady_median", ".2f"),
        "training s/epoch": fmt("training_s_steady_median", ".2f"), "training CPU s/epoch": fmt("training_cpu_s_steady_median", ".2f"),
        "training s": fmt("training_s", ".1f"),
        "time to best s": fmt("time_to_best_s", ".1f"), "epochs": fmt("epochs_run", "g"),
        "peak MB": fmt("peak_memory_mb", ".1f"),
    })


def _says(text) -> bool:
    return isinstance(text, str) and bool(text)


def _versus_blocks(c: pd.DataFrame) -> list[Block]:
    def change(name: str) -> pd.Series:
        return c.apply(
            lambda r: "not compared" if _says(r[f"{name}_not_compared"]) else verdicts.interval_text(r[f"_{name}"]),
            axis=1,
        )

    vs = pd.DataFrame({
        "dataset": c["dataset"], "compared": c["column_elcrec"] + " vs " + c["column_iclrec"],
        "change per epoch after the 1st": change("per_epoch"), "change in training s": change("total"),
        "change in peak memory": change("memory"),
    })
    cpu_measured = c["_per_epoch_cpu"].map(lambda iv: iv.change_pct is not None)
    if cpu_measured.any():  # only runs made since the CPU seconds were recorded have them
        vs.insert(3, "change in CPU s per epoch", change("per_epoch_cpu").where(cpu_measured, "not recorded"))
    if c["paper_train_s_change_pct"].notna().any():
        vs["paper change in training s"] = c["paper_train_s_change_pct"].map(pct)
        vs["paper memory change"] = c["paper_memory_mb_change_pct"].map(pct)
    lines = []
    for _, r in c.iterrows():
        head = f"{r['dataset']}: {r['column_elcrec']} vs {r['column_iclrec']}"
        if _says(r["per_epoch_not_compared"]):  # then nothing is compared
            lines.append(f"{head}: not compared: {r['not_compared']}.")
            continue
        cpu = (f"; its CPU seconds (waiting for a core not counted): {r['per_epoch_cpu_verdict']}"
               if r["_per_epoch_cpu"].change_pct is not None else "")
        lines.append(
            f"{head} ({r['context']}): training s/epoch after the first: {r['per_epoch_verdict']}{cpu}; total"
            f" training time: {r['total_verdict']}; peak memory: {r['memory_verdict']}."
        )
    return [("h3", "ELCRec vs ICLRec"), ("table", vs), ("list", lines)]


def _target_blocks(t: pd.DataFrame, profile: str) -> list[Block]:
    t = t[(t["method_a"] == PROPOSED) & (t["method_b"] == COST_BASELINE)]
    if t.empty:
        return []
    table = pd.DataFrame({
        "dataset": t["dataset"], "compared": t["column_a"] + " vs " + t["column_b"],
        "target": [f"{f:.0%} of the best of {w} ({v:.4f})" for f, w, v in
                   zip(t["target_fraction"], t["target_set_by"], t["target_valid_ndcg20"])],
        "seconds (mean over seeds)": [f"{a:.1f} vs {b:.1f}" for a, b in zip(t["seconds_a"], t["seconds_b"])],
        "verdict": t["verdict"],
    })
    title = f"Time to a target quality (valid {TARGET_METRIC}), at the {profile} profile's budget"
    blocks = [("h3", title), *table_with_notes(table, ["compared"])]
    spans = sorted(set(t["mixed_contexts"].dropna()))  # one text per pair, the same at every target
    if spans:
        blocks.append(("note", "These times count every epoch, and some runs' epochs ran in more than one context,"
                               f" so they mix those contexts' speeds: {'; '.join(spans)}."))
    return blocks


def cost_blocks(cost: pd.DataFrame, comp: pd.DataFrame, targets: pd.DataFrame, runs: pd.DataFrame,
                key: tuple) -> list[Block]:
    g = cost[in_group(cost, key)]
    banner = budget_banner(runs[in_group(runs, key)])
    blocks: list[Block] = [("banner", banner)] if banner else []
    software = "; ".join(sorted(set(runs.loc[in_group(runs, key), "software"].fillna("unknown"))))
    repeated = ["config", "seeds", "machine", "threads", "in flight", "load"]
    blocks += [("p", f"Software: {software}."), *table_with_notes(_cost_table(g), repeated)]
    c = comp[in_group(comp, key)] if not comp.empty else comp
    if not c.empty:
        blocks += _versus_blocks(c)
    t = targets[in_group(targets, key)] if not targets.empty else targets
    if not t.empty:
        blocks += _target_blocks(t, key[0])
    return blocks
