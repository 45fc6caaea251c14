"""Leaderboard: our runs laid out like the ELCRec paper's Table 1 (accuracy) and Table 2 (cost).

Everything is computed from the run records alone, so the files can be regenerated at any time and are
never edited by hand. Tables are grouped by (profile, protocol, device, variant) because numbers from a smoke
run, from the strict evaluation protocol, from a GPU or from a fast (non-published) variant are not comparable
with a paper-profile, reference-protocol, faithful run on a CPU.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import BenchError
from bench.published import PUBLISHED_ACCURACY, PUBLISHED_COST
from bench.records import METRICS, find_corrupt, load_records, write_bytes_atomic

METHOD_ORDER = ("sasrec", "cl4srec", "iclrec", "elcrec")
METHOD_NAMES = {"sasrec": "SASRec", "cl4srec": "CL4SRec", "iclrec": "ICLRec", "elcrec": "ELCRec"}
BASELINES = ("sasrec", "cl4srec", "iclrec")
BOTH = ("iclrec", "elcrec")  # the pair the paper's cost table compares
DATASET_ORDER = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")
GROUP = ["profile", "protocol", "device", "variant"]
MIB = 2**20  # the paper's "MB" are nvidia-smi MiB
DPI = 110
_ORDERS = {"dataset": DATASET_ORDER, "metric": METRICS, "method": METHOD_ORDER}


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


def _completed_runs(records: pd.DataFrame) -> pd.DataFrame:
    runs = records[records["status"] == "ok"].copy()
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


def _accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, config_source, dataset, metric, method): mean, std, n, paper, diff."""
    ids = [*GROUP, "config_source", "dataset", "method", "column", "seed"]
    long = runs.melt(id_vars=ids, value_vars=[f"test_{m}" for m in METRICS], var_name="metric")
    long["metric"] = long["metric"].str.removeprefix("test_")
    keys = [*GROUP, "config_source", "dataset", "metric", "method", "column"]
    # Sample std (ddof=1) is NaN for a single seed, which the tables show as "(n=1)" rather than "± 0".
    acc = long.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    acc["published"] = [
        PUBLISHED_ACCURACY.get(d, {}).get(m, {}).get(k, np.nan)
        for d, m, k in zip(acc["dataset"], acc["method"], acc["metric"])
    ]
    acc["diff"] = acc["mean"] - acc["published"]
    row = [*GROUP, "dataset", "metric"]
    acc["rank"] = acc.groupby(row)["mean"].rank(ascending=False, method="min").astype("Int64")
    best_base = acc[acc["method"].isin(BASELINES)].groupby(row)["mean"].max().rename("best_baseline")
    acc = acc.join(best_base, on=row)
    gain = (acc["mean"] - acc["best_baseline"]) / acc["best_baseline"] * 100
    acc["elcrec_vs_best_baseline_pct"] = gain.where(acc["method"] == "elcrec")
    return _ordered(acc.drop(columns="best_baseline"), [*row, "method", "config_source"])


def _cell(r: pd.Series) -> str:
    text = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["n_seeds"] >= 2 else f" (n={r['n_seeds']})")
    if r["n_in_row"] >= 2 and r["rank"] == 1:
        return f"**{text}**"
    return f"<u>{text}</u>" if r["n_in_row"] >= 2 and r["rank"] == 2 else text


def _accuracy_md(acc: pd.DataFrame, header: str) -> str:
    out = [
        f"# Leaderboard: test accuracy (full ranking), laid out like the ELCRec paper's Table 1\n\n{header}\n",
        "Cells: mean ± sample std (ddof=1) over seeds; a single seed shows the mean and (n=1). Per row the best"
        " method is **bold**, the second best <u>underlined</u>. `ELCRec vs best baseline` = (ELCRec - best of"
        " SASRec/CL4SRec/ICLRec) / best baseline. `published` = ELCRec paper Table 1, `diff` = ours - published.",
    ]
    for key, g in acc.groupby(GROUP, sort=False):
        g = g.assign(n_in_row=g.groupby(["dataset", "metric"])["mean"].transform("count"))
        g = g.assign(
            cell=g.apply(_cell, axis=1),
            vs=g["elcrec_vs_best_baseline_pct"].map(_pct),
            paper=g["published"].map(_num),
            d=g["diff"].map(lambda x: _num(x, "+.4f")),
        )
        cols = list(dict.fromkeys(_ordered(g, ["method", "config_source"])["column"]))
        wide = g.pivot(index=["dataset", "metric"], columns="column", values=["cell", "vs", "paper", "d"])
        wide = wide.reindex(pd.MultiIndex.from_frame(g[["dataset", "metric"]].drop_duplicates()))
        table = wide.index.to_frame(index=False)
        for c in cols:
            table[c] = wide[("cell", c)].to_numpy()
        for c in [c for c in cols if c.startswith("ELCRec")]:
            table[f"{c} vs best baseline"] = wide[("vs", c)].to_numpy()
        for c in cols:
            if wide[("paper", c)].fillna("").ne("").any():  # no empty paper columns for unknown datasets
                table[f"{c} published"] = wide[("paper", c)].to_numpy()
                table[f"{c} diff"] = wide[("d", c)].to_numpy()
        seeds = g.groupby(["dataset", "column"], sort=False)["n_seeds"].max().unstack("column")[cols]
        sources = ", ".join(
            f"{c}: {s}" for c, s in g[["column", "config_source"]].drop_duplicates().to_numpy()
        )
        out.append(f"\n## {_group_title(key)}\n\nConfig source: {sources}.\n")
        out += [_md_table(table.fillna("")), "\nSeeds per method and dataset:\n"]
        out.append(_md_table(seeds.fillna(0).astype(int).reset_index()))
    return "\n".join(out) + "\n"


def _cost(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, config_source, method, dataset): seconds and memory, mean over seeds."""
    # Training time as the paper's Table 2 counts it: E-step (clustering) plus training, no evaluation.
    runs = runs.assign(
        training_s=runs["estep_s"] + runs["train_s"], peak_memory_mb=runs["peak_memory_bytes"] / MIB
    )
    # A run that recorded no epoch has no per-epoch time (NaN), rather than an infinite one.
    runs["training_s_per_epoch"] = runs["training_s"] / runs["epochs_run"].where(runs["epochs_run"] > 0)
    means = [f"{p}_s_per_epoch" for p in ("estep", "train", "eval", "training")]
    means += ["training_s", "time_to_best_s", "epochs_run", "peak_memory_mb"]
    keys = [*GROUP, "config_source", "method", "column", "dataset"]
    agg = {c: (c, "mean") for c in means}
    devices = ("device_name", lambda s: ", ".join(sorted(set(s))))  # timings from mixed devices must show it
    cost = (
        runs.groupby(keys, sort=False)
        .agg(n_seeds=("seed", "count"), device_name=devices, **agg)
        .reset_index()
    )
    return _ordered(cost, [*GROUP, "dataset", "method", "config_source"])


def _cost_comparison(cost: pd.DataFrame) -> pd.DataFrame:
    """ELCRec vs ICLRec per (group, dataset), ours and the paper's Table 2."""
    on, measures = [*GROUP, "dataset"], ["training_s", "training_s_per_epoch", "peak_memory_mb"]
    pick = {m: cost.loc[cost["method"] == m, [*on, "column", "config_source", *measures]] for m in BOTH}
    comp = pick["iclrec"].merge(pick["elcrec"], on=on, suffixes=("_iclrec", "_elcrec"))
    for q in measures:
        comp[f"{q}_change_pct"] = (comp[f"{q}_elcrec"] / comp[f"{q}_iclrec"] - 1) * 100
    for m in BOTH:
        for q in ("train_s", "memory_mb"):
            comp[f"paper_{q}_{m}"] = [
                PUBLISHED_COST.get(d, {}).get(m, {}).get(q, np.nan) for d in comp["dataset"]
            ]
    for q in ("train_s", "memory_mb"):
        comp[f"paper_{q}_change_pct"] = (comp[f"paper_{q}_elcrec"] / comp[f"paper_{q}_iclrec"] - 1) * 100
    return _ordered(comp, on)


def _verdict(r: pd.Series) -> str:
    """One sentence per dataset: where ELCRec saves cost and where it does not, from the numbers."""
    parts = {
        "per-epoch training time": ("training_s_per_epoch_change_pct", "paper_train_s_change_pct"),
        "total training time": ("training_s_change_pct", "paper_train_s_change_pct"),
        "peak memory": ("peak_memory_mb_change_pct", "paper_memory_mb_change_pct"),
    }
    said = [
        f"{name} {_pct(r[ours])}" + (f" (paper: {_pct(r[paper])})" if pd.notna(r[paper]) else "")
        for name, (ours, paper) in parts.items()
    ]
    # `not x < 0` rather than `x >= 0`: an unmeasured (NaN) change must not be claimed as a saving.
    saves = [name for name, (ours, _) in parts.items() if r[ours] < 0]
    costs = [name for name, (ours, _) in parts.items() if not r[ours] < 0]
    verdict = f" {r['column_elcrec']} saves {', '.join(saves)}." if saves else ""
    verdict += f" No saving in {', '.join(costs)}." if costs else ""
    return f"{r['dataset']}: {r['column_elcrec']} vs {r['column_iclrec']}: {', '.join(said)}.{verdict}"


def _cost_md(cost: pd.DataFrame, comp: pd.DataFrame, header: str) -> str:
    out = [
        f"# Cost: time and memory, compared with the ELCRec paper's Table 2\n\n{header}\n",
        "Seconds per epoch are means over seeds of each run's phase time / epochs run. Training time = E-step"
        " (encoding the training set and k-means: ICLRec every epoch, ELCRec once) + training, summed over epochs, without"
        " evaluation: that is what the paper's Table 2 counts. Peak memory is the run's peak (GPU: reserved/NVML;"
        " CPU: RSS) in MB (MiB); the paper reports average GPU memory, so compare the changes, not the values."
        " The paper trains both methods for the same number of epochs, so its change is best compared with"
        " our per-epoch change.",
    ]
    for key, g in cost.groupby(GROUP, sort=False):
        table = pd.DataFrame(
            {
                "dataset": g["dataset"],
                "method": g["column"],
                "config": g["config_source"],
                "seeds": g["n_seeds"],
                "device": g["device_name"],
                "E-step s/epoch": g["estep_s_per_epoch"].map(lambda x: _num(x, ".2f")),
                "train s/epoch": g["train_s_per_epoch"].map(lambda x: _num(x, ".2f")),
                "eval s/epoch": g["eval_s_per_epoch"].map(lambda x: _num(x, ".2f")),
                "training s/epoch": g["training_s_per_epoch"].map(lambda x: _num(x, ".2f")),
                "training s": g["training_s"].map(lambda x: _num(x, ".1f")),
                "time to best s": g["time_to_best_s"].map(lambda x: _num(x, ".1f")),
                "epochs": g["epochs_run"].map(lambda x: _num(x, "g")),
                "peak MB": g["peak_memory_mb"].map(lambda x: _num(x, ".1f")),
            }
        )
        out += [f"\n## {_group_title(key)}", "", _md_table(table)]
        c = comp[_in_group(comp, key)]
        if c.empty:
            continue
        vs = pd.DataFrame(
            {
                "dataset": c["dataset"],
                "ICLRec training s": c["training_s_iclrec"].map(lambda x: _num(x, ".1f")),
                "ELCRec training s": c["training_s_elcrec"].map(lambda x: _num(x, ".1f")),
                "change": c["training_s_change_pct"].map(_pct),
                "change per epoch": c["training_s_per_epoch_change_pct"].map(_pct),
                "ICLRec peak MB": c["peak_memory_mb_iclrec"].map(lambda x: _num(x, ".1f")),
                "ELCRec peak MB": c["peak_memory_mb_elcrec"].map(lambda x: _num(x, ".1f")),
                "memory change": c["peak_memory_mb_change_pct"].map(_pct),
                "paper ICLRec s": c["paper_train_s_iclrec"].map(lambda x: _num(x, ".0f")),
                "paper ELCRec s": c["paper_train_s_elcrec"].map(lambda x: _num(x, ".0f")),
                "paper change": c["paper_train_s_change_pct"].map(_pct),
                "paper memory change": c["paper_memory_mb_change_pct"].map(_pct),
            }
        )
        if c["column_elcrec"].ne("ELCRec").any() or c["column_iclrec"].ne("ICLRec").any():
            # Several config sources in play: say which columns each comparison row pairs.
            vs.insert(1, "compared", c["column_elcrec"] + " vs " + c["column_iclrec"])
        out += ["\n### ELCRec vs ICLRec\n", _md_table(vs), ""] + [f"- {_verdict(r)}" for _, r in c.iterrows()]
    return "\n".join(out) + "\n"


def _png(fig: Figure) -> bytes:
    # An explicit Agg canvas instead of pyplot: no global backend switch, no figure registry to leak into.
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _plot_accuracy(acc: pd.DataFrame, title: str) -> bytes:
    d = acc[acc["metric"] == "NDCG@20"]
    datasets = list(dict.fromkeys(d["dataset"]))
    cols = list(dict.fromkeys(_ordered(d, ["method", "config_source"])["column"]))
    fig = Figure(figsize=(2 + 1.8 * len(datasets), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(cols)
    for i, col in enumerate(cols):
        sub = d[d["column"] == col].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (i - (len(cols) - 1) / 2) * width
        ax.bar(x, sub["mean"], width, yerr=sub["std"].fillna(0), capsize=3, ecolor="0.35", label=col)
        # A diamond, not a line, so that the published value cannot be mistaken for an error-bar cap.
        label = "published (ELCRec paper Table 1)" if i == 0 else None  # one legend entry for all markers
        ax.scatter(x, sub["published"], marker="D", s=18, color="black", zorder=3, label=label)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("test NDCG@20 (mean ± std over seeds)")
    ax.set_title(title)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so that the legend does not cover the bars
    ax.legend(fontsize="small", loc="upper left", ncols=3)
    fig.tight_layout()
    return _png(fig)


def _plot_cost(cost: pd.DataFrame, title: str) -> bytes:
    datasets = list(dict.fromkeys(cost["dataset"]))
    fig = Figure(figsize=(2 + 2.6 * len(datasets), 4.2))
    # One panel per dataset: epoch times differ by orders of magnitude between datasets.
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    phases = {"estep_s_per_epoch": "E-step", "train_s_per_epoch": "train", "eval_s_per_epoch": "eval"}
    for ax, dataset in zip(axes, datasets):
        g = cost[cost["dataset"] == dataset]
        bottom = np.zeros(len(g))
        for col, label in phases.items():
            seconds = g[col].fillna(0).to_numpy()
            ax.bar(g["column"], seconds, bottom=bottom, label=label)
            bottom += seconds
        ax.set_title(dataset, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=45)
    axes[0].set_ylabel("seconds per epoch (mean over seeds)")
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _group_title(key: tuple) -> str:
    return ", ".join(f"{name} `{value}`" for name, value in zip(GROUP, key))


def _in_group(frame: pd.DataFrame, key: tuple) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for name, value in zip(GROUP, key):
        mask &= frame[name] == value
    return mask


def _plot_suffixes(groups: list[tuple]) -> dict[tuple, str]:
    """File-name suffix per group: empty for a single group, else the key parts that differ between groups."""
    if len(groups) == 1:
        return {groups[0]: ""}
    differing = [i for i in range(len(GROUP)) if len({g[i] for g in groups}) > 1]

    def slug(value: str) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in str(value)).strip("-")

    return {g: "_" + "_".join(slug(g[i]) for i in differing) for g in groups}


def write_leaderboard(results_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write leaderboard.{csv,md}, cost.{csv,md}, cost_comparison.csv and PNG plots; return their paths."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    records = load_records(results_dir)
    runs = _completed_runs(records)
    if runs.empty:
        raise BenchError(f"no completed run records in {results_dir}")
    skipped = f"Skipped: {int((records['status'] != 'ok').sum())} failed run(s), "
    skipped += f"{len(records) - (records['status'] != 'ok').sum() - len(runs)} superseded rerun(s), "
    skipped += f"{len(find_corrupt(results_dir))} unreadable file(s)."
    header = (
        f"Generated by `python -m bench leaderboard --results {results_dir}` from {len(runs)} run records"
    )
    header += f"; do not edit by hand.\n{skipped}"
    acc, cost = _accuracy(runs), _cost(runs)
    comp = _cost_comparison(cost)
    files: dict[str, str | bytes] = {
        # %.10g trims float noise (0.042499999999999996) while keeping far more digits than the tables show.
        "leaderboard.csv": acc.drop(columns="column").to_csv(index=False, float_format="%.10g"),
        "leaderboard.md": _accuracy_md(acc, header),
        "cost.csv": cost.drop(columns="column").to_csv(index=False, float_format="%.10g"),
        "cost_comparison.csv": comp.to_csv(index=False, float_format="%.10g"),
        "cost.md": _cost_md(cost, comp, header),
    }
    groups = list(dict.fromkeys(map(tuple, runs[GROUP].to_numpy())))
    for key, suffix in _plot_suffixes(groups).items():
        title = _group_title(key).replace("`", "")
        files[f"plot_accuracy{suffix}.png"] = _plot_accuracy(acc[_in_group(acc, key)], title)
        files[f"plot_cost{suffix}.png"] = _plot_cost(cost[_in_group(cost, key)], title)
    # Plots of groups that no longer exist (records removed, grouping changed) would be stale: remove them.
    for old in [*out_dir.glob("plot_accuracy*.png"), *out_dir.glob("plot_cost*.png")]:
        if old.name not in files:
            old.unlink()
    written = []
    for name, content in files.items():
        write_bytes_atomic(out_dir / name, content.encode("utf-8") if isinstance(content, str) else content)
        written.append(out_dir / name)
    return written
